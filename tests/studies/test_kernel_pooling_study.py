"""Helpers of studies/kernel_pooling_study.py: verdict rules, plateau statistic, the head trainer."""

import dataclasses
import os
import sys

import numpy as np
import pytest

from .study_loader import STUDIES, load_study


@pytest.fixture(scope="module")
def kps():
    return load_study("kernel_pooling_study.py")


def test_paired_stats_matches_a_hand_computed_t_test(kps):
    a, b = [0.70, 0.74, 0.69], [0.60, 0.66, 0.64]
    diff = np.array(a) - np.array(b)  # 0.10, 0.08, 0.05
    mean = diff.sum() / 3
    std = np.sqrt(sum((d - mean) ** 2 for d in diff) / 2)
    t = mean / (std / np.sqrt(3))
    # one-sided p of Student's t with 2 degrees of freedom: 1/2 - t / (2 sqrt(t^2 + 2))
    p_greater = 0.5 - t / (2 * np.sqrt(t * t + 2))
    stats = kps.paired_stats(a, b)
    assert stats["n"] == 3
    np.testing.assert_allclose(stats["mean_diff"], mean, rtol=1e-12)
    np.testing.assert_allclose(stats["std_diff"], std, rtol=1e-12)
    np.testing.assert_allclose(stats["p_greater"], p_greater, rtol=1e-9)
    np.testing.assert_allclose(stats["p_two_sided"], 2 * p_greater, rtol=1e-9)


def test_verdict_greater(kps):
    assert kps.verdict_greater([0.70, 0.74, 0.69], [0.60, 0.66, 0.64])[0] == "yes"
    assert kps.verdict_greater([0.70, 0.60, 0.69], [0.60, 0.66, 0.64])[0] == "partly"  # > 0, noisy
    assert kps.verdict_greater([0.60, 0.66, 0.64], [0.70, 0.74, 0.69])[0] == "no"
    assert kps.verdict_greater([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])[0] == "no"


def test_verdict_similar(kps):
    assert kps.verdict_similar([0.70, 0.72, 0.69], [0.71, 0.70, 0.70])[0] == "yes"
    assert kps.verdict_similar([0.80, 0.64, 0.75], [0.70, 0.70, 0.70])[0] == "partly"  # 0.03, noisy
    assert kps.verdict_similar([0.80, 0.82, 0.79], [0.70, 0.71, 0.70])[0] == "no"


def test_verdict_at_least(kps):
    assert kps.verdict_at_least([0.70, 0.74, 0.69], [0.60, 0.66, 0.64])[0] == "yes"
    assert kps.verdict_at_least([0.60, 0.66, 0.64], [0.60, 0.66, 0.64])[0] == "partly"  # equal
    assert kps.verdict_at_least([0.60, 0.70, 0.64], [0.70, 0.66, 0.69])[0] == "partly"  # < 0, noisy
    assert kps.verdict_at_least([0.60, 0.66, 0.64], [0.70, 0.74, 0.69])[0] == "no"


def test_plateau_change(kps):
    assert kps.plateau_change([0.1] * 5 + [0.5] * 10) == pytest.approx(0.0)
    assert kps.plateau_change(list(range(10)), k=5) == pytest.approx(5.0)
    assert kps.plateau_change([0.2, 0.4]) == pytest.approx(0.2)


@pytest.mark.parametrize("key", ["kp2_fixed", "kp2_learned", "bilinear"])
def test_train_head_on_toy_maps(kps, key):
    """Separable toy maps: the head learns them; fixed coefficients stay, learned ones move."""
    rng = np.random.default_rng(0)
    labels = np.arange(40) % kps.NUM_CLASSES
    centres = rng.uniform(0, 1, size=(kps.NUM_CLASSES, 1, 1, 6))
    maps = (centres[labels] + 0.05 * rng.uniform(size=(40, 2, 2, 6))).astype(np.float32)
    variant = next(v for v in kps.VARIANTS if v.key == key)
    result = kps.train_head(variant, maps, labels, maps, labels, seed=0, epochs=3, kernel_dims=8)
    assert len(result["test_curve"]) == len(result["train_curve"]) == 3
    assert result["top1"] == result["test_curve"][-1]
    assert result["dim"] == {"kp2_fixed": 1 + 6 + 8, "kp2_learned": 1 + 6 + 8, "bilinear": 36}[key]
    if variant.pooling == "kernel":
        assert result["gamma"] > 0
        moved = not np.allclose(result["alpha_start"], result["alpha_end"])
        assert moved == (variant.coefficients == "learned")


