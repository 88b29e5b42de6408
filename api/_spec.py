"""``plmforge.Spec``: a spec file or mapping, with ``--set`` style overrides, validated as the CLI validates it."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plmforge.core import spec as core_spec
from plmforge.core.errors import SpecError

#: What names overrides: ``"training.steps=200"`` strings (as ``--set`` takes), or a mapping key -> value.
Overrides = str | Sequence[str] | Mapping[str, Any] | None


def override_texts(overrides: Overrides) -> list[str]:
    """``--set`` texts of ``overrides``; a mapping's values are written as JSON, which YAML reads back unchanged."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    texts = list(overrides)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise SpecError(f"overrides: {bad[0]!r} is not a 'key=value' text (or give a mapping of key to value)")
    return texts


class Spec:
    """A validated spec: from a YAML/JSON file, a mapping, a validated spec or another :class:`Spec`.

    ``overrides`` are applied before validation, exactly as ``--set`` applies them: texts such as
    ``"training.steps=200"`` or a mapping ``{"training.steps": 200, "objectives[0].weight": 2}``.
    An invalid spec raises the same :class:`~plmforge.core.errors.SpecError` as ``plmforge validate``.
    Sections read as attributes (``spec.training.steps``, ``spec.name``); :meth:`dump` and
    :meth:`to_yaml` give the resolved spec, every default filled, as a run saves it.
    """

    def __init__(self, source: str | Path | Mapping[str, Any] | Spec | core_spec.Spec, overrides: Overrides = None,
                 *, check_machine: bool = False):
        texts = override_texts(overrides)
        if isinstance(source, Spec):
            source, texts = source._source, [*source._overrides, *texts]
        elif isinstance(source, core_spec.Spec):
            source = source.to_dict()
        elif isinstance(source, Mapping):
            source = copy.deepcopy(dict(source))
        elif isinstance(source, str | Path):
            source = Path(source)
        else:
            raise SpecError(f"a spec is a file path, a mapping or a Spec, not {type(source).__name__}")
        self._source: Path | dict[str, Any] = source
        self._overrides = texts
        self._check_machine = check_machine
        self._spec = self._validated(check_machine)

    def _validated(self, check_machine: bool) -> core_spec.Spec:
        if isinstance(self._source, Path):
            return core_spec.load_spec(self._source, self._overrides, check_machine=check_machine)
        raw = copy.deepcopy(self._source)
        overridden = core_spec.apply_overrides(raw, self._overrides)
        return core_spec.validate_spec(raw, source=self.where, overridden=overridden, check_machine=check_machine)

    @property
    def where(self) -> str:
        """How messages name this spec: its file, or ``<spec>`` for a mapping."""
        return str(self._source) if isinstance(self._source, Path) else "<spec>"

    # -- deriving and checking ----------------------------------------------------------------------------
    def with_overrides(self, overrides: Overrides) -> Spec:
        """A new Spec: this one's source and overrides, then ``overrides``."""
        return Spec(self, overrides, check_machine=self._check_machine)

    def validate(self) -> Spec:
        """Everything ``plmforge validate`` checks: the spec, then what the run needs from this machine (files,
        devices, a writable output directory, ``model.init_from``); prints its warnings. Returns self."""
        from plmforge.core.progress import warn
        from plmforge.core.run import check_inputs

        self._spec = self._validated(check_machine=True)
        check_inputs(self._spec, self.where)
        for message in self.warnings:
            warn(message)
        return self

    @property
    def warnings(self) -> list[str]:
        """What is valid but likely not meant (e.g. a warmup longer than the run); train prints these too."""
        return core_spec.spec_warnings(self._spec)

    # -- reading --------------------------------------------------------------------------------------------
    @property
    def resolved(self) -> core_spec.Spec:
        """The validated spec object the core functions take (:class:`plmforge.core.spec.Spec`)."""
        return self._spec

    @property
    def overrides(self) -> list[str]:
        return list(self._overrides)

    @property
    def path(self) -> Path | None:
        """The spec file this Spec was read from (None for a mapping)."""
        return self._source if isinstance(self._source, Path) else None

    def dump(self) -> dict[str, Any]:
        """The resolved spec as plain data (every default filled, plugin options included)."""
        return self._spec.to_dict()

    def to_yaml(self) -> str:
        return self._spec.to_yaml()

    def save(self, path: str | Path) -> Path:
        """Write the resolved spec as YAML (what ``plmforge validate --print`` prints); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._spec, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self.dump() == other.dump()

    __hash__ = None  # mutable inputs; equal specs compare equal

    def __repr__(self) -> str:
        spec = self._spec
        objectives = ", ".join(spec.objective_labels())
        return (f"Spec({spec.name!r}: {spec.backend.name}, objectives {objectives}, {spec.training.steps} steps, "
                f"output {spec.resolved_output_dir})")
