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


def test_an_lr_grid_run_adds_only_the_validation_split_and_its_lr(kpf):
    from finegrain_tf.train.config import build_config

    kpc = kpf.kpc
    configs = [os.path.join(kpc.ROOT, c) for c in kpf.CONFIGS]
    main = build_config(configs, kpf.run_overrides("bilinear", 0, kpc.SCALES["full"], "w.h5", 800, lr=0.03))
    grid = build_config(configs, kpf.run_overrides("bilinear", 0, kpc.SCALES["full"], "w.h5", 800, lr=0.03,
                                                   validate=True))
    assert main.optimizer.learning_rate == grid.optimizer.learning_rate == 0.03
    assert (grid.data.synthetic.val_per_class, grid.data.val_split, grid.train.eval_every) == (20, "val", 800)
    assert main.data.synthetic.val_per_class == 0 and main.train.eval_every == 0
    settings = [dataclasses.asdict(c) for c in (main, grid)]
    for cfg in settings:
        del cfg["data"]["synthetic"]["val_per_class"], cfg["data"]["val_split"], cfg["train"]["eval_every"]
    assert settings[0] == settings[1]


def test_the_validation_split_leaves_train_and_test_images_unchanged():
    from finegrain_tf.data import synthetic

    without = synthetic.generate(num_classes=4, num_superclasses=2, train_per_class=3, val_per_class=0,
                                 test_per_class=2, image_size=16, seed=5)
    with_val = synthetic.generate(num_classes=4, num_superclasses=2, train_per_class=3, val_per_class=4,
                                  test_per_class=2, image_size=16, seed=5)
    assert len(with_val.images["val"]) == 16
    for split in ("train", "test"):
        np.testing.assert_array_equal(without.images[split], with_val.images[split])
        np.testing.assert_array_equal(without.labels[split], with_val.labels[split])


def test_the_lr_rule_takes_the_best_validation_then_the_lower_training_loss(kpf):
    def run(key, lr, val, loss):
        return {"variant": key, "lr": lr, "val_top1": val, "train_loss": loss}

    tie = kpf.GRID_TIE
    runs = [run("avg", 0.01, 0.90, 0.05), run("avg", 0.03, 0.88, 0.01), run("avg", 0.1, None, None),
            run("bilinear", 0.01, 0.70, 1.1), run("bilinear", 0.03, 0.80 - tie, 0.6), run("bilinear", 0.1, 0.80, 0.7),
            run("compact_bilinear", 0.01, 0.75, 0.9), run("compact_bilinear", 0.1, 0.75 - 2 * tie, 0.2)]
    assert kpf.choose_learning_rates(runs) == {"avg": 0.01, "bilinear": 0.03, "compact_bilinear": 0.01}
    assert kpf.choose_learning_rates([run("avg", 0.1, None, None)]) == {}  # a diverged run scores nothing


def test_the_final_training_loss_is_the_mean_of_the_last_100_steps(kpf):
    history = [{"kind": "train", "step": step, "loss": float(step)} for step in range(20, 801, 20)]
    history.append({"kind": "eval", "step": 800, "top1": 0.5})
    assert kpf.final_train_loss(history, 800) == pytest.approx(np.mean([720, 740, 760, 780, 800]))
    assert np.isnan(kpf.final_train_loss([], 800))


def toy_runs(kpf, seeds, offset=0.0):
    return [{"variant": k, "seed": s, "top1": 0.6 + 0.05 * i + 0.01 * s + offset}
            for i, k in enumerate(kpf.kpc.FINETUNE_VARIANTS) for s in seeds]


def third_design_json(kpf, seeds):
    top1 = {k: [0.9 - 0.05 * i] * len(seeds) for i, k in enumerate(kpf.kpc.FINETUNE_VARIANTS)}
    longer = {k: [v + 0.1 for v in values] for k, values in top1.items()}
    return {"steps": 800, "top1": top1, "runs": [], "plateau": {"steps": 1600, "top1": longer}}


