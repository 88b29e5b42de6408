"""Strict validation shared by the spec and every plugin ``Config``.

* :class:`StrictModel` rejects unknown keys with a did-you-mean suggestion (a typo such as ``stpes:``
  is reported at its path instead of being silently ignored), every float must be finite (``.inf``,
  ``.nan`` and JSON ``Infinity`` would only show up later as a NaN loss) and every string non-empty.
* :func:`checked_path` marks a string option as something the run reads from this machine (a file,
  a directory, a device). Its check runs only when the spec is validated *for this machine*
  (``plmforge validate`` and ``plmforge train``, see :data:`CHECK_MACHINE`), so a spec stays a portable
  description everywhere else while validate still refuses what train would refuse.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

#: Validation-context key: when true, :func:`checked_path` checks run against this machine.
CHECK_MACHINE = "plmforge.check_machine"


def unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(known))}"
    return f"unknown key {key!r}{hint}"


class StrictModel(BaseModel):
    """Forbid unknown keys (reported with the nearest valid name), non-finite floats and empty strings."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=(),
                              allow_inf_nan=False, str_min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            known |= {f.alias for f in cls.model_fields.values() if f.alias}
            for key in data:
                if isinstance(key, str) and key not in known:
                    raise PydanticCustomError("unknown_key", "{message}",
                                              {"message": unknown_key_message(key, sorted(known)), "key": key})
        return data


def checks_machine(info: ValidationInfo) -> bool:
    """Whether this validation should check files and devices on this machine (see :data:`CHECK_MACHINE`)."""
    return bool(isinstance(info.context, dict) and info.context.get(CHECK_MACHINE))


def checked_path(problem: Callable[[str], str | None]) -> AfterValidator:
    """Annotate a ``str`` option with ``problem(value)`` -> a message, or None when the value is usable here.

    Use as ``Annotated[str, checked_path(file_problem)]``; the check runs only for this machine.
    """
    def check(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and checks_machine(info):
            found = problem(value)
            if found:
                raise ValueError(found)
        return value

    return AfterValidator(check)


def file_problem(text: str) -> str | None:
    """Why ``text`` (``~`` expanded, relative to the working directory) is not a readable regular file, or None.

    A named pipe or device is refused too: reading one can block forever.
    """
    path = Path(text).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"file {text!r} not found (looked at {path.absolute()})"
    except (OSError, ValueError) as exc:
        return f"cannot read {text!r}: {getattr(exc, 'strerror', None) or exc}"
    if stat.S_ISDIR(mode):
        return f"{text!r} is a directory, not a file"
    if not stat.S_ISREG(mode):
        return f"{text!r} is not a regular file (a named pipe, socket or device); give a file"
    if not os.access(path, os.R_OK):
        return f"file {text!r} is not readable (permission denied)"
    return None
