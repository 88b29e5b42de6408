"""The Ankh-compatible vocabulary: ids, extra tokens, encoding and decoding on real proteins."""

import numpy as np
import pytest

from plmforge.core.data.sources import load_builtin
from plmforge.core.vocab import (
    BASE_SIZE,
    NUM_SENTINELS,
    RESIDUES,
    STANDARD_AMINO_ACIDS,
    InvalidSequenceError,
    Vocab,
)


@pytest.fixture(scope="module")
def corpus():
    return load_builtin("scl2205")


@pytest.fixture(scope="module")
def vocab():
    return Vocab()


def test_special_and_residue_ids_follow_ankh(vocab):
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert [vocab.token_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert vocab.token_id("A") == 3 and vocab.token_id("L") == 4 and vocab.token_id("Z") == 27
    assert [vocab.token_id(c) for c in RESIDUES] == list(range(3, 28))
    assert RESIDUES == "ALGVSREDTIPKFQNYMHWCXBOUZ"
    assert vocab.residue_ids.tolist() == list(range(3, 28))
    assert set(STANDARD_AMINO_ACIDS) <= set(RESIDUES) and len(set(STANDARD_AMINO_ACIDS)) == 20


def test_sentinels_follow_t5_convention(vocab):
    assert vocab.token_id("<extra_id_0>") == 143
    assert vocab.token_id("<extra_id_115>") == 28
    assert vocab.sentinel_id(0) == 143 and vocab.sentinel_id(NUM_SENTINELS - 1) == 28
    assert vocab.sentinel_ids(3).tolist() == [143, 142, 141]
    assert vocab.sentinel_ids(3).dtype == np.int32
    with pytest.raises(ValueError):
        vocab.sentinel_id(NUM_SENTINELS)
    with pytest.raises(ValueError):
        vocab.sentinel_ids(NUM_SENTINELS + 1)
    ids = np.arange(len(vocab))
    assert vocab.is_sentinel(ids).sum() == NUM_SENTINELS
    assert vocab.is_residue(ids).sum() == len(RESIDUES)
    assert not (vocab.is_sentinel(ids) & vocab.is_residue(ids)).any()


def test_size_and_task_prefixes():
    assert len(Vocab()) == Vocab().size == BASE_SIZE == 144
    v = Vocab(["[S2S]"])  # one prefix brings both, in canonical order
    assert (v.token_id("[NLU]"), v.token_id("[S2S]"), len(v)) == (144, 145, 146)
    assert Vocab(["[S2S]", "[NLU]"]) == Vocab(["[NLU]"]) == v
    assert Vocab(["[S2S]"]) != Vocab()
    assert v.token_id("<extra_id_0>") == 143  # base ids unchanged by extra tokens
    with pytest.raises(ValueError, match="clash"):
        Vocab(["A"])
    with pytest.raises(ValueError, match="clash"):
        Vocab(["<extra_id_3>"])
    with pytest.raises(KeyError, match=r"\[NLU\]"):
        Vocab().token_id("[NLU]")


def test_encode_adds_eos_and_prefix():
    v = Vocab(["[NLU]"])
    assert v.encode("MKV").tolist() == [v.token_id("M"), v.token_id("K"), v.token_id("V"), 1]
    assert v.encode("mkv", add_eos=False).tolist() == v.encode_residues("MKV").tolist()
    assert v.encode("A", prefix="[NLU]").tolist() == [144, 3, 1]
    assert v.encode("A").dtype == np.int32
    assert v.encode_residues(b"ALG").tolist() == [3, 4, 5]
    assert v.decode(v.encode("MKV", prefix="[S2S]")) == "[S2S]MKV</s>"
    assert v.decode(v.encode("MKV", prefix="[S2S]"), skip_special=True) == "MKV"
    assert v.decode_residues(np.array([143, 3, 4, 0, 1])) == "AL"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.decode([len(v)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.decode([-1])


def test_round_trip_on_every_corpus_sequence(corpus, vocab):
    n = 0
    for proteins in corpus.values():
        for i in range(len(proteins)):
            seq = proteins.sequence(i)
            ids = vocab.encode(seq)
            assert ids[-1] == vocab.eos_id and vocab.is_residue(ids[:-1]).all()
            assert vocab.decode_residues(ids) == seq
            n += 1
    assert n == 19074


def test_whole_corpus_encodes_in_one_call(corpus, vocab):
    # the vectorised path over the joined text agrees with the stored ids
    train = corpus["train"]
    joined = "".join(train.sequence(i) for i in range(len(train)))
    assert np.array_equal(vocab.encode_residues(joined), train.residues.astype(np.int32))


@pytest.mark.parametrize(
    ("text", "chars", "position"),
    [
        ("MKJV", "J", 3),
        ("MK*V*", "*", 3),
        ("MK V", " ", 3),
        ("1MK", "1", 1),
        ("MKé", "é", 3),
        ("MK-J.", "-.J", 3),
    ],
)
def test_invalid_letters_raise(vocab, text, chars, position):
    with pytest.raises(InvalidSequenceError) as info:
        vocab.encode_residues(text)
    assert info.value.bad_chars == chars
    assert info.value.first_position == position - 1
    assert f"{chars!r}" in str(info.value) and f"position {position}" in str(info.value)
    assert isinstance(info.value, ValueError)