def test_the_third_design_is_kept_once_and_quoted_in_every_claim(kpf):
    sys.path.insert(0, STUDIES)
    from claims_table import validate_claims

    seeds = [0, 1, 2]
    stored = third_design_json(kpf, seeds)
    third = kpf.third_design(stored)
    assert third["top1"] == stored["top1"] and third["plateau"]["steps"] == 1600
    assert kpf.third_design({"lr_0.01": third, "top1": {}, "learning_rates": {"avg": 0.1}}) is third
    assert kpf.third_design({"top1": stored["top1"], "learning_rates": {"avg": 0.1}}) is None  # a fourth-design JSON
    top1 = kpf.per_variant(toy_runs(kpf, seeds), seeds)
    assert top1["avg"] == pytest.approx([0.6, 0.61, 0.62])
    earlier = kpf.earlier_designs({"lr_0.01": third})
    rates = {k: 0.1 for k in kpf.kpc.FINETUNE_VARIANTS}
    claims = validate_claims("toy", kpf.claims(top1, 800, None, earlier, rates))
    assert [c["claim"] for c in claims] == [f"(fine-tuned) {c[0]}" for c in kpf.kpc.POOLING_CLAIMS]
    kp_vs_avg = claims[0]
    assert kp_vs_avg["reproduced"] == "yes"  # KP4 learned is 0.20 above avg on every seed
    assert "800 steps (cosine, lr KP4 learned 0.1 / avg 0.1)" in kp_vs_avg["ours"]
    assert kp_vs_avg["ours"].endswith("lr 0.01 for every variant (third design), 800 steps: -0.200; "
                                      "its 1600-step check: -0.200")
    text = kpf.baseline(top1, 800, None, earlier, rates, grid=(0.01, 0.03, 0.1))
    assert "learning rates (lr grid): avg 0.1 / BP 0.1" in text
    assert "KP p=4 learned 0.1 (avg / BP / CBP / KP p=4 fixed / KP p=4 learned at the grid's largest value" in text
    assert "grid's largest" not in kpf.baseline(top1, 800, None, earlier, rates, grid=(0.01, 0.03, 0.1, 0.3))
    assert text.endswith("its 1600-step check: avg 1.000 +- 0.000 (n=3)")


def test_baseline_says_which_variants_twice_the_steps_moves(kpf):
    top1 = {"avg": [0.90, 0.91, 0.92], "bilinear": [0.80, 0.81, 0.82]}
    plateau = {"steps": 1600, "top1": {"avg": [0.91, 0.92, 0.93], "bilinear": [0.85, 0.86, 0.87]}}
    text = kpf.baseline(top1, 800, plateau)
    assert "over 1600 steps gives 0.920" in text
    assert "avg +0.010, bilinear +0.050 (1/2 within the declared 0.02)" in text
    assert "chance 0.05" in kpf.baseline(top1, 800, None)


def test_a_claim_names_the_variants_that_twice_the_steps_still_move(kpf):
    seeds = [0, 1, 2]
    top1 = kpf.per_variant(toy_runs(kpf, seeds), seeds)  # CBP 0.05 above BP on every seed: "no"
    longer = kpf.per_variant(toy_runs(kpf, seeds), seeds)
    longer["compact_bilinear"] = [v + 0.05 for v in longer["compact_bilinear"]]
    plateau = {"steps": 1600, "top1": longer}
    cbp_vs_bp = kpf.claims(top1, 800, plateau)[2]
    assert cbp_vs_bp["claim"] == "(fine-tuned) Compact bilinear pooling matches full bilinear pooling"
    assert cbp_vs_bp["reproduced"] == "no"
    assert "plateau check, 1600 steps (cosine): paired diff +0.100" in cbp_vs_bp["ours"]
    assert cbp_vs_bp["why"].endswith("not at a plateau after 800 steps: twice the steps move CBP +0.050")
    assert "not at a plateau" not in kpf.claims(top1, 800)[2]["why"]
    longer["kp4_learned"] = [v + 0.05 for v in longer["kp4_learned"]]
    kp_vs_avg = kpf.claims(top1, 800, plateau)[0]  # a "yes" carries the caveat too
    assert kp_vs_avg["reproduced"] == "yes"
    assert kp_vs_avg["why"] == "not at a plateau after 800 steps: twice the steps move KP4 learned +0.050"


@pytest.mark.parametrize("args, message", [
    (["--seeds=0,a"], "--seeds takes non-negative integers"),
    (["--lr_grid", "--plateau"], "--lr_grid, --plateau and --replot are separate invocations"),
])
def test_a_bad_command_line_is_one_usage_error(args, message, tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, os.path.join(STUDIES, "kernel_pooling_finetune.py"), *args,
                           f"--output_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing was run or written
