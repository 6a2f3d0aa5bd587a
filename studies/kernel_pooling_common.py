"""What the two kernel-pooling studies share (seed 000 ch.3, Table 3.2): the study sizes, the pooling
variants, the per-seed backbone pre-training, the fine-tuning overrides, the paired verdict rules and
the five Table 3.2 claims.

kernel_pooling_study.py compares the poolings on a frozen backbone and controls the demo's claim;
kernel_pooling_finetune.py fine-tunes them end to end. Their docstrings hold the designs.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # the studies' shared plotting module, however this one was imported
import plotting  # noqa: E402

# Seed 000 Table 3.2 (top-1 %, 448 px): (original network, BP, CBP, KP with learned coefficients).
SEED_TABLE_3_2 = {
    "CUB-200": {"VGG-16": (73.1, 84.1, 84.3, 86.2), "ResNet-50": (78.4, None, 81.6, 84.7)},
    "Stanford Car": {"VGG-16": (79.8, 91.3, 91.2, 92.4), "ResNet-50": (84.7, None, 88.6, 91.1)},
    "Aircraft": {"VGG-16": (74.1, 84.1, 84.1, 86.9), "ResNet-50": (79.2, None, 81.6, 85.7)},
    "Food-101": {"VGG-16": (81.2, 82.4, 82.4, 84.2), "ResNet-50": (82.1, None, 83.2, 85.5)},
}


@dataclasses.dataclass(frozen=True)
class Scale:
    image_size: int
    train_per_class: int
    test_per_class: int
    pretrain_steps: int
    epochs: int
    kernel_dims: int
    demo_steps: tuple  # (stage 1, stage 2); None keeps the demo's configs
    demo_data: tuple  # extra overrides of the demo's data (smoke only)
    demo_long_steps: int = 450  # part B2: stage-2 steps


SCALES = {
    "full": Scale(image_size=48, train_per_class=60, test_per_class=30, pretrain_steps=400, epochs=25,
                  kernel_dims=512, demo_steps=None, demo_data=()),
    "smoke": Scale(image_size=32, train_per_class=6, test_per_class=4, pretrain_steps=4, epochs=2,
                   kernel_dims=16, demo_steps=(4, 3),
                   demo_data=("data.synthetic.train_per_class=10", "data.synthetic.test_per_class=3",
                              "data.synthetic.val_per_class=1", "data.batch_size=16",
                              "model.init_batches=2", "model.kernel_pooling.dims=16",
                              "train.log_every=1"),
                   demo_long_steps=6),
}


NUM_CLASSES, NUM_SUPERCLASSES = 20, 4
SMALL_CNN_CHANNELS = 256  # the product's small_cnn feature map (built inside finegrain-train when fine-tuned)


@dataclasses.dataclass(frozen=True)
class Variant:
    key: str
    label: str
    pooling: str  # a `models.heads.POOLINGS` name
    order: int = 0  # kernel pooling only
    coefficients: str = ""  # "rbf" (fixed) or "learned"


VARIANTS = (
    Variant("avg", "avg", "avg"),
    Variant("bilinear", "BP", "bilinear"),
    Variant("compact_bilinear", "CBP", "compact_bilinear"),
    *(Variant(f"kp{p}_{mode}", f"KP p={p} {mode}", "kernel", p, "rbf" if mode == "fixed" else "learned")
      for p in (2, 3, 4) for mode in ("fixed", "learned")),
)
FINETUNE_VARIANTS = ("avg", "bilinear", "compact_bilinear", "kp4_fixed", "kp4_learned")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def kp4_dim(channels: int, kernel_dims: int) -> int:
    """Output size of kernel pooling p = 4 (1 + c + 3 d): the CBP dimension it is compared at (§3.3.1)."""
    return 1 + channels + 3 * kernel_dims


def paired_stats(a, b) -> dict:
    """Mean and sample std of the paired differences a - b over seeds, with t-test p-values."""
    from scipy import stats

    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = diff.size
    mean = float(diff.mean())
    std = float(diff.std(ddof=1)) if n > 1 else 0.0
    if n < 2:
        p_greater = p_two_sided = float("nan")
    elif std == 0.0:
        p_greater = 0.0 if mean > 0 else 1.0
        p_two_sided = 0.0 if mean != 0 else 1.0
    else:
        t = mean / (std / np.sqrt(n))
        p_greater = float(stats.t.sf(t, n - 1))
        p_two_sided = float(2 * stats.t.sf(abs(t), n - 1))
    return {"mean_diff": mean, "std_diff": std, "n": n, "p_greater": p_greater, "p_two_sided": p_two_sided}


def verdict_greater(a, b) -> tuple[str, dict]:
    """'yes' / 'partly' / 'no' for "a > b" (the docstring's rule) and the paired statistics."""
    s = paired_stats(a, b)
    if s["mean_diff"] > 0 and s["p_greater"] < 0.05:
        return "yes", s
    return ("partly" if s["mean_diff"] > 0 else "no"), s


def verdict_similar(a, b, tolerance: float = 0.02) -> tuple[str, dict]:
    """'yes' / 'partly' / 'no' for "a ~= b" (the docstring's rule) and the paired statistics."""
    s = paired_stats(a, b)
    if abs(s["mean_diff"]) <= tolerance:
        return "yes", s
    return ("partly" if not s["p_two_sided"] < 0.05 else "no"), s


def verdict_at_least(a, b) -> tuple[str, dict]:
    """'yes' / 'partly' / 'no' for "a >= b": yes if a > b holds (`verdict_greater`), no if a is
    significantly smaller (two-sided paired t-test, p < 0.05), partly otherwise."""
    verdict, s = verdict_greater(a, b)
    if verdict == "yes":
        return verdict, s
    return ("no" if s["mean_diff"] < 0 and s["p_two_sided"] < 0.05 else "partly"), s


def mean_std(values) -> str:
    return plotting.mean_std_text(values, digits=3)


def diff_text(stats: dict) -> str:
    return (f"paired diff {stats['mean_diff']:+.3f} +- {stats['std_diff']:.3f} (n={stats['n']}, "
            f"one-sided p={stats['p_greater']:.3f})")


def train_run(configs: list, overrides: list) -> dict:
    """One `finegrain-train` run (skipped when its run dir already has an eval report); its report."""
    from finegrain_tf.train import config, loop
    from finegrain_tf.train.run_dir import RunDir

    cfg = config.build_config([os.path.join(ROOT, c) for c in configs], overrides)
    run_dir = RunDir(cfg.train.model_dir)
    if not run_dir.exists(RunDir.eval_report_path):
        loop.train(cfg)
    return run_dir.load_eval_report()


def pretrain_backbone(seed: int, scale: Scale, work: str) -> tuple[str, dict]:
    """The coarse pre-training (configs/coarse_pretrain.yaml) at the study's size; (weights, report)."""
    from finegrain_tf.train.run_dir import RunDir

    model_dir = os.path.join(work, f"pretrain_seed{seed}")
    size = scale.image_size
    overrides = [f"data.image_size={size}", f"data.synthetic.image_size={size}",
                 f"data.synthetic.seed={100 + seed}", f"data.seed={seed}", f"train.seed={seed}",
                 f"train.steps={scale.pretrain_steps}", "train.plots=false", f"train.model_dir={model_dir}"]
    if scale.pretrain_steps < 20:
        overrides += ["data.synthetic.train_per_class=8", "data.synthetic.test_per_class=2",
                      "data.batch_size=8", "train.log_every=1"]
    report = train_run(["configs/coarse_pretrain.yaml"], overrides)
    return RunDir(model_dir).backbone_weights_path, report


def finetune_overrides(variant: Variant, seed: int, scale: Scale, weights: str) -> list:
    """The fine-tuning study's overrides of the demo's stage-2 recipe (kernel_pooling_finetune lists
    them; the recipe's own cosine schedule is kept)."""
    size = scale.image_size
    overrides = [f"data.image_size={size}", f"data.synthetic.image_size={size}",
                 f"data.synthetic.num_classes={NUM_CLASSES}", f"data.synthetic.num_superclasses={NUM_SUPERCLASSES}",
                 f"data.synthetic.train_per_class={scale.train_per_class}", "data.synthetic.val_per_class=0",
                 f"data.synthetic.test_per_class={scale.test_per_class}", "data.imbalance_factor=1.0",
                 f"data.synthetic.seed={seed}", f"data.seed={seed}", f"train.seed={seed}",
                 "loss.name=softmax", "train.plots=false",
                 f"model.weights={weights}", f"model.pooling={variant.pooling}",
                 f"model.compact_dim={kp4_dim(SMALL_CNN_CHANNELS, scale.kernel_dims)}"]
    if variant.pooling == "kernel":
        overrides += [f"model.kernel_pooling.order={variant.order}", f"model.kernel_pooling.dims={scale.kernel_dims}",
                      f"model.kernel_pooling.coefficients={variant.coefficients}"]
    if scale.pretrain_steps < 20:  # smoke
        overrides += ["data.batch_size=16", "model.init_batches=2", "train.log_every=1"]
    return overrides


# (claim, seed's figure, (variant a, label), (variant b, label), verdict rule) (Table 3.2), judged by
# kernel_pooling_study (frozen backbone) and kernel_pooling_finetune (end to end).
POOLING_CLAIMS = (
    ("Kernel pooling (p=4, learned coefficients) beats global average pooling on fine-grained data",
     "Table 3.2, ResNet-50 rows: KP 84.7/91.1/85.7/85.5 vs 78.4/84.7/79.2/82.1 (+3.4 to +6.5 points)",
     ("kp4_learned", "KP4 learned"), ("avg", "avg"), verdict_greater),
    ("Kernel pooling beats compact bilinear pooling of the same output dimension",
     "Table 3.2: KP vs CBP +1.2 to +4.1 points (e.g. CUB VGG 86.2 vs 84.3, ResNet 84.7 vs 81.6)",
     ("kp4_learned", "KP4 learned"), ("compact_bilinear", "CBP"), verdict_greater),
    ("Compact bilinear pooling matches full bilinear pooling",
     "Table 3.2, VGG-16 rows: CBP 84.3/91.2/84.1/82.4 vs BP 84.1/91.3/84.1/82.4 (within 0.2 points)",
     ("compact_bilinear", "CBP"), ("bilinear", "BP"), verdict_similar),
    ("Second-order (compact bilinear) pooling beats global average pooling",
     "Table 3.2, ResNet-50 rows: CBP 81.6/88.6/81.6/83.2 vs 78.4/84.7/79.2/82.1 (+1.1 to +3.9 points)",
     ("compact_bilinear", "CBP"), ("avg", "avg"), verdict_greater),
    ("Learned kernel coefficients are at least as good as fixed (Gaussian RBF) ones",
     "§3.2.3 (no figure: Table 3.2's KP uses learned coefficients; Table 3.3 is not in the seed text)",
     ("kp4_learned", "KP4 learned"), ("kp4_fixed", "KP4 fixed"), verdict_at_least),
)
