"""Turning the bytes of a spec file into plain data, refusing what would otherwise surface as a traceback.

A spec is UTF-8 text (a UTF-8 byte-order mark is allowed), YAML or JSON, read with ``yaml.safe_load``
semantics (nothing is ever unpickled or constructed). Refused with one message naming the file and,
where there is one, the line: other encodings and binary or compressed files, syntax errors, a key
given twice in one mapping (YAML 1.2 and RFC 8259 advise against it; PyYAML and ``json`` would silently
keep the last one) and nesting deeper than :data:`MAX_DEPTH` (which would exhaust the parser's stack).
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
from typing import Any

import yaml

from plmforge.core.errors import SpecError

#: Deepest nesting of mappings and lists a spec may have (real specs need about 5).
MAX_DEPTH = 100

_BINARY_MAGIC = {b"\x1f\x8b": "gzip-compressed", b"\xfd7zXZ\x00": "xz-compressed", b"BZh": "bzip2-compressed",
                 b"\x28\xb5\x2f\xfd": "zstd-compressed", b"PK\x03\x04": "a zip archive"}
_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


def decode_spec_bytes(data: bytes, shown: str) -> str:
    """The text of a spec file, or a :class:`SpecError` saying why it is not UTF-8 text."""
    for magic, kind in _BINARY_MAGIC.items():
        if data.startswith(magic):
            raise SpecError(f"{shown}: not a text file ({kind}); a spec is a UTF-8 YAML or JSON text file")
    for bom, encoding in _BOMS.items():
        if data.startswith(bom):
            raise SpecError(f"{shown}: the file is {encoding} text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"{shown}: line {line}: not a UTF-8 text file (byte {data[exc.start]:#04x} at offset "
                        f"{exc.start}); save the spec as UTF-8") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise SpecError(f"{shown}: line {line}: a NUL byte; a spec is a UTF-8 text file, not a binary one")
    return text


def parse_spec_text(text: str, shown: str, is_json: bool) -> Any:
    """Plain data (dicts, lists, scalars) of YAML or JSON spec text; see the module docstring for what is refused."""
    kind = "JSON" if is_json else "YAML"
    try:
        data = _load_json(text) if is_json else yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as dup:
        where = f"line {dup.lines[1]}: " if dup.lines else ""
        first = f" (first given on line {dup.lines[0]})" if dup.lines else ""
        raise SpecError(f"{shown}: {where}duplicate key {dup.key!r}{first}; each key may appear once in a "
                        f"mapping") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = " ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None))
                           if part) or str(exc)
        raise SpecError(f"{shown}: {where}not valid YAML: {problem}") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{shown}: line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise SpecError(f"{shown}: not valid {kind}: nested too deeply (a spec may nest at most {MAX_DEPTH} "
                        f"levels)") from None
    _check_depth(data, shown)
    return data


def _check_depth(data: Any, shown: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` (iteratively: the check itself must not recurse)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_DEPTH:
                    raise SpecError(f"{shown}: nested too deeply (a spec may nest at most {MAX_DEPTH} levels)")
                stack.append((child, depth + 1))


class _DuplicateKey(Exception):
    def __init__(self, key: Any, lines: tuple[int, int] | None):
        super().__init__(key)
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (``<<`` merges may still override)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            try:
                seen = first_line.get(key)
            except TypeError:  # unhashable: the base class reports it with its line
                continue
            line = key_node.start_mark.line + 1
            if seen is not None:
                raise _DuplicateKey(key, (seen, line))
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_json(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys and names both of their lines."""
    decoder = json.JSONDecoder()

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
        s, start = s_and_end
        pairs, end = json.decoder.JSONObject(s_and_end, strict, scan_once, None, list, memo)
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            duplicate = next(key for i, key in enumerate(keys) if key in keys[:i])
            lines = [s.count("\n", 0, at) + 1 for at in _json_key_positions(s, start, end, duplicate)]
            raise _DuplicateKey(duplicate, (lines[0], lines[1]) if len(lines) > 1 else None)
        return dict(pairs), end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text)


def _json_key_positions(s: str, start: int, end: int, wanted: str) -> list[int]:
    """Offsets of the key ``wanted`` among the direct keys of the JSON object spanning ``s[start - 1:end]``."""
    positions, depth, i = [], 1, start
    while i < end:
        ch = s[i]
        if ch == '"':
            value, after = json.decoder.scanstring(s, i + 1)
            rest = after
            while rest < end and s[rest] in " \t\r\n":
                rest += 1
            if depth == 1 and rest < end and s[rest] == ":" and value == wanted:
                positions.append(i)
            i = after
            continue
        depth += ch in "{["
        depth -= ch in "}]"
        i += 1
    return positions
