"""The tokenizer files of Hugging Face exports: ``AutoTokenizer.from_pretrained(dir)`` gives plmforge's ids.

Checked on real proteins of the built-in corpus (including those with X, U and B), with and without
task prefixes, for every kind of vocabulary a run can have. The model side (an exported model run on
the tokenizer's ids equals plmforge) is in test_hf_checkpoint.py and test_python_api.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from plmforge.core.data.sources import load_builtin  # noqa: E402
from plmforge.core.hf_tokenizer import TOKENIZER_FILES, tokenizer_json, write_tokenizer_files  # noqa: E402
from plmforge.core.vocab import BASE_SIZE, TASK_PREFIXES, Vocab  # noqa: E402

VOCABULARIES = {"ankh": (), "ankh3": TASK_PREFIXES, "bert_mlm": ("[MASK]",), "all": ("[S2S]", "[MASK]", "[NLU]"),
                "custom prefix": ("[FOO]",)}


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    """293 real proteins: the first 290 test proteins, and a train protein holding X, one U and one B."""
    sets = load_builtin("scl2205")
    test, train = sets["test"], sets["train"]
    chosen = [test.sequence(i) for i in range(290)]
    unusual = [next(train.sequence(i) for i in range(len(train)) if letter in train.sequence(i)) for letter in "XUB"]
    return chosen + unusual


@pytest.fixture(scope="module", params=list(VOCABULARIES))
def exported(request, tmp_path_factory):
    vocab = Vocab(VOCABULARIES[request.param])
    directory = tmp_path_factory.mktemp("tokenizer")
    assert write_tokenizer_files(directory, vocab.tokens) == list(TOKENIZER_FILES)
    return vocab, transformers.AutoTokenizer.from_pretrained(directory)


def test_ids_equal_plmforge_for_real_proteins(exported, proteins):
    vocab, tokenizer = exported
    assert len(tokenizer) == len(vocab)
    got = tokenizer(proteins)["input_ids"]
    for protein, ids in zip(proteins, got):
        np.testing.assert_array_equal(ids, vocab.encode(protein), err_msg=protein[:30])
    assert tokenizer(proteins[0].lower())["input_ids"] == vocab.encode(proteins[0]).tolist()  # either case


def test_prefixes_are_single_tokens_before_the_protein(exported, proteins):
    vocab, tokenizer = exported
    for prefix in vocab.extra_tokens:
        for protein in proteins[:20]:
            np.testing.assert_array_equal(tokenizer(prefix + protein)["input_ids"],
                                          vocab.encode(protein, prefix=prefix))
    assert tokenizer("<extra_id_0>MK<extra_id_1>")["input_ids"] == [vocab.sentinel_id(0), *vocab.encode_residues("MK"),
                                                                     vocab.sentinel_id(1), vocab.eos_id]


def test_special_tokens_padding_and_decoding(exported, proteins):
    vocab, tokenizer = exported
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.mask_token_id == (vocab.token_id("[MASK]") if "[MASK]" in vocab.extra_tokens else None)
    batch = tokenizer(proteins[:4], padding=True, return_tensors="np")
    for row, protein in enumerate(proteins[:4]):
        ids = vocab.encode(protein)
        np.testing.assert_array_equal(batch["input_ids"][row, :len(ids)], ids)
        assert not batch["input_ids"][row, len(ids):].any() and batch["attention_mask"][row].sum() == len(ids)
    assert tokenizer.decode(tokenizer(proteins[0])["input_ids"], skip_special_tokens=True) == proteins[0]
    assert tokenizer.convert_ids_to_tokens(list(range(len(vocab)))) == vocab.tokens


def test_what_plmforge_refuses_becomes_unk():
    """plmforge refuses J and digits in a sequence; the tokenizer maps them to <unk> and drops white space."""
    from tokenizers import Tokenizer

    vocab = Vocab()
    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json(vocab.tokens)))
    m, k = vocab.encode_residues("MK").tolist()
    assert tokenizer.encode("MJK").ids == [m, vocab.unk_id, k, vocab.eos_id]
    assert tokenizer.encode("MK V\n").ids == vocab.encode("MKV").tolist()


def test_a_vocabulary_that_is_not_plmforge_s_is_refused():
    with pytest.raises(ValueError, match="not a plmforge vocabulary"):
        tokenizer_json(["<pad>", "</s>", "<unk>", *"ACDEFGHIKLMNPQRSTVWY"])
    assert len(Vocab().tokens) == BASE_SIZE
