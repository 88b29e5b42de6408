"""A user's own task from CSV or labelled FASTA files: per-protein or per-residue, classes or values.

This is how sets such as solubility (per-protein classes) or fluorescence (per-protein values, scored
by Spearman) that Ankh and FLIP use come in, without writing a plugin. Files:

* **CSV** (``.csv``, ``.tsv``, optionally ``.gz``): one protein per row, columns named by
  ``sequence_column`` and ``label_column`` (and ``id_column`` if given). Per-residue labels are a
  string with one character per residue (classification) or whitespace-separated numbers (regression).
  With ``split_column`` one file holds every split.
* **FASTA** (``.fasta``, ``.fa``, ``.faa``, optionally ``.gz``): per protein, the label is
  ``label=VALUE`` in the header, else the header's last word (``>P12345 Membrane``). Per residue,
  each record has exactly two lines: the sequence, then its labels (one character per residue).

A residue without a label is written ``ignore_label`` (``X`` by default) or, for values, ``nan``.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from plmforge.core.data.sources import validation_mask
from plmforge.core.errors import DataError
from plmforge.core.heads import IGNORE
from plmforge.core.strict import checked_path, file_problem
from plmforge.core.task import Task, TaskConfig, TaskData, TaskSplit

SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
_RESIDUES = re.compile(r"^[A-Za-z]+$")
#: A task file, checked to exist when a spec is validated for this machine (validate, train).
TaskFile = Annotated[str, checked_path(file_problem)]


class CustomTaskConfig(TaskConfig):
    level: Literal["protein", "residue"] = Field("protein", description="One label per protein or per residue.")
    target: Literal["classification", "regression"] = Field(
        "classification", description="Classes (accuracy, macro-F1; MCC and AUROC for two classes) or values "
                                      "(Spearman, Pearson, MSE).")
    train: TaskFile | None = Field(None, description="Training file (CSV/TSV or FASTA, plain or .gz).")
    validation: TaskFile | None = Field(
        None, description="Validation file; when omitted, validation_fraction of train is held out by sequence hash.")
    test: TaskFile | None = Field(None, description="Test file.")
    data: TaskFile | None = Field(None, description="One CSV/TSV holding every split, told apart by split_column "
                                               "(instead of train/validation/test).")
    split_column: str = Field("split", description="Column naming the split (train, validation/valid/val, test).")
    sequence_column: str = Field("sequence", description="CSV column with the protein sequence.")
    label_column: str = Field("label", description="CSV column with the label.")
    id_column: str | None = Field(None, description="CSV column with a protein id (default: row number).")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out share of train when no "
                                                                     "validation file is given.")
    classes: list[str] | None = Field(
        None, description="Class names in order (default: sorted labels seen in train). Labels outside it "
                          "are errors.")
    ignore_label: str = Field("X", description="Per-residue classification: this character marks a residue "
                                               "without a label.")

    @model_validator(mode="after")
    def _files(self) -> CustomTaskConfig:
        if self.data is None and (self.train is None or self.test is None):
            raise ValueError("give 'train' and 'test' files (and optionally 'validation'), or one 'data' file "
                             "with a split column")
        if self.data is not None and any(f is not None for f in (self.train, self.validation, self.test)):
            raise ValueError("give either 'data' or 'train'/'validation'/'test', not both")
        return self


Row = tuple[str, str, str]  # id, sequence, raw label


class CustomTask(Task):
    """Any per-protein or per-residue classification or regression task from CSV or labelled FASTA."""

    Config = CustomTaskConfig

    def __init__(self, config: CustomTaskConfig):
        super().__init__(config)
        self.level = config.level  # type: ignore[misc]  # per instance: the user chooses
        self.target = config.target  # type: ignore[misc]

    def load(self) -> TaskData:
        config = self.config
        rows = self._rows()
        if "validation" not in rows:
            train = rows["train"]
            held = validation_mask([seq for _, seq, _ in train], config.validation_fraction)
            rows["validation"] = [r for r, h in zip(train, held) if h]
            rows["train"] = [r for r, h in zip(train, held) if not h]
        classes = config.classes
        if config.target == "classification" and classes is None:
            seen: set[str] = set()
            for *_, raw in rows["train"]:
                seen |= set(raw.replace(config.ignore_label, "")) if config.level == "residue" else {raw}
            classes = sorted(seen)
        splits = {name: TaskSplit([r[0] for r in part], [r[1] for r in part],
                                  [self._labels(r, classes, name) for r in part]) for name, part in rows.items()}
        return TaskData(splits, classes=classes if config.target == "classification" else None,
                        source=config.data or config.train or "")

    # -- reading ---------------------------------------------------------------------------------
    def _rows(self) -> dict[str, list[Row]]:
        config = self.config
        if config.data is not None:
            out: dict[str, list[Row]] = {}
            for row, split in self._read(config.data, with_split=True):
                out.setdefault(split, []).append(row)
            missing = [s for s in ("train", "test") if s not in out]
            if missing:
                raise DataError(f"{config.data}: no rows for the {' and '.join(missing)} split in column "
                                f"{config.split_column!r}")
            return out
        out = {"train": [r for r, _ in self._read(config.train)], "test": [r for r, _ in self._read(config.test)]}
        if config.validation is not None:
            out["validation"] = [r for r, _ in self._read(config.validation)]
        return out

    def _read(self, name: str, with_split: bool = False) -> list[tuple[Row, str]]:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"{name}: task file not found")
        suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8", newline="") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{name}: cannot read: {exc}") from None
        if suffixes and suffixes[-1] in (".fasta", ".fa", ".faa", ".fas"):
            if with_split:
                raise DataError(f"{name}: a FASTA file holds one split; give train/validation/test files")
            return [(row, "") for row in self._fasta_rows(name, text)]
        return self._csv_rows(name, text, "\t" if suffixes and suffixes[-1] == ".tsv" else ",", with_split)

    def _csv_rows(self, name: str, text: str, delimiter: str, with_split: bool) -> list[tuple[Row, str]]:
        config = self.config
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        needed = [config.sequence_column, config.label_column] + ([config.split_column] if with_split else [])
        needed += [config.id_column] if config.id_column else []
        absent = [c for c in needed if c not in (reader.fieldnames or [])]
        if absent:
            raise DataError(f"{name}: no column {', '.join(map(repr, absent))} (columns: {reader.fieldnames})")
        out = []
        for line, record in enumerate(reader, start=2):
            sequence = (record[config.sequence_column] or "").strip().upper()
            self._check_sequence(name, line, sequence)
            split = ""
            if with_split:
                raw_split = (record[config.split_column] or "").strip().lower()
                if raw_split not in SPLIT_NAMES:
                    raise DataError(f"{name}:{line}: split {raw_split!r} is not one of train, validation, test")
                split = SPLIT_NAMES[raw_split]
            ident = record[config.id_column] if config.id_column else f"row{line}"
            out.append(((ident, sequence, (record[config.label_column] or "").strip()), split))
        return out

    def _fasta_rows(self, name: str, text: str) -> list[Row]:
        records: list[tuple[int, str, list[str]]] = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                records.append((line_number, line[1:].strip(), []))
            elif not records:
                raise DataError(f"{name}:{line_number}: expected a '>' header line first")
            else:
                records[-1][2].append(line)
        out = []
        for line_number, header, body in records:
            ident = header.split()[0] if header.split() else f"record{line_number}"
            if self.config.level == "residue":
                if len(body) != 2:
                    raise DataError(f"{name}:{line_number}: a per-residue record has two lines (sequence, then "
                                    f"labels), found {len(body)}")
                sequence, label = body[0].upper(), body[1]
            else:
                sequence = "".join(body).upper()
                match = re.search(r"label=(\S+)", header)
                words = header.split()
                if match is None and len(words) < 2:
                    raise DataError(f"{name}:{line_number}: no label in header {header!r} (write 'label=VALUE' "
                                    f"or put the label last)")
                label = match.group(1) if match else words[-1]
            self._check_sequence(name, line_number, sequence)
            out.append((ident, sequence, label))
        return out

    @staticmethod
    def _check_sequence(name: str, line: int, sequence: str) -> None:
        if not sequence:
            raise DataError(f"{name}:{line}: empty sequence")
        if not _RESIDUES.match(sequence):
            bad = sorted(set(re.sub(r"[A-Za-z]", "", sequence)))
            raise DataError(f"{name}:{line}: sequence has characters that are not residue letters: {bad}")

    # -- labels ----------------------------------------------------------------------------------
    def _labels(self, row: Row, classes: list[str] | None, split: str) -> np.ndarray:
        config = self.config
        ident, sequence, raw = row
        source = config.data or getattr(config, split) or config.train  # held-out validation comes from train
        where = f"{source} ({ident})"
        if config.level == "protein":
            if config.target == "regression":
                return np.array(_number(raw, where), dtype=np.float32)
            assert classes is not None
            if raw not in classes:
                raise DataError(f"{where}: label {raw!r} is not a known class ({classes})")
            return np.array(classes.index(raw), dtype=np.int64)
        if config.target == "regression":
            values = raw.split()
            if len(values) != len(sequence):
                raise DataError(f"{where}: {len(values)} values for {len(sequence)} residues")
            return np.array([np.nan if v.lower() in ("nan", config.ignore_label.lower()) else _number(v, where)
                             for v in values], dtype=np.float32)
        if len(raw) != len(sequence):
            raise DataError(f"{where}: {len(raw)} labels for {len(sequence)} residues")
        assert classes is not None
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(raw) - set(index) - {config.ignore_label})
        if unknown:
            raise DataError(f"{where}: labels {unknown} are not known classes ({classes})")
        return np.array([index.get(c, IGNORE) for c in raw], dtype=np.int64)


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a number") from None
