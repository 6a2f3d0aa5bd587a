"""studies/kernel_pooling_finetune.py: its runs' configs, claims and baseline text."""

import dataclasses
import os
import sys

import numpy as np
import pytest

from .study_loader import STUDIES, load_study


@pytest.fixture(scope="module")
def kpf():
    return load_study("kernel_pooling_finetune.py")


def test_runs_are_the_demo_stage2_recipe_and_differ_only_in_their_pooling(kpf):
    from finegrain_tf.train.config import build_config

    kpc = kpf.kpc
    scale = kpc.SCALES["full"]
    configs = [os.path.join(kpc.ROOT, c) for c in kpf.CONFIGS]
    built = {key: build_config(configs, kpf.run_overrides(key, 3, scale, "w.h5", kpf.FINETUNE_STEPS))
             for key in kpc.FINETUNE_VARIANTS}
    for cfg in built.values():
        assert (cfg.data.synthetic.num_classes, cfg.data.synthetic.train_per_class) == (kpc.NUM_CLASSES, 60)
        assert cfg.data.imbalance_factor == 1.0 and cfg.data.synthetic.seed == 3 and cfg.train.seed == 3
        # the demo's own schedule (configs/demo.yaml: cosine), stretched over the study's steps
        assert cfg.optimizer.schedule == "cosine" and cfg.optimizer.learning_rate == 0.01
        assert cfg.optimizer.warmup_steps == 0 and cfg.train.steps == 800
        assert cfg.model.logistic_init and cfg.loss.name == "softmax" and cfg.model.weights == "w.h5"
    assert {k: c.model.pooling for k, c in built.items()} == {
        "avg": "avg", "bilinear": "bilinear", "compact_bilinear": "compact_bilinear",
        "kp4_fixed": "kernel", "kp4_learned": "kernel"}
    assert built["kp4_fixed"].model.kernel_pooling.coefficients == "rbf"
    assert built["kp4_learned"].model.kernel_pooling.coefficients == "learned"
    assert built["kp4_learned"].model.kernel_pooling.order == 4
    assert built["compact_bilinear"].model.compact_dim == 1 + 256 + 3 * scale.kernel_dims

    def without_pooling(cfg):
        settings = dataclasses.asdict(cfg)
        del settings["model"]["pooling"], settings["model"]["kernel_pooling"]
        return repr(settings)

    assert len({without_pooling(c) for c in built.values()}) == 1


def toy_runs(kpf, seeds, offset=0.0):
    return [{"variant": k, "seed": s, "top1": 0.6 + 0.05 * i + 0.01 * s + offset}
            for i, k in enumerate(kpf.kpc.FINETUNE_VARIANTS) for s in seeds]


def test_claims_follow_the_contract_and_quote_the_constant_lr_design(kpf):
    sys.path.insert(0, STUDIES)
    from claims_table import validate_claims

    seeds = [0, 1, 2]
    top1 = kpf.per_variant(toy_runs(kpf, seeds), seeds)
    assert top1["avg"] == pytest.approx([0.6, 0.61, 0.62])
    constant = {"per_seed": {str(s): {"stages": [600, 1200], "variants": {
        k: {"top1": 0.9 - 0.05 * i} for i, k in enumerate(kpf.kpc.FINETUNE_VARIANTS)}} for s in seeds}}
    reference = kpf.constant_lr_reference({"constant_lr": constant})
    assert reference["steps"] == 1200 and reference["top1"]["avg"] == [0.9] * 3
    claims = validate_claims("toy", kpf.claims(top1, 800, reference))
    assert [c["claim"] for c in claims] == [f"(fine-tuned) {c[0]}" for c in kpf.kpc.POOLING_CLAIMS]
    kp_vs_avg = claims[0]
    assert kp_vs_avg["reproduced"] == "yes"  # KP4 learned is 0.20 above avg on every seed
    assert "800 steps (cosine)" in kp_vs_avg["ours"]
    assert "constant lr at 1200 steps (earlier design): paired diff -0.200" in kp_vs_avg["ours"]


def test_baseline_says_which_variants_twice_the_steps_moves(kpf):
    top1 = {"avg": [0.90, 0.91, 0.92], "bilinear": [0.80, 0.81, 0.82]}
    plateau = {"steps": 1600, "top1": {"avg": [0.91, 0.92, 0.93], "bilinear": [0.85, 0.86, 0.87]}}
    text = kpf.baseline(top1, 800, plateau, None)
    assert "over 1600 steps gives 0.920" in text
    assert "avg +0.010, bilinear +0.050 (1/2 within the declared 0.02)" in text
    assert "chance 0.05" in kpf.baseline(top1, 800, None, None)


def test_a_claim_names_the_variants_that_twice_the_steps_still_move(kpf):
    seeds = [0, 1, 2]
    top1 = kpf.per_variant(toy_runs(kpf, seeds), seeds)  # CBP 0.05 above BP on every seed: "no"
    longer = kpf.per_variant(toy_runs(kpf, seeds), seeds)
    longer["compact_bilinear"] = [v + 0.05 for v in longer["compact_bilinear"]]
    plateau = {"steps": 1600, "top1": longer}
    cbp_vs_bp = kpf.claims(top1, 800, None, plateau)[2]
    assert cbp_vs_bp["claim"] == "(fine-tuned) Compact bilinear pooling matches full bilinear pooling"
    assert cbp_vs_bp["reproduced"] == "no"
    assert "plateau check, 1600 steps (cosine): paired diff +0.100" in cbp_vs_bp["ours"]
    assert cbp_vs_bp["why"].endswith("not at a plateau after 800 steps: twice the steps move CBP +0.050")
    assert "not at a plateau" not in kpf.claims(top1, 800)[2]["why"]
    longer["kp4_learned"] = [v + 0.05 for v in longer["kp4_learned"]]
    kp_vs_avg = kpf.claims(top1, 800, None, plateau)[0]  # a "yes" carries the caveat too
    assert kp_vs_avg["reproduced"] == "yes"
    assert kp_vs_avg["why"] == "not at a plateau after 800 steps: twice the steps move KP4 learned +0.050"
