"""`plmforge prepare`: every input kind gives the same corpus, the run's split, worker-independent output,
clear errors for bad input, atomic writing, and a run that trains from the prepared directory."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from helpers import tiny_spec_dict

import plmforge.core.data.prepare as prepare_module
from plmforge.core.cli import main
from plmforge.core.data.corpus import open_corpus
from plmforge.core.data.fasta import read_fasta
from plmforge.core.data.prepare import prepare_corpus
from plmforge.core.data.readers import Columns
from plmforge.core.data.sources import load_builtin, load_splits
from plmforge.core.errors import DataError


@pytest.fixture(scope="module")
def real():
    """300 real proteins (accession, sequence, location) from the built-in corpus."""
    train = load_builtin("scl2205")["train"]
    return [(train.names[i], train.sequence(i), train.labels[i]) for i in range(0, 3000, 10)]


# -- writing the same proteins in every input format ------------------------------------------------------
def write_fasta(path: Path, records, opener=open, width=60) -> Path:
    lines = []
    for name, seq, _ in records:
        lines.append(f">{name} real protein\n")
        lines += [seq[k : k + width] + "\n" for k in range(0, len(seq), width)]
    with opener(path, "wb") as handle:
        handle.write("".join(lines).encode())
    return path


def table(records) -> pa.Table:
    return pa.table({"accession": [r[0] for r in records], "seq": [r[1] for r in records],
                     "location": [r[2] for r in records], "cluster": [f"UniRef50_{r[0]}" for r in records]})


def write_parquet(path: Path, records) -> Path:
    pq.write_table(table(records), path, row_group_size=64)
    return path


def write_csv(path: Path, records, sep=",", opener=open) -> Path:
    rows = [sep.join(("accession", "seq", "location", "cluster"))]
    rows += [sep.join((n, s, loc, f"UniRef50_{n}")) for n, s, loc in records]
    with opener(path, "wb") as handle:
        handle.write(("\n".join(rows) + "\n").encode())
    return path


def write_dataset_dir(path: Path, records, shards=2) -> Path:
    """The layout `datasets.Dataset.save_to_disk` writes: Arrow *stream* shards, state.json, dataset_info.json."""
    path.mkdir()
    data = table(records)
    names = [f"data-{k:05d}-of-{shards:05d}.arrow" for k in range(shards)]
    per = -(-data.num_rows // shards)
    for k, name in enumerate(names):
        part = data.slice(k * per, per)
        with pa.OSFile(str(path / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as writer:
            for batch in part.to_batches(max_chunksize=40):  # datasets writes batches of writer_batch_size rows
                writer.write_batch(batch)
    (path / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names],
                                                 "_fingerprint": "0", "_format_type": None, "_split": "train"}))
    (path / "dataset_info.json").write_text(json.dumps(
        {"features": {c: {"dtype": "string", "_type": "Value"} for c in data.column_names}}))
    return path


INPUTS = {
    "fasta": lambda d, r: write_fasta(d / "p.fasta", r),
    "fasta.gz": lambda d, r: write_fasta(d / "p.fasta.gz", r, gzip.open),
    "fasta.xz": lambda d, r: write_fasta(d / "p.fa.xz", r, lzma.open),
    "fasta.bz2": lambda d, r: write_fasta(d / "p.faa.bz2", r, bz2.open),
    "parquet": lambda d, r: write_parquet(d / "p.parquet", r),
    "csv": lambda d, r: write_csv(d / "p.csv", r),
    "csv.gz": lambda d, r: write_csv(d / "p.csv.gz", r, opener=gzip.open),
    "tsv.xz": lambda d, r: write_csv(d / "p.tsv.xz", r, sep="\t", opener=lzma.open),
    "hf-datasets": lambda d, r: write_dataset_dir(d / "saved", r),
}
TABULAR = Columns(sequence="seq", id="accession", label="location", cluster="cluster")


def columns_for(kind: str) -> Columns:
    return Columns() if kind.startswith("fasta") else TABULAR


def corpus_contents(path: Path) -> dict:
    corpus = open_corpus(path, verify_checksums=True)
    return {split: ([p.name(i) for i in range(len(p))], [p.sequence(i) for i in range(len(p))],
                    None if p.labels is None else list(p.labels)) for split, p in corpus.splits.items()}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_input_kind_gives_the_same_proteins(tmp_path, real, kind):
    source = INPUTS[kind](tmp_path, real)
    done = prepare_corpus([str(source)], tmp_path / "corpus", columns=columns_for(kind), validation_fraction=0.0,
                          chunk_bytes=8 << 10)  # many chunks
    names, sequences, labels = corpus_contents(done.path)["train"]
    assert sequences == [s for _, s, _ in real]
    assert names == [n for n, _, _ in real]
    manifest = done.manifest
    assert manifest["report"] == {"records_read": 300, "records_kept": 300, "skipped_empty": 0, "skipped_invalid": 0}
    entry = manifest["sources"][0]
    assert entry["kind"] == kind.split(".")[0] and entry["role"] == "train" and entry["size"] > 0
    if kind != "hf-datasets":  # streamed inputs are hashed as they are read, Parquet by one more read
        assert entry["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    if kind.startswith("fasta"):
        assert labels is None
    else:
        assert labels == [loc for _, _, loc in real]
        meta = pa.ipc.open_file(str(done.path / "train" / "meta.arrow")).read_all()
        assert meta.column("cluster").to_pylist() == [f"UniRef50_{n}" for n, _, _ in real]


def test_split_by_hash_equals_load_splits(tmp_path, real):
    fasta = write_fasta(tmp_path / "p.fasta", real)
    done = prepare_corpus([str(fasta)], tmp_path / "corpus", validation_fraction=0.2, chunk_bytes=8 << 10)
    loaded = load_splits(SimpleNamespace(source=str(fasta), validation_source=None, validation_fraction=0.2,
                                         on_invalid="error"))
    prepared = corpus_contents(done.path)
    for split in ("train", "validation"):
        expected = loaded.splits[split]
        assert prepared[split][0] == list(expected.names)
        assert prepared[split][1] == [expected.sequence(i) for i in range(len(expected))]
    assert 30 < len(prepared["validation"][0]) < 90  # about 20 % of 300
    assert done.manifest["split"] == {"kind": "sequence_hash", "fraction": 0.2}


def test_one_and_two_workers_write_identical_corpora(tmp_path, real):
    fasta = write_fasta(tmp_path / "p.fasta.gz", real, gzip.open)
    parquet = write_parquet(tmp_path / "p.parquet", real[::-1])
    runner = CliRunner()
    manifests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        result = runner.invoke(main, ["prepare", str(fasta), str(parquet), "-o", str(out), "--workers", str(workers),
                                      "--chunk-mb", "0.01", "--sequence-column", "seq", "--id-column", "accession",
                                      "--validation-fraction", "0.1"])
        assert result.exit_code == 0, result.output
        assert f"wrote {out}" in result.output and "train 5" in result.output
        manifests.append(json.loads((out / "manifest.json").read_text()))
    files = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").rglob("*") if p.is_file())
    assert len(files) == 9
    for rel in files:
        if rel.name != "manifest.json":
            assert (tmp_path / "w1" / rel).read_bytes() == (tmp_path / "w2" / rel).read_bytes(), rel
    one, two = ({k: v for k, v in m.items() if k != "created"} for m in manifests)
    assert one == two
    assert one["splits"]["train"]["proteins"] + one["splits"]["validation"]["proteins"] == 600


def test_glob_is_read_sorted_and_validation_source_gives_the_split(tmp_path, real):
    write_fasta(tmp_path / "b.fasta", real[100:200])
    write_fasta(tmp_path / "a.fasta.gz", real[:100], gzip.open)
    held = write_csv(tmp_path / "held.csv", real[200:])
    done = prepare_corpus([str(tmp_path / "*.fasta*")], tmp_path / "corpus", validation_sources=[str(held)],
                          columns=Columns(sequence="seq", id="accession"), verify_sources=True)
    contents = corpus_contents(done.path)
    assert contents["train"][1] == [s for _, s, _ in real[:200]]
    assert contents["validation"][0] == [n for n, _, _ in real[200:]]
    assert done.manifest["split"] == {"kind": "given"}
    assert [Path(s["path"]).name for s in done.manifest["sources"]] == ["a.fasta.gz", "b.fasta", "held.csv"]
    assert [s["role"] for s in done.manifest["sources"]] == ["train", "train", "validation"]


def test_skip_mode_counts_like_the_fasta_reader(tmp_path, real):
    text = write_fasta(tmp_path / "p.fasta", real[:20]).read_text()
    text += ">bad1\nMKV1L\n>empty\n\n>bad2 x\nMK*K\n>stop\nMKVL*\n"
    (tmp_path / "p.fasta").write_text(text)
    expected = read_fasta(tmp_path / "p.fasta", on_invalid="skip")
    done = prepare_corpus([str(tmp_path / "p.fasta")], tmp_path / "corpus", on_invalid="skip",
                          validation_fraction=0.0)
    assert done.manifest["report"] == expected.report.counts() == {
        "records_read": 24, "records_kept": 21, "skipped_empty": 1, "skipped_invalid": 2}
    assert corpus_contents(done.path)["train"][1] == expected.sequences


# -- bad input: one clear message naming the file (and line/record), exit 1, no traceback -------------------
def run_cli(*args: str):
    result = CliRunner().invoke(main, ["prepare", *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no crash
    return result.output


def test_bad_fasta_gives_the_fasta_readers_messages(tmp_path, real):
    text = write_fasta(tmp_path / "bad.fasta", real[:30]).read_text() + ">broken one\nMKV1L\n"
    (tmp_path / "bad.fasta").write_text(text)
    with pytest.raises(DataError) as info:
        read_fasta(tmp_path / "bad.fasta")
    output = run_cli(str(tmp_path / "bad.fasta"), "-o", str(tmp_path / "out"), "--chunk-mb", "0.01", "--workers", "2")
    assert f"error: {info.value}" in output
    assert "bad.fasta:" in output and "record 'broken'" in output
    (tmp_path / "text.fasta").write_text("\nhello\n>a\nMKV\n")
    assert "text.fasta:2: expected a FASTA header line starting with '>', found 'hello'" in run_cli(
        str(tmp_path / "text.fasta"), "-o", str(tmp_path / "out"))
    (tmp_path / "none.fasta").write_text("\n\n")
    assert "none.fasta: no FASTA records" in run_cli(str(tmp_path / "none.fasta"), "-o", str(tmp_path / "out"))
    broken = gzip.compress(text.encode())[:-30]
    (tmp_path / "cut.fasta.gz").write_bytes(broken)
    assert "cut.fasta.gz: cannot read FASTA file (corrupt or truncated?)" in run_cli(
        str(tmp_path / "cut.fasta.gz"), "-o", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob("out.tmp-*")) == []


def test_bad_tables_and_paths_are_clear_errors(tmp_path, real):
    parquet = write_parquet(tmp_path / "p.parquet", real[:20])
    output = run_cli(str(parquet), "-o", str(tmp_path / "out"))
    assert f"{parquet}: no column 'sequence' (--sequence-column); its columns are 'accession', 'seq'" in output
    csv = write_csv(tmp_path / "p.csv.gz", real[:20], opener=gzip.open)
    output = run_cli(str(csv), "-o", str(tmp_path / "out"), "--sequence-column", "seq", "--id-column", "name")
    assert f"{csv}: no column 'name' (--id-column); its columns are 'accession', 'seq', 'location'" in output
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1" + b"\x00" * 100)
    assert "corrupt.parquet: not a readable Parquet file" in run_cli(str(tmp_path / "corrupt.parquet"), "-o",
                                                                        str(tmp_path / "out"))
    assert "absent.fasta: input file not found" in run_cli(str(tmp_path / "absent.fasta"), "-o", str(tmp_path / "o"))
    assert "nothing*.fasta: no file matches this pattern" in run_cli(str(tmp_path / "nothing*.fasta"), "-o",
                                                                      str(tmp_path / "o"))
    bad = real[:5] + [("P_BAD", "MKVJ1L", "x")]
    bad_parquet = write_parquet(tmp_path / "bad.parquet", bad)
    assert (f"{bad_parquet}: row 6: record 'P_BAD': invalid residue letter(s) '1J' (first at residue 4)"
            in run_cli(str(bad_parquet), "-o", str(tmp_path / "o"), "--sequence-column", "seq", "--id-column",
                       "accession"))
    bad_csv = write_csv(tmp_path / "bad.csv", bad)
    assert f"{bad_csv}:7: record 'P_BAD': invalid residue letter(s)" in run_cli(
        str(bad_csv), "-o", str(tmp_path / "o"), "--sequence-column", "seq", "--id-column", "accession")
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite_and_interrupted_prepare_leaves_nothing(tmp_path, real, monkeypatch):
    fasta = write_fasta(tmp_path / "p.fasta", real)
    out = tmp_path / "corpus"
    prepare_corpus([str(fasta)], out)
    before = (out / "manifest.json").read_text()
    assert "already exists" in run_cli(str(fasta), "-o", str(out))
    assert (out / "manifest.json").read_text() == before
    prepare_corpus([str(fasta)], out, overwrite=True, validation_fraction=0.5)
    assert json.loads((out / "manifest.json").read_text())["split"]["fraction"] == 0.5

    calls = []
    real_encode = prepare_module.encode_unit

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_encode(*args)

    monkeypatch.setattr(prepare_module, "encode_unit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus([str(fasta)], tmp_path / "fresh", chunk_bytes=8 << 10)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "cwd", "p.fasta"]


def test_a_source_that_changes_while_read_is_refused(tmp_path, real, monkeypatch):
    fasta = write_fasta(tmp_path / "p.fasta", real)
    signatures = iter([(1, 1), (2, 2)])  # size and mtime before, then after: a download still being written
    monkeypatch.setattr(prepare_module, "stat_signature", lambda path: next(signatures))
    output = run_cli(str(fasta), "-o", str(tmp_path / "out"))
    assert f"{fasta}: changed while prepare read it" in output
    assert not (tmp_path / "out").exists()


# -- a run trains from the prepared directory ----------------------------------------------------------------
@pytest.mark.slow
def test_train_runs_from_a_prepared_corpus(tmp_path, real):
    fasta = write_fasta(tmp_path / "p.fasta.gz", real, gzip.open)
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, "-m", "plmforge.core.cli", "prepare", str(fasta), "-o", str(corpus), "--quiet",
                    "--validation-fraction", "0.1"], check=True)
    raw = tiny_spec_dict(tmp_path, steps=2, eval_every=2, checkpoint_every=2)
    raw["data"]["source"] = str(corpus)
    raw["tracking"]["enabled"] = False
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "plmforge.core.cli", "train", str(spec), "--no-progress"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "finished 2 steps" in out.stdout
    train_loss = float(next(line.split()[-1] for line in out.stdout.splitlines() if "train/loss" in line))
    assert np.isfinite(train_loss) and 1.0 < train_loss < 7.0, out.stdout
    (corpus / "manifest.json").unlink()  # the run really reads the corpus: without its manifest it refuses
    out = subprocess.run([sys.executable, "-m", "plmforge.core.cli", "train", str(spec), "--no-progress"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "interrupted?" in out.stderr and "Traceback" not in out.stderr
