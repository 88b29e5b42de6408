"""Property: whatever is done to a ready spec, `plmforge validate` answers cleanly.

Each example takes one of the ready specs (specs/*.yaml, specs/experiments/**) and breaks it the way
a fuzzer did: a key deleted, a value replaced by an odd one (nan, inf, -1, a huge int, '', a mapping,
a list, a control character), an unknown key added, a line repeated (duplicate keys), a byte that is
not UTF-8, a ``--set`` override, the spec written as JSON. `plmforge validate` then runs in-process
and must either accept the spec (exit 0) or refuse it with exit 1 and one message naming a key or a
line — never a traceback, an uncaught exception or a hang. Deterministic (derandomized) and bounded
(a fixed number of examples).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from plmforge.core.cli import main

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted([*(REPO / "specs").glob("*.yaml"), *(REPO / "specs" / "experiments").rglob("*.yaml")])

ODD_VALUES = [float("nan"), float("inf"), float("-inf"), -1, 0, 2**70, 1e30, "", "\x00", "A", "<pad>",
              "builtin:nope", "~/no-such-file.fasta", {}, {"a": 1}, [], [[1, [2]]], True, None, "é"]
#: A message names a key path (``training.optimizer.lr:``), a line or a ``--set`` option.
NAMES_A_PLACE = re.compile(r"line \d+|--set |(^|\s)[A-Za-z_][\w]*(\[\d+\])?(\.[\w]+(\[\d+\])?)*: ")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a parsed spec (mappings by key, lists by index)."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out += _paths(child, (*prefix, key))
    return out


def _parent(raw: Any, path: tuple) -> Any:
    for part in path[:-1]:
        raw = raw[part]
    return raw


def _set_key(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


@st.composite
def broken_spec(draw) -> tuple[bytes, list[str], str]:
    """A ready spec broken one or two ways: (file bytes, extra command-line arguments, file suffix)."""
    text = draw(st.sampled_from(SPECS)).read_text()
    raw = yaml.safe_load(text)
    args: list[str] = []
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(raw)
        kind = draw(st.sampled_from(["delete", "replace", "unknown_key", "set", "duplicate_line", "bad_byte",
                                     "as_json"]))
        if kind in ("delete", "replace", "set") and paths:
            path = draw(st.sampled_from(paths))
            parent = _parent(raw, path)
            if kind == "delete":
                del parent[path[-1]]
            elif kind == "replace":
                parent[path[-1]] = draw(st.sampled_from(ODD_VALUES))
            else:
                value = draw(st.sampled_from(["nan", ".inf", "-1", "''", "{a: 1}", "[1, [2]]", "2e30", "x"]))
                args += ["--set", f"{_set_key(path)}={value}"]
        elif kind == "unknown_key":
            mappings = [()] + [p for p in paths if isinstance(_parent(raw, (*p, None)), dict)]
            target = _parent(raw, (*draw(st.sampled_from(mappings)), None))
            target[draw(st.sampled_from(["stpes", "nmae", "extra", "lr_rate", 2]))] = 1
        text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
        if kind == "as_json":  # JSON writes NaN and Infinity too
            return json.dumps(raw, indent=1).encode(), args, ".json"
        if kind in ("duplicate_line", "bad_byte"):
            lines = text.splitlines(keepends=True)
            at = draw(st.integers(0, max(len(lines) - 1, 0)))
            if kind == "duplicate_line":
                lines.insert(at, lines[at])
                text = "".join(lines)
            else:
                data = text.encode()
                return data[:at] + b"\xe9" + data[at:], args, ".yaml"
    return text.encode(), args, ".yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.timeout(300)
@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=broken_spec())
def test_validate_answers_every_broken_spec_cleanly(workdir, case):
    data, args, suffix = case
    spec = workdir / f"spec{suffix}"
    spec.write_bytes(data)
    with contextlib.chdir(workdir):
        result = CliRunner().invoke(main, ["validate", str(spec), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__} for {data[:2000]!r} {args}") \
            from result.exception
    assert "Traceback" not in result.output
    event(f"exit {result.exit_code}")
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        assert result.output.startswith("error: "), result.output
        assert NAMES_A_PLACE.search(result.output), result.output