def test_claims_follow_the_contract(kps):
    sys.path.insert(0, STUDIES)
    from claims_table import validate_claims

    rng = np.random.default_rng(1)
    pooling = {str(s): {"variants": {v.key: {"top1": float(rng.uniform(0.4, 0.6)), "dim": 8, "gamma": 0.5,
                                             "alpha_start": [0.5] * (v.order + 1)} for v in kps.VARIANTS}}
               for s in range(3)}
    demo = {str(s): {arm: {"top1": float(rng.uniform(0.5, 0.9))} for arm in
                     ("stage1", "stage2_kernel", "stage2_avg")} for s in range(3)}
    claims = kps.pooling_claims(pooling) + kps.demo_claims(demo, 48)
    assert len(validate_claims("toy", claims)) == 6


def test_finetune_runs_differ_only_in_their_pooling(kps):
    """Part C's configs: the demo's stage-2 recipe on Part A's balanced data, constant learning rate,
    and one variant differs from another only in the pooling settings."""
    from finegrain_tf.train.config import build_config

    scale = kps.SCALES["full"]
    configs = [os.path.join(kps.ROOT, c) for c in ("configs/demo.yaml", "configs/demo_kernel_finetune.yaml")]
    built = {key: build_config(configs, kps.finetune_overrides(next(v for v in kps.VARIANTS if v.key == key),
                                                                3, scale, "w.h5"))
             for key in kps.FINETUNE_VARIANTS}
    for cfg in built.values():
        assert (cfg.data.synthetic.num_classes, cfg.data.synthetic.train_per_class) == (kps.NUM_CLASSES, 60)
        assert cfg.data.imbalance_factor == 1.0 and cfg.data.synthetic.seed == 3 and cfg.train.seed == 3
        assert cfg.optimizer.schedule == "constant" and cfg.optimizer.learning_rate == 0.01
        assert cfg.model.logistic_init and cfg.loss.name == "softmax" and cfg.model.weights == "w.h5"
    assert {k: c.model.pooling for k, c in built.items()} == {
        "avg": "avg", "bilinear": "bilinear", "compact_bilinear": "compact_bilinear",
        "kp4_fixed": "kernel", "kp4_learned": "kernel"}
    assert built["kp4_fixed"].model.kernel_pooling.coefficients == "rbf"
    assert built["kp4_learned"].model.kernel_pooling.coefficients == "learned"
    assert built["compact_bilinear"].model.compact_dim == 1 + 256 + 3 * scale.kernel_dims

    def without_pooling(cfg):
        settings = dataclasses.asdict(cfg)
        del settings["model"]["pooling"], settings["model"]["kernel_pooling"]
        return repr(settings)

    assert len({without_pooling(c) for c in built.values()}) == 1


def test_finetune_claims_follow_the_contract(kps):
    sys.path.insert(0, STUDIES)
    from claims_table import validate_claims

    rng = np.random.default_rng(2)
    per_seed = {str(s): {"stages": [200, 400, 600, 800, 1000, 1200], "variants": {
        k: {"top1": float(rng.uniform(0.6, 0.9))} for k in kps.FINETUNE_VARIANTS}} for s in range(3)}
    claims = validate_claims("toy", kps.finetune_claims(per_seed))
    assert [c["claim"] for c in claims] == [f"(fine-tuned) {c[0]}" for c in kps.POOLING_CLAIMS]
    assert all("1200 steps" in c["ours"] for c in claims)
