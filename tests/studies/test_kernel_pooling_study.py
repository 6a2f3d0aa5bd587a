"""Helpers of studies/kernel_pooling_study.py and kernel_pooling_common.py: verdict rules, plateau
statistic, the head trainer, the claims."""

import os
import sys

import numpy as np
import pytest

from .study_loader import STUDIES, load_study


@pytest.fixture(scope="module")
def kps():
    return load_study("kernel_pooling_study.py")


@pytest.fixture(scope="module")
def kpc():
    return load_study("kernel_pooling_common.py")


def test_paired_stats_matches_a_hand_computed_t_test(kpc):
    a, b = [0.70, 0.74, 0.69], [0.60, 0.66, 0.64]
    diff = np.array(a) - np.array(b)  # 0.10, 0.08, 0.05
    mean = diff.sum() / 3
    std = np.sqrt(sum((d - mean) ** 2 for d in diff) / 2)
    t = mean / (std / np.sqrt(3))
    # one-sided p of Student's t with 2 degrees of freedom: 1/2 - t / (2 sqrt(t^2 + 2))
    p_greater = 0.5 - t / (2 * np.sqrt(t * t + 2))
    stats = kpc.paired_stats(a, b)
    assert stats["n"] == 3
    np.testing.assert_allclose(stats["mean_diff"], mean, rtol=1e-12)
    np.testing.assert_allclose(stats["std_diff"], std, rtol=1e-12)
    np.testing.assert_allclose(stats["p_greater"], p_greater, rtol=1e-9)
    np.testing.assert_allclose(stats["p_two_sided"], 2 * p_greater, rtol=1e-9)


def test_verdict_greater(kpc):
    assert kpc.verdict_greater([0.70, 0.74, 0.69], [0.60, 0.66, 0.64])[0] == "yes"
    assert kpc.verdict_greater([0.70, 0.60, 0.69], [0.60, 0.66, 0.64])[0] == "partly"  # > 0, noisy
    assert kpc.verdict_greater([0.60, 0.66, 0.64], [0.70, 0.74, 0.69])[0] == "no"
    assert kpc.verdict_greater([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])[0] == "no"


def test_verdict_similar(kpc):
    assert kpc.verdict_similar([0.70, 0.72, 0.69], [0.71, 0.70, 0.70])[0] == "yes"
    assert kpc.verdict_similar([0.80, 0.64, 0.75], [0.70, 0.70, 0.70])[0] == "partly"  # 0.03, noisy
    assert kpc.verdict_similar([0.80, 0.82, 0.79], [0.70, 0.71, 0.70])[0] == "no"


def test_verdict_at_least(kpc):
    assert kpc.verdict_at_least([0.70, 0.74, 0.69], [0.60, 0.66, 0.64])[0] == "yes"
    assert kpc.verdict_at_least([0.60, 0.66, 0.64], [0.60, 0.66, 0.64])[0] == "partly"  # equal
    assert kpc.verdict_at_least([0.60, 0.70, 0.64], [0.70, 0.66, 0.69])[0] == "partly"  # < 0, noisy
    assert kpc.verdict_at_least([0.60, 0.66, 0.64], [0.70, 0.74, 0.69])[0] == "no"


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


def test_the_backbones_are_pre_trained_on_the_4_shape_families(kpc, monkeypatch):
    """The design's coarse pre-training (4 classes, one per shape family, 200 per class, 400 steps at
    48 px, synthetic seed 100 + seed), whatever configs/metric_pretrain.yaml holds: it became the metric
    study's 32-class pre-training after Part A ran, and the studies silently followed it."""
    from finegrain_tf.train.config import build_config

    captured = {}
    monkeypatch.setattr(kpc, "train_run", lambda configs, overrides: captured.update(
        configs=configs, overrides=overrides) or {})
    kpc.pretrain_backbone(2, kpc.SCALES["full"], "/tmp/work")
    cfg = build_config([os.path.join(kpc.ROOT, c) for c in captured["configs"]], captured["overrides"])
    synthetic = cfg.data.synthetic
    assert (synthetic.num_classes, synthetic.num_superclasses, synthetic.train_per_class) == (4, 4, 200)
    assert (synthetic.seed, synthetic.image_size, cfg.data.image_size, cfg.train.steps) == (102, 48, 48, 400)
    assert cfg.train.model_dir == "/tmp/work/pretrain_seed2"
