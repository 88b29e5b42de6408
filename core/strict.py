"""A pydantic base model that rejects unknown keys with a did-you-mean suggestion.

Every spec section and every plugin ``Config`` derives from :class:`StrictModel`, so a typo such as
``stpes:`` is reported at its path with the closest valid key instead of being silently ignored.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


def unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(known))}"
    return f"unknown key {key!r}{hint}"


class StrictModel(BaseModel):
    """Forbid unknown keys; report each with the nearest valid name."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())

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
