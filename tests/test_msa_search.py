"""MSA search with pyhmmer: A3M rows aligned to the query, the on-disk cache, and the built-in MSA set."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import re
import statistics
import sys
import tarfile
from importlib import resources
from pathlib import Path

import pytest

from plmforge.core.data import msa_search
from plmforge.core.data.msa_search import search_msas
from plmforge.core.data.sources import load_builtin
from plmforge.core.errors import DataError, PlmforgeError

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "build_scl2205_msas.py"
ARCHIVE = "scl2205-msas.tar.gz"
#: query -> a close homolog in the corpus (both in train): P07280 differs from P07281 by one substitution;
#: A1XIM6 is A1XIM5 but for one residue; Q8NIJ4 holds A1XIM5's sequence at residues 245-636.
HOMOLOGS = {"P07281": ["P07280"], "A1XIM5": ["A1XIM6", "Q8NIJ4"]}
OTHER_QUERIES = ["P63318", "Q8WT57"]
HEADER = re.compile(r">(\S+)/(\d+)-(\d+)")

needs_pyhmmer = pytest.mark.skipif(importlib.util.find_spec("pyhmmer") is None, reason='pip install "plmforge[msa]"')


@pytest.fixture(scope="module")
def corpus() -> dict[str, dict[str, str]]:
    """split -> accession -> sequence."""
    splits = load_builtin("scl2205")
    return {split: dict(zip(ps.names, map(ps.sequence, range(len(ps))))) for split, ps in splits.items()}


@pytest.fixture(scope="module")
def small_db(corpus) -> list[tuple[str, str]]:
    """The queries themselves (so self-hits occur), their homologs and 30 other train proteins."""
    train = corpus["train"]
    names = list(HOMOLOGS) + OTHER_QUERIES + [h for hs in HOMOLOGS.values() for h in hs]
    names += [n for n in list(train)[:40] if n not in names][:30]
    return [(n, train[n]) for n in names]


@pytest.fixture(scope="module")
def queries(corpus) -> list[tuple[str, str]]:
    return [(n, corpus["train"][n]) for n in [*HOMOLOGS, *OTHER_QUERIES]]


def read_a3m(text: str) -> list[tuple[str, str]]:
    lines = text.splitlines()
    assert len(lines) % 2 == 0 and all(h.startswith(">") for h in lines[::2])
    return [(h[1:], s) for h, s in zip(lines[::2], lines[1::2])]


def check_a3m(name: str, query: str, text: str, targets: dict[str, str]) -> list[tuple[str, str]]:
    """The invariants of every A3M written here; returns its records."""
    records = read_a3m(text)
    assert records[0] == (name, query)
    for header, row in records[1:]:
        target, start, end = HEADER.fullmatch(">" + header).groups()
        assert sum(not c.islower() for c in row) == len(query), header
        assert re.fullmatch(r"[A-Za-z-]+", row)
        assert row.replace("-", "").upper() == targets[target][int(start) - 1 : int(end)], header
        assert targets[target] != query, "self-hit not excluded"
    return records


def match_columns(row: str) -> str:
    return "".join(c for c in row if not c.islower())


@needs_pyhmmer
def test_rows_are_aligned_to_the_query(tmp_path, queries, small_db):
    paths = search_msas(queries, small_db, cache_dir=tmp_path, cpus=2)
    assert list(paths) == [n for n, _ in queries]
    targets = dict(small_db)
    records = {n: check_a3m(n, q, paths[n].read_text(), targets) for n, q in queries}
    for query, homologs in HOMOLOGS.items():
        found = {h.split("/")[0]: row for h, row in records[query][1:]}
        assert query not in found and set(homologs) <= set(found)
    # One substitution, no indel: each residue sits at its own query position.
    assert records["P07281"][1] == ("P07280/1-144", targets["P07280"])
    # A homolog found inside a longer protein: its residues 245-636 line up with the query's 392.
    q = targets["A1XIM5"]
    row = dict(records["A1XIM5"][1:])["Q8NIJ4/245-636"]
    same = sum(a == b for a, b in zip(match_columns(row), q))
    assert same >= 0.99 * len(q)


@needs_pyhmmer
def test_max_sequences_keeps_the_best_hits(tmp_path, queries, small_db):
    paths = search_msas(queries, small_db, cache_dir=tmp_path, cpus=2, max_sequences=2)
    records = {n: read_a3m(p.read_text()) for n, p in paths.items()}
    assert all(len(r) <= 2 for r in records.values())
    assert records["P07281"][1][0] == "P07280/1-144"
    assert records["A1XIM5"][1][0].split("/")[0] in HOMOLOGS["A1XIM5"]


@needs_pyhmmer
def test_jackhmmer_rows_are_aligned_to_the_query(tmp_path, queries, small_db):
    paths = search_msas(queries[:2], small_db, tool="jackhmmer", iterations=2, cache_dir=tmp_path, cpus=2)
    for name, query in queries[:2]:
        records = check_a3m(name, query, paths[name].read_text(), dict(small_db))
        assert {h.split("/")[0] for h, _ in records[1:]} >= set(HOMOLOGS[name])


@needs_pyhmmer
def test_cache_is_reused_without_searching(tmp_path, monkeypatch, queries, small_db):
    import pyhmmer

    first = search_msas(queries, small_db, cache_dir=tmp_path, cpus=2)
    texts = {n: p.read_bytes() for n, p in first.items()}

    def no_search(*args, **kwargs):
        raise AssertionError("searched although every query is cached")

    monkeypatch.setattr(pyhmmer.hmmer, "phmmer", no_search)
    again = search_msas(queries, small_db, cache_dir=tmp_path, cpus=2)
    assert again == first and {n: p.read_bytes() for n, p in again.items()} == texts
    # The same database as a compressed FASTA file has the same content, so the same cache entries.
    fasta = tmp_path / "db.fasta.gz"
    fasta.write_bytes(gzip.compress("".join(f">{n}\n{s}\n" for n, s in small_db).encode()))
    assert search_msas(queries, fasta, cache_dir=tmp_path, cpus=2) == first
    # Other parameters are other cache entries.
    with pytest.raises(AssertionError, match="searched although"):
        search_msas(queries, small_db, cache_dir=tmp_path, cpus=2, evalue=1e-5)


@needs_pyhmmer
def test_only_missing_queries_are_searched_in_one_call(tmp_path, monkeypatch, queries, small_db):
    import pyhmmer

    real, calls = pyhmmer.hmmer.phmmer, []

    def counting(query_seqs, *args, **kwargs):
        calls.append([q.name for q in query_seqs])
        return real(query_seqs, *args, **kwargs)

    monkeypatch.setattr(pyhmmer.hmmer, "phmmer", counting)
    search_msas(queries[:2], small_db, cache_dir=tmp_path, cpus=2)
    search_msas(queries, small_db, cache_dir=tmp_path, cpus=2)
    assert calls == [[n for n, _ in queries[:2]], [n for n, _ in queries[2:]]]


@needs_pyhmmer
def test_interrupted_writes_leave_no_partial_file(tmp_path, monkeypatch, queries, small_db):
    real_replace = msa_search.os.replace
    done = []

    def replace_then_interrupt(src, dst):
        if done:
            raise KeyboardInterrupt  # as if the build were stopped while writing the second A3M
        real_replace(src, dst)
        done.append(dst)

    monkeypatch.setattr(msa_search.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        search_msas(queries, small_db, cache_dir=tmp_path / "cache", cpus=2)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(done[0]).name]
    monkeypatch.setattr(msa_search.os, "replace", real_replace)
    paths = search_msas(queries, small_db, cache_dir=tmp_path / "cache", cpus=2)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(p.name for p in paths.values())


def test_missing_database_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "db.fasta"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        search_msas([("q", "MKV")], missing, cache_dir=tmp_path / "cache")


def test_missing_pyhmmer_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyhmmer", None)
    with pytest.raises(PlmforgeError, match=re.escape('pip install "plmforge[msa]"')):
        search_msas([("q", "MKVLAAGIVGL")], [("t", "MKVLAAGIVGM")], cache_dir=tmp_path)


def test_bad_query_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="query 'q'.*1"):
        search_msas([("q", "MKV1")], [("t", "MKV")], cache_dir=tmp_path)


# -- the committed built-in MSA set ------------------------------------------------------------------
def archive_members() -> dict[str, str]:
    data = resources.files("plmforge.core.data").joinpath("corpora", ARCHIVE).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        return {m.name: tar.extractfile(m).read().decode("ascii") for m in tar.getmembers()}


def test_committed_msa_set_is_small_and_matches_the_corpus(corpus):
    data = resources.files("plmforge.core.data").joinpath("corpora", ARCHIVE).read_bytes()
    assert len(data) < 3_000_000
    readme = resources.files("plmforge.core.data").joinpath("corpora", "README.md").read_text()
    assert hashlib.sha256(data).hexdigest() in readme
    members = archive_members()
    split_of = {acc: split for split, seqs in corpus.items() for acc in seqs}
    counts = {"train": 0, "validation": 0}
    rows = []
    for member, text in members.items():
        acc = member.removesuffix(".a3m")
        assert member == f"{acc}.a3m" and split_of[acc] in counts
        counts[split_of[acc]] += 1
        query = corpus[split_of[acc]][acc]
        records = check_a3m(acc, query, text, corpus["train"])  # hits come from the train split only
        rows.append(len(records))
    assert counts == {"train": 400, "validation": 60}
    assert min(rows) >= 8 and max(rows) <= 64 and statistics.median(rows) > 8


@needs_pyhmmer
def test_build_script_reproduces_committed_members(tmp_path):
    """The first MSAs kept by a small build are the first of the full one, byte for byte (~3 s)."""
    spec = importlib.util.spec_from_file_location("build_scl2205_msas", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up there
    spec.loader.exec_module(script)
    built = script.build(script.Settings(train=2, validation=1), tmp_path / "cache", cpus=2)
    members = archive_members()
    for result in built.splits.values():
        assert result.kept
        for acc, text in result.kept.items():
            assert members[f"{acc}.a3m"] == text
