"""Length-bucketed batching: coverage, budgets, padding efficiency, determinism and exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from plmforge.core.data.batching import BatchPlanner, EpochPlan, collate
from plmforge.core.data.sources import load_builtin
from plmforge.core.data.stream import ExampleStream, crop
from plmforge.core.objective import Feature
from plmforge.core.vocab import Vocab
from plmforge.plugins.objectives.mlm import MaskedLanguageModeling, MaskedLMConfig


@pytest.fixture(scope="module")
def corpus():
    return load_builtin("scl2205")


def test_plan_covers_each_protein_once_within_the_token_budget(corpus):
    lengths = corpus["train"].lengths
    planner = BatchPlanner(max_length=256, pad_to_multiple=16, tokens=4096)
    batches = planner.plan(lengths, np.random.default_rng(0))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    padded = planner.padded_lengths(lengths)
    for batch in batches:
        assert len(batch) * padded[batch].max() <= 4096 or len(batch) == 1


def test_bucketing_wastes_far_less_padding_than_random_batches(corpus):
    lengths = np.minimum(corpus["train"].lengths, 512)
    planner = BatchPlanner(max_length=512, pad_to_multiple=8, sequences=32)
    rng = np.random.default_rng(0)

    def efficiency(batches):
        real = sum(lengths[b].sum() for b in batches)
        padded = sum(len(b) * lengths[b].max() for b in batches)
        return real / padded

    bucketed = efficiency(planner.plan(lengths, rng))
    order = rng.permutation(len(lengths))
    random = efficiency([order[i:i + 32] for i in range(0, len(order), 32)])
    assert bucketed > 0.97 and random < 0.8


def test_plans_are_deterministic_and_change_between_epochs(corpus):
    lengths = corpus["validation"].lengths
    planner = BatchPlanner(max_length=256, sequences=16)
    a = planner.plan(lengths, np.random.default_rng([1, 0, 0]))
    b = planner.plan(lengths, np.random.default_rng([1, 0, 0]))
    c = planner.plan(lengths, np.random.default_rng([1, 0, 1]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def make_stream(proteins, seed=3, tokens=2048):
    objective = MaskedLanguageModeling(MaskedLMConfig(), Vocab())
    return ExampleStream(objective, proteins, BatchPlanner(max_length=128, tokens=tokens), seed=seed)


def test_stream_resumes_at_the_exact_example_across_epochs(corpus):
    proteins = corpus["validation"].subset(np.arange(120))
    reference = make_stream(proteins)
    batches = [reference.next() for _ in range(40)]  # several epochs of 120 proteins
    assert reference.epoch >= 2
    for stop in (1, 7, 23):
        stream = make_stream(proteins)
        for _ in range(stop):
            stream.next()
        resumed = make_stream(proteins)
        resumed.load_state(stream.state())
        for expected in batches[stop:stop + 5]:
            got = resumed.next()
            assert got.arrays.keys() == expected.arrays.keys()
            for key in expected.arrays:
                np.testing.assert_array_equal(got.arrays[key], expected.arrays[key])
            assert got.weight == expected.weight


def test_evaluation_batches_are_identical_every_time(corpus):
    stream = make_stream(corpus["validation"])
    first = list(stream.evaluation_batches(3))
    stream.next()
    second = list(stream.evaluation_batches(3))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.arrays["encoder_input_ids"], b.arrays["encoder_input_ids"])


def test_crop_is_a_random_window_in_training_and_the_start_in_evaluation():
    tokens = np.arange(1000)
    windows = {int(crop(tokens, 100, np.random.default_rng(i))[0]) for i in range(50)}
    assert len(windows) > 40 and max(windows) <= 900
    np.testing.assert_array_equal(crop(tokens, 100, None), np.arange(100))
    assert crop(tokens[:50], 100, np.random.default_rng(0)).shape == (50,)


def test_collate_pads_shared_axes_to_a_multiple():
    features = {"a": Feature("int32", "encoder"), "b": Feature("float32", "encoder", pad_value=-1.0),
                "c": Feature("int32", "decoder"), "k": Feature("int32", None),
                "p": Feature("float32", "encoder", trailing=(2,))}
    examples = [{"a": np.arange(5), "b": np.ones(5), "c": np.arange(2), "k": 1, "p": np.ones((5, 2))},
                {"a": np.arange(17), "b": np.ones(17), "c": np.arange(9), "k": 2, "p": np.ones((17, 2))}]
    batch = collate(examples, features, pad_to_multiple=8)
    assert batch["a"].shape == (2, 24) and batch["c"].shape == (2, 16) and batch["p"].shape == (2, 24, 2)
    assert batch["b"][0, 5:].tolist() == [-1.0] * 19 and batch["a"][0, 5:].sum() == 0
    assert batch["k"].tolist() == [1, 2] and batch["a"].dtype == np.int32


def test_full_length_crops_are_padded_to_the_crop_length_not_the_next_multiple(corpus):
    # max_length 128: a cropped protein becomes 129 encoder tokens (</s>); rounding to 16 would give 144
    stream = make_stream(corpus["train"])
    assert stream.planner.length_cap == 136
    widths = {stream.next().arrays["encoder_input_ids"].shape[1] for _ in range(60)}
    assert 136 in widths and 144 not in widths
    assert all(width % 16 == 0 for width in widths - {136})
    # a longer example than the cap (an objective adding more tokens) still rounds to the multiple
    features = {"a": Feature("int32", "encoder")}
    assert collate([{"a": np.arange(137)}], features, 16, length_cap=136)["a"].shape == (1, 144)
    assert collate([{"a": np.arange(20)}], features, 16, length_cap=136)["a"].shape == (1, 32)


# -- windowed plans (corpora of tens of millions of proteins) -----------------------------------------
def greedy_by_tokens(padded_sorted, tokens):
    """The token-budget cut written as the plain greedy loop: the reference the planner must match."""
    cuts, start, n = [], 0, len(padded_sorted)
    while start < n:
        end = start + 1
        while end < n and (end + 1 - start) * padded_sorted[end] <= tokens:
            end += 1
        cuts.append((start, end))
        start = end
    return cuts


@pytest.mark.parametrize("tokens", [64, 500, 4096])
def test_token_budget_cut_matches_the_greedy_loop(tokens):
    rng = np.random.default_rng(tokens)
    lengths = np.concatenate([rng.lognormal(5.5, 0.8, 3000).astype(np.int64) + 1, [5000, 1, 2]])
    planner = BatchPlanner(max_length=1024, tokens=tokens)
    padded = np.sort(planner.padded_lengths(lengths))
    order = np.arange(len(padded))
    got = [(int(b[0]), int(b[-1]) + 1) for b in planner._by_tokens(order, padded)]
    assert got == greedy_by_tokens(padded, tokens)


def test_a_corpus_that_fits_one_window_gets_the_whole_epoch_plan(corpus):
    lengths = corpus["train"].lengths
    planner = BatchPlanner(max_length=256, tokens=4096)
    plan = EpochPlan(planner, lengths, (3, 1, 2))
    assert plan.windows == 1
    expected = planner.plan(lengths, np.random.default_rng([3, 1, 2]))
    assert len(plan.batches(0)) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(plan.batches(0), expected))


def test_windows_cover_each_protein_once_and_keep_the_budget(corpus):
    lengths = corpus["train"].lengths
    planner = BatchPlanner(max_length=256, tokens=4096)
    plan = EpochPlan(planner, lengths, (3, 1, 0), window=1000)
    assert plan.windows == -(-len(lengths) // 1000) > 2
    members = [plan.members(w) for w in range(plan.windows)]
    assert max(map(len, members)) - min(map(len, members)) <= 1  # near-equal windows
    batches = [b for w in range(plan.windows) for b in plan.batches(w)]
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    padded = planner.padded_lengths(lengths)
    assert all(len(b) * padded[b].max() <= 4096 or len(b) == 1 for b in batches)
    for w in range(plan.windows):  # a window's batches hold only its own proteins
        assert set(np.concatenate(plan.batches(w)).tolist()) == set(members[w].tolist())
    again = EpochPlan(planner, lengths, (3, 1, 0), window=1000)
    assert all(np.array_equal(a, b) for w in range(plan.windows) for a, b in zip(plan.batches(w), again.batches(w)))
    other = EpochPlan(planner, lengths, (3, 1, 1), window=1000)
    assert not np.array_equal(np.sort(other.members(0)), np.sort(members[0]))  # membership changes per epoch


def test_small_windows_keep_the_padding_of_the_whole_epoch_plan(corpus):
    lengths = corpus["train"].lengths
    planner = BatchPlanner(max_length=512, pad_to_multiple=8, tokens=8192)
    padded = planner.padded_lengths(lengths)
    real = np.minimum(lengths, 512).sum()

    def padded_share(plan):
        batches = [b for w in range(plan.windows) for b in plan.batches(w)]
        return 1 - real / sum(len(b) * padded[b].max() for b in batches)

    whole = padded_share(EpochPlan(planner, lengths, (0, 0, 0)))
    windowed = padded_share(EpochPlan(planner, lengths, (0, 0, 0), window=4096))
    assert windowed < whole + 0.01 and whole < 0.1


def test_stream_resumes_at_the_exact_example_across_windows_and_epochs(corpus):
    proteins = corpus["validation"].subset(np.arange(300))

    def stream():
        s = make_stream(proteins)
        s.plan_window = 64
        return s

    reference = stream()
    batches = [reference.next() for _ in range(60)]
    assert reference.epoch >= 1
    for stop in (1, 9, 31, 47):
        stopped = stream()
        for _ in range(stop):
            stopped.next()
        resumed = stream()
        resumed.load_state(stopped.state())
        assert resumed.state() == stopped.state()
        for expected in batches[stop:stop + 4]:
            np.testing.assert_array_equal(resumed.next().arrays["encoder_input_ids"],
                                          expected.arrays["encoder_input_ids"])


def test_a_state_saved_before_windows_resumes(corpus):
    proteins = corpus["validation"].subset(np.arange(120))
    reference = make_stream(proteins)
    batches = [reference.next() for _ in range(12)]
    resumed = make_stream(proteins)
    resumed.load_state({"epoch": reference.epoch, "position": reference.position})  # no "window"
    fresh = make_stream(proteins)
    fresh.load_state({"epoch": 0, "position": 5, "cropped": 0})
    np.testing.assert_array_equal(fresh.next().arrays["encoder_input_ids"], batches[5].arrays["encoder_input_ids"])
    assert {**resumed.state(), "cropped": 0} == {**reference.state(), "cropped": 0}
    np.testing.assert_array_equal(resumed.next().arrays["encoder_input_ids"],
                                  reference.next().arrays["encoder_input_ids"])


def test_shares_of_processes_make_exactly_what_one_process_makes(corpus):
    proteins = corpus["train"].subset(np.arange(400))
    one = make_stream(proteins, tokens=1024)
    shards = [make_stream(proteins, tokens=1024) for _ in range(2)]
    for _ in range(5):
        everything, residues = one.next_share(4)
        shares = [stream.next_share(4, index, 2) for index, stream in enumerate(shards)]
        assert [r for _, r in shares] == [residues, residues] == [sum(b.residues for b in everything)] * 2
        interleaved = [shares[position % 2][0][position // 2] for position in range(4)]
        for ours, theirs in zip(interleaved, everything):
            for key in theirs.arrays:
                np.testing.assert_array_equal(ours.arrays[key], theirs.arrays[key])
            assert ours.weight == theirs.weight
    assert shards[0].state() == shards[1].state() == one.state()  # same epoch, window, position and crops
    assert shards[0].examples_planned == shards[1].examples_planned == one.examples_planned == one.examples_made
    assert shards[0].examples_made + shards[1].examples_made == one.examples_made
    assert 0 < shards[0].examples_made < one.examples_made
