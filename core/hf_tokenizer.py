"""Tokenizer files for Hugging Face exports: ``AutoTokenizer.from_pretrained(dir)`` gives plmforge's ids.

``tokenizer.json`` (the ``tokenizers`` library's format) is written here as plain JSON, so exporting
needs neither ``tokenizers`` nor ``transformers``: a word-level model over plmforge's whole
vocabulary (:mod:`plmforge.core.vocab`: Ankh's ids, the sentinels, any extra tokens the run used),
applied one character at a time, and a template that appends ``</s>``, as :meth:`Vocab.encode`
does. Lower-case residue letters are upper-cased first (plmforge reads either case); white space is
dropped; a letter outside the vocabulary (``J``, digits) becomes ``<unk>`` where plmforge refuses the
sequence. Special tokens (``<pad>``, ``</s>``, ``<unk>``, the sentinels, task prefixes such as
``[NLU]``/``[S2S]``, ``[MASK]``) are matched in the text before any of that, so a prefix is written
in front of the protein: ``tokenizer("[NLU]MKV")`` is ``Vocab.encode("MKV", prefix="[NLU]")``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plmforge.core.vocab import BASE_SIZE, EOS, PAD, RESIDUES, UNK

TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
TOKENIZER_FILES = (TOKENIZER, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)


def _added(token_id: int, token: str) -> dict[str, Any]:
    return {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def tokenizer_json(tokens: Sequence[str]) -> dict[str, Any]:
    """The ``tokenizer.json`` of a plmforge vocabulary (``Vocab.tokens``: id i is ``tokens[i]``)."""
    tokens = list(tokens)
    if tokens[:3] != [PAD, EOS, UNK] or "".join(tokens[3:3 + len(RESIDUES)]) != RESIDUES:
        raise ValueError("not a plmforge vocabulary: it must start with <pad>, </s>, <unk> and the residue letters")
    residues = set(RESIDUES)
    special = [(i, t) for i, t in enumerate(tokens) if t not in residues]
    lower_to_upper = [{"type": "Replace", "pattern": {"String": letter.lower()}, "content": letter}
                      for letter in RESIDUES]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(i, t) for i, t in special],
        "normalizer": {"type": "Sequence", "normalizers": lower_to_upper},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": False},
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}],
            "special_tokens": {EOS: {"id": EOS, "ids": [tokens.index(EOS)], "tokens": [EOS]}},
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(tokens)}, "unk_token": UNK},
    }


def special_tokens_map(tokens: Sequence[str]) -> dict[str, Any]:
    """``special_tokens_map.json``: pad, eos, unk, ``[MASK]`` when the run has it, and the others as additional."""
    named = {"pad_token": PAD, "eos_token": EOS, "unk_token": UNK}
    extra = list(tokens[BASE_SIZE:])
    if "[MASK]" in extra:
        named["mask_token"] = "[MASK]"
    sentinels = [t for t in tokens if t.startswith("<extra_id_")]
    sentinels.sort(key=lambda t: int(t[len("<extra_id_"):-1]))  # <extra_id_0> first, as T5 lists them
    additional = sentinels + [t for t in extra if t != "[MASK]"]
    return {**named, "additional_special_tokens": additional}


def tokenizer_config(tokens: Sequence[str]) -> dict[str, Any]:
    """``tokenizer_config.json``: the fast tokenizer of ``tokenizer.json`` as it is (no rebuilt T5Tokenizer)."""
    named = special_tokens_map(tokens)
    # additional_special_tokens, which transformers 4 and 5 both read ("extra_special_tokens" is a dict in 4)
    return {"tokenizer_class": "PreTrainedTokenizerFast", **named, "clean_up_tokenization_spaces": False,
            "padding_side": "right", "model_input_names": ["input_ids", "attention_mask"]}


def write_tokenizer_files(directory: Path, tokens: Sequence[str]) -> list[str]:
    """Write the three tokenizer files of ``tokens`` into ``directory``; returns their names."""
    directory = Path(directory)
    contents = {TOKENIZER: tokenizer_json(tokens), TOKENIZER_CONFIG: tokenizer_config(tokens),
                SPECIAL_TOKENS_MAP: special_tokens_map(tokens)}
    for name, content in contents.items():
        (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return list(contents)
