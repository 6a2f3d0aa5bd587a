"""Helpers of studies/metric_learning_study.py: the claims, the baseline text and the constant-lr
reference of the earlier design."""

import sys

import numpy as np
import pytest

from .study_loader import STUDIES, load_study


@pytest.fixture(scope="module")
def mls():
    return load_study("metric_learning_study.py")


def toy(mls, offset: float):
    """Per-seed top-1 where each method of METHODS is 0.01 above the one before, plus `offset`."""
    return {m: [0.5 + 0.01 * i + offset + 0.001 * s for s in range(3)] for i, m in enumerate(mls.METHODS)}


def test_the_main_runs_use_a_cosine_schedule_over_main_steps(mls):
    from finegrain_tf.train.config import build_config

    for method in mls.METHODS:
        cfg = build_config([f"configs/metric_{method}.yaml"], mls.METHOD_SET)
        assert cfg.train.steps == mls.MAIN_STEPS == 900
        assert cfg.optimizer.schedule == "cosine" and cfg.optimizer.warmup_steps == 0
        if cfg.task.name == "metric":
            assert cfg.sampler.refresh_every == 50
    assert mls.PLATEAU_STEPS == 2 * mls.MAIN_STEPS


def test_claims_follow_the_contract_and_quote_the_reference_without_judging_by_it(mls):
    sys.path.insert(0, STUDIES)
    from claims_table import validate_claims

    main = toy(mls, 0.0)  # every method 0.01 above the one before: Triplet-A ahead of Softmax
    # the constant-lr reference has Softmax ahead of every other method (Triplet-A: 0.56 + 0.1 - 0.3 vs 0.6)
    chains = {"per_steps": {"1500": toy(mls, 0.0),
                            "1800": {m: [v - (0.3 if m != "softmax" else 0.0) for v in vals]
                                     for m, vals in toy(mls, 0.1).items()}}}
    reference = mls.reference_top1({"constant_lr": {"chains": chains}})
    assert reference["steps"] == 1800
    before, after = mls.claims(main), mls.claims(main, reference)
    validate_claims("toy", before)
    validate_claims("toy", after)
    by_claim = {c["claim"]: c for c in after}
    triplet_a = by_claim["Triplet-A (64-d embedding, learned anchors) beats Softmax"]
    assert [c["reproduced"] for c in before] == [c["reproduced"] for c in after]  # verdicts: main runs only
    assert triplet_a["reproduced"] == "yes"
    assert "(900 steps, cosine)" in triplet_a["ours"]
    assert "constant lr at 1800 steps (earlier design): Triplet-A - Softmax -24.0 pp" in triplet_a["ours"]
    assert mls.reference_top1({}) is None


def test_claims_explain_a_softmax_lead(mls):
    main = toy(mls, 0.0)
    main["softmax"] = [0.9, 0.91, 0.92]
    triplet_a = next(c for c in mls.claims(main) if c["claim"].startswith("Triplet-A (64-d"))
    assert triplet_a["reproduced"] == "no" and "Metric Learning Reality Check" in triplet_a["why"]


def test_baseline_says_whether_twice_the_steps_moves_softmax(mls):
    main = toy(mls, 0.0)
    near = {"steps": 1800, "per_seed": {"softmax": [v + 0.01 for v in main["softmax"]]}}
    far = {"steps": 1800, "per_seed": {"softmax": [v + 0.05 for v in main["softmax"]]}}
    assert "(+1.0 pp: within the declared 2 pp)" in mls.baseline(main, near)
    assert "(+5.0 pp: outside the declared 2 pp)" in mls.baseline(main, far)
    reference = {"steps": 1800, "per_seed": {m: [v + 0.01 for v in vals] for m, vals in main.items()}}
    reference["per_seed"]["softmax"] = [0.4, 0.4, 0.4]
    reference["per_seed"]["triplet_m"] = [v + 0.05 for v in main["triplet_m"]]  # the main run 5 pp below it
    text = mls.baseline(main, None, reference)
    assert "constant lr (earlier design) at 1800 steps: 40.0 % +- 0.0 % (n=3)" in text
    assert "7/8 methods within 2 pp of or above their constant-lr 1800-step mean (lowest: Triplet-M -5.0 pp)" in text
    np.testing.assert_allclose(np.mean(main["softmax"]), 0.501)
