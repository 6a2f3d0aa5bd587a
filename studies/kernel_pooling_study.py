"""CPU-scale study of seed 000 ch.3 (Table 3.2): average vs bilinear vs compact bilinear vs kernel
pooling on the same backbone, and a fair control of the demo's "stage 2 gain".

Design (fixed before the full run; any later change goes to the JSON's "design_changes")
========================================================================================

Part A -- poolings on one backbone (Table 3.2's comparison)
  Data: the embedded synthetic fine-grained set as it is (`finegrain_tf.data.synthetic.generate`,
    no harder variant): 20 classes in 4 super-classes (shape family; classes inside a family differ
    by shape detail, stripe frequency and the hue of a central part), 48 x 48 px, 60 train and 30
    test images per class (balanced), rendering seed = the study seed.
  Backbone: the product's `small_cnn` (256 channels, a 3 x 3 map at 48 px), pre-trained per seed by
    `finegrain-train`'s loop on configs/coarse_pretrain.yaml (softmax over the 4 shape families of an
    independent rendering, synthetic seed 100 + seed, 400 steps of 48, Adam 1e-3): a stand-in for the
    seed's ImageNet pre-training that never sees a fine label. At 48 px instead of that config's 32.
  Protocol: the backbone is frozen; its feature maps of the train / test images (the loop's
    evaluation view: `preprocess_eval`) are computed once, and every variant trains only its pooling
    (learned coefficients) and a linear classifier on them: `models.heads.make_pooling` (the
    builder `build_classifier` uses) -> Dense logits. Frozen rather than end-to-end because 9
    variants x 3 seeds of end-to-end fine-tuning do not fit 12 CPU minutes; this is the seed's
    "logistic regression on pooled features" stage carried to convergence, not its fine-tuning.
  Variants (the seed's post-processing, signed sqrt + L2, is part of every product pooling except avg):
    avg                   global average pooling (the ResNet row), 256-d
    bilinear              full bilinear (BP), 256^2 = 65536-d
    compact_bilinear      Tensor Sketch (CBP) with d = 1 + 256 + 3 * 512 = 1793, the output size of
                          KP p = 4 ("same feature dimension as our kernel pooling", §3.3.1)
    kp{2,3,4}_{fixed,learned}  KernelPooling, order p, d_i = 512 per order, gamma = 1 / mean <x, y>
                          of the train feature maps (§3.3.2, `KernelPooling.adapt`); "fixed" = the RBF
                          coefficients of eq 3.11, "learned" = the same start, trained (§3.2.3)
  Training budget, identical for every variant: Adam lr 2e-3 (constant), batch 64, 25 epochs over
    the 1200 train maps, same batch order (keras seed = study seed), hash seed = study seed. Metric:
    test top-1 after the last epoch (600 balanced test images, chance 0.05); the test top-1 after
    every epoch is recorded as the plateau curve and never used to pick anything. Plateau statistic:
    mean of the last 5 epochs minus mean of the 5 before.

Part B -- the demo's claim with a fair control
  The demo (finegrain_tf/demo.py) trains stage 1 (configs/demo.yaml: small CNN + average pooling,
  softmax, 400 steps of 64, long-tailed train split with imbalance factor 10) and stage 2
  (configs/demo_kernel_finetune.yaml on top: kernel pooling p = 3, d = 1024, learned coefficients,
  gamma estimated, logistic-regression classifier init, class-balanced softmax beta 0.999, SGD lr
  0.01, clip 1.0, 150 steps) and reports 0.675 -> 0.855 top-1. The control runs, per seed, the same
  stage 1 and then stage 2 twice from the same stage-1 backbone: the demo's recipe as is, and the
  identical recipe with `model.pooling=avg` (same steps, learning rate, init, loss and data). Both
  through `finegrain-train`'s loop with the demo's configs; overrides: image size 48 (64 in the demo,
  for the CPU budget), `train.plots=false`, and the seed (data.synthetic.seed, data.seed,
  train.seed). Metric: the loop's test top-1 (400 balanced test images) plus balanced / head / tail;
  the training-loss curve (logged every 20 steps) shows how far each stage-2 run got.

Part C -- the poolings fine-tuned end to end: since its third design a study of its own,
  studies/kernel_pooling_finetune.py (same data, backbones and claims; its docstring holds the
  design and the earlier constant-lr design whose results it keeps).

Part B2 -- the demo's control at three times the stage-2 budget (added after the first full run)
  Part B's stage-2 arms run 150 steps (the demo's cosine schedule); B2 runs both arms again from the
  same stage-1 backbone with train.steps = 450 (the cosine schedule stretched over 450 steps), so
  neither arm is cut short; the kernel-vs-avg claim is judged again at 450 steps (separate row).

Seeds: 0, 1, 2; results as mean +- sample std (n = 3). Verdicts, decided before the run:
  "A > B" (paired over seeds): yes if the mean paired difference is > 0 and a one-sided paired t-test
  gives p < 0.05; partly if the mean difference is > 0 but not significant; no otherwise.
  "A ~= B": yes if |mean paired difference| <= 0.02; partly if larger but not significant (two-sided
  paired t-test, p >= 0.05); no otherwise.
  "A >= B" (learned vs fixed coefficients): yes if "A > B" is yes; no if A is significantly smaller
  (two-sided paired t-test, p < 0.05); partly otherwise.

Budget (the JSON records wall and CPU time): at most 30 minutes on an idle 2-core machine for
Parts A, B and B2 together.

    TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS=2 python studies/kernel_pooling_study.py
    python studies/kernel_pooling_study.py --scale smoke --output_dir /tmp/kp   # seconds, toy sizes
    python studies/kernel_pooling_study.py --replot                           # redraw the PNG
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # sklearn's logistic init on 2 shared cores

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plotting  # noqa: E402
from kernel_pooling_common import (NUM_CLASSES, NUM_SUPERCLASSES, POOLING_CLAIMS, SCALES,  # noqa: E402
                                   SEED_TABLE_3_2, VARIANTS, Scale, Variant, cpu_seconds, diff_text, kp4_dim,
                                   mean_std, pretrain_backbone, train_run, verdict_greater)

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "studies/results", "where kernel_pooling_study.json / .png go")
flags.DEFINE_string("run_dir", "runs/studies/kernel_pooling", "training runs and per-seed partial results")
flags.DEFINE_list("seeds", ["0", "1", "2"], "study seeds (data rendering, pre-training, hashes, batch order)")
flags.DEFINE_enum("scale", "full", ["full", "smoke"], "full: the design above; smoke: toy sizes (seconds)")
flags.DEFINE_list("parts", ["pooling", "demo", "demo_long"],
                  "which parts to run: pooling (A), demo (B), demo_long (B2)")
flags.DEFINE_bool("fresh", False, "ignore the partial results and runs of an earlier invocation")
flags.DEFINE_bool("replot", False, "only redraw the PNG from the JSON")

NAME = "kernel_pooling_study"

# The demo's printed figures (README, 64 px): stage 1, stage 2 (kernel pooling), the earlier avg control.
DEMO_FIGURES = {"stage1": 0.675, "stage2_kernel": 0.855, "stage2_avg_earlier_control": 0.828}


LEARNING_RATE, BATCH_SIZE, PLATEAU_EPOCHS = 2e-3, 64, 5
PARTS = ("pooling", "demo", "demo_long")  # A, B, B2


# --------------------------------------------------------------------------------------------------
# Small helpers


def plateau_change(curve, k: int = PLATEAU_EPOCHS) -> float:
    """Mean of the last k points minus the mean of the k before (0 change = a plateau)."""
    curve = np.asarray(curve, np.float64)
    if curve.size < 2 * k:
        k = max(curve.size // 2, 1)
    return float(curve[-k:].mean() - curve[-2 * k:-k].mean()) if curve.size >= 2 else 0.0


def _load_partial(path: str) -> dict:
    if FLAGS.fresh or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _save_partial(path: str, partial: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(partial, f)
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------------------------------
# Part A: poolings on one frozen backbone


def feature_maps(weights: str, images: np.ndarray, image_size: int) -> np.ndarray:
    """Frozen backbone feature maps [N, h, w, c] of uint8 images, in the loop's evaluation view."""
    import tensorflow as tf

    from finegrain_tf.data.preprocessing import preprocess_eval
    from finegrain_tf.models.backbones import get_backbone

    backbone = get_backbone("small_cnn", image_size, weights)
    dataset = tf.data.Dataset.from_tensor_slices(images).map(
        lambda im: preprocess_eval(im, image_size)).batch(200)
    return np.concatenate([backbone.predict_on_batch(batch) for batch in dataset]).astype(np.float32)


def train_head(variant: Variant, maps: np.ndarray, labels: np.ndarray, test_maps: np.ndarray,
               test_labels: np.ndarray, seed: int, epochs: int, kernel_dims: int) -> dict:
    """Pooling (`make_pooling`) + Dense logits on frozen feature maps, trained with the shared budget.

    Returns the final test top-1, the per-epoch test / train top-1 curves and, for kernel pooling,
    gamma and the coefficients after training.
    """
    import keras

    from finegrain_tf.layers import KernelPooling
    from finegrain_tf.models.heads import make_pooling

    channels = maps.shape[-1]
    kernel = None
    if variant.pooling == "kernel":
        kernel = {"order": variant.order, "dims": kernel_dims, "coefficients": variant.coefficients,
                  "gamma": None, "normalize": True}
    keras.utils.set_random_seed(seed)  # the same classifier init draws and batch order for every variant
    pool = make_pooling(variant.pooling, compact_dim=kp4_dim(channels, kernel_dims),
                        kernel_pooling=kernel, pooling_seed=seed)
    inputs = keras.Input(maps.shape[1:], name="feature_map")
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(pool(inputs))
    model = keras.Model(inputs, logits)
    result = {"dim": int(pool.compute_output_shape((None,) + maps.shape[1:])[-1])}
    if isinstance(pool, KernelPooling):
        result["gamma"] = float(pool.adapt(maps))  # also re-initialises learned coefficients (eq 3.11)
        result["alpha_start"] = pool.coefficient_values().tolist()
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    keras.utils.set_random_seed(seed)
    history = model.fit(maps, labels, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0,
                        validation_data=(test_maps, test_labels))
    result["test_curve"] = [float(v) for v in history.history["val_accuracy"]]
    result["train_curve"] = [float(v) for v in history.history["accuracy"]]
    result["top1"] = result["test_curve"][-1]
    result["plateau_change"] = plateau_change(result["test_curve"])
    if isinstance(pool, KernelPooling):
        result["alpha_end"] = pool.coefficient_values().tolist()
    keras.backend.clear_session()
    return result


def run_pooling_seed(seed: int, scale: Scale, work: str) -> dict:
    from finegrain_tf.data import synthetic

    started, cpu = time.time(), cpu_seconds()
    weights, pretrain_report = pretrain_backbone(seed, scale, work)
    data = synthetic.generate(NUM_CLASSES, NUM_SUPERCLASSES, train_per_class=scale.train_per_class,
                              val_per_class=0, test_per_class=scale.test_per_class,
                              image_size=scale.image_size, seed=seed)
    maps = feature_maps(weights, data.images["train"], scale.image_size)
    test_maps = feature_maps(weights, data.images["test"], scale.image_size)
    out = {"pretrain_top1": float(pretrain_report["top1"]), "feature_map_shape": list(maps.shape[1:]),
           "num_train": int(len(maps)), "num_test": int(len(test_maps)), "variants": {}}
    for variant in VARIANTS:
        t = time.time()
        res = train_head(variant, maps, data.labels["train"], test_maps, data.labels["test"], seed,
                         scale.epochs, scale.kernel_dims)
        res["seconds"] = time.time() - t
        out["variants"][variant.key] = res
        print(f"  seed {seed} {variant.key:<18} top-1 {res['top1']:.3f}  (plateau change "
              f"{res['plateau_change']:+.3f}, {res['seconds']:.0f}s)", flush=True)
    out["seconds"], out["cpu_seconds"] = time.time() - started, cpu_seconds() - cpu
    return out


# --------------------------------------------------------------------------------------------------
# Part B: the demo's stage 2 with kernel pooling vs the identical recipe with average pooling


def _loss_curve(model_dir: str) -> tuple[list, list]:
    from finegrain_tf.train.run_dir import RunDir

    rows = [r for r in RunDir(model_dir).load_history() if r.get("kind", "train") == "train" and "loss" in r]
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def demo_stage1(seed: int, scale: Scale, work: str) -> tuple[list, str, dict, str]:
    """The demo's stage 1 at the study's size (trained once, reused by Parts B and B2): the overrides
    both stages share, the run folder, its eval report and its backbone weights."""
    from finegrain_tf.train.run_dir import RunDir

    size = scale.image_size
    common = [f"data.image_size={size}", f"data.synthetic.image_size={size}", f"data.synthetic.seed={seed}",
              f"data.seed={seed}", f"train.seed={seed}", "train.plots=false", *scale.demo_data]
    stage1_dir = os.path.join(work, f"demo_seed{seed}", "stage1")
    steps1 = [f"train.steps={scale.demo_steps[0]}"] if scale.demo_steps else []
    report = train_run(["configs/demo.yaml"], common + steps1 + [f"train.model_dir={stage1_dir}"])
    return common, stage1_dir, report, RunDir(stage1_dir).backbone_weights_path


def run_demo_seed(seed: int, scale: Scale, work: str) -> dict:
    started, cpu = time.time(), cpu_seconds()
    common, stage1_dir, stage1, weights = demo_stage1(seed, scale, work)
    steps2 = [f"train.steps={scale.demo_steps[1]}"] if scale.demo_steps else []
    reports = {"stage1": stage1}
    curves = {"stage1": _loss_curve(stage1_dir)}
    for arm, pooling in (("stage2_kernel", "kernel"), ("stage2_avg", "avg")):
        model_dir = os.path.join(work, f"demo_seed{seed}", arm)
        reports[arm] = train_run(["configs/demo.yaml", "configs/demo_kernel_finetune.yaml"],
                              common + steps2 + [f"model.pooling={pooling}", f"model.weights={weights}",
                                                 f"train.model_dir={model_dir}"])
        curves[arm] = _loss_curve(model_dir)
    keys = ("top1", "top5", "balanced_accuracy", "head_accuracy", "tail_accuracy")
    out = {arm: {k: float(r[k]) for k in keys if isinstance(r.get(k), (int, float))}
           for arm, r in reports.items()}
    out["loss_curves"] = {arm: {"step": s, "loss": v} for arm, (s, v) in curves.items()}
    out["seconds"], out["cpu_seconds"] = time.time() - started, cpu_seconds() - cpu
    print(f"  seed {seed} demo: stage 1 {out['stage1']['top1']:.3f}, stage 2 kernel "
          f"{out['stage2_kernel']['top1']:.3f}, stage 2 avg {out['stage2_avg']['top1']:.3f} "
          f"({out['seconds']:.0f}s)", flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# Part B2: the demo's control at 3x the stage-2 steps

def run_demo_long_seed(seed: int, scale: Scale, work: str) -> dict:
    """Part B2: both stage-2 arms at scale.demo_long_steps from Part B's stage-1 backbone."""
    started, cpu = time.time(), cpu_seconds()
    common, _, stage1, weights = demo_stage1(seed, scale, work)
    out = {"stage1": {"top1": float(stage1["top1"])}, "steps": scale.demo_long_steps}
    for arm, pooling in (("stage2_kernel", "kernel"), ("stage2_avg", "avg")):
        model_dir = os.path.join(work, f"demo_long_seed{seed}", arm)
        report = train_run(["configs/demo.yaml", "configs/demo_kernel_finetune.yaml"],
                        common + [f"train.steps={scale.demo_long_steps}", f"model.pooling={pooling}",
                                  f"model.weights={weights}", f"train.model_dir={model_dir}"])
        out[arm] = {k: float(report[k]) for k in ("top1", "balanced_accuracy", "head_accuracy", "tail_accuracy")
                    if isinstance(report.get(k), (int, float))}
    out["seconds"], out["cpu_seconds"] = time.time() - started, cpu_seconds() - cpu
    print(f"  seed {seed} demo at {scale.demo_long_steps} stage-2 steps: kernel {out['stage2_kernel']['top1']:.3f}, "
          f"avg {out['stage2_avg']['top1']:.3f} ({out['seconds']:.0f}s)", flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# Summary, claims, plot


def summarize_pooling(per_seed: dict) -> dict:
    seeds = sorted(per_seed, key=int)
    summary = {}
    for variant in VARIANTS:
        top1 = [per_seed[s]["variants"][variant.key]["top1"] for s in seeds]
        change = [per_seed[s]["variants"][variant.key]["plateau_change"] for s in seeds]
        summary[variant.key] = {"label": variant.label, "top1_per_seed": top1, "top1": mean_std(top1),
                                "top1_mean": float(np.mean(top1)),
                                "top1_std": float(np.std(top1, ddof=1)) if len(top1) > 1 else 0.0,
                                "plateau_change_mean": float(np.mean(change)),
                                "dim": per_seed[seeds[0]]["variants"][variant.key]["dim"]}
    return summary


def pooling_claims(per_seed: dict) -> list:
    seeds = sorted(per_seed, key=int)

    def top1(key):
        return [per_seed[s]["variants"][key]["top1"] for s in seeds]

    frozen = ("our backbone is frozen (a coarse-pretrained small CNN, the pooling and classifier "
              "trained), the seed fine-tunes VGG-16/ResNet-50 end to end at 448 px")
    gamma = np.mean([per_seed[s]["variants"]["kp4_fixed"]["gamma"] for s in seeds])
    alpha = np.mean([per_seed[s]["variants"]["kp4_fixed"]["alpha_start"] for s in seeds], axis=0)
    small_orders = (f", and gamma = 1/mean<x, y> = {gamma:.3f} gives RBF coefficients alpha = "
                    f"[{', '.join(f'{v:.3f}' for v in alpha)}], so orders >= 3 barely enter the feature")
    claims = []
    for claim, seed_figure, (a, label_a), (b, label_b), rule in POOLING_CLAIMS:
        verdict, stats = rule(top1(a), top1(b))
        ours = f"{label_a} {mean_std(top1(a))} vs {label_b} {mean_std(top1(b))}; {diff_text(stats)}"
        outcome = {"partly": "not significant", "no": "the other way or no gain"}.get(verdict, "")
        why = "" if verdict == "yes" else (
            f"the paired difference is {stats['mean_diff']:+.3f} over {stats['n']} seeds ({outcome}); {frozen}"
            + (small_orders if a.startswith("kp") else "")
            + (f"; our CBP has d = {per_seed[seeds[0]]['variants']['compact_bilinear']['dim']} where the "
               f"seed says CBP matches BP from d >= 8192 (§3.3.1)" if b == "bilinear" else ""))
        claims.append({"claim": claim, "seed_figure": seed_figure, "ours": ours, "reproduced": verdict,
                       "why": why, "stats": stats})
    return claims


def demo_claims(per_seed: dict, image_size: int, stage2_steps: int | None = None) -> list:
    """Part B's claim; with `stage2_steps`, Part B2's (the same claim at that many stage-2 steps)."""
    seeds = sorted(per_seed, key=int)
    kernel = [per_seed[s]["stage2_kernel"]["top1"] for s in seeds]
    avg = [per_seed[s]["stage2_avg"]["top1"] for s in seeds]
    stage1 = [per_seed[s]["stage1"]["top1"] for s in seeds]
    verdict, stats = verdict_greater(kernel, avg)
    gain, from_training = np.mean(kernel) - np.mean(stage1), np.mean(avg) - np.mean(stage1)
    ours = (f"stage 1 {mean_std(stage1)}; stage 2 kernel {mean_std(kernel)} vs identical recipe with avg "
            f"pooling {mean_std(avg)}; {diff_text(stats)} ({image_size} px). Of the stage-2 gain "
            f"{gain:+.3f}, {from_training:+.3f} also comes with average pooling (the extra fine-tuning) "
            f"and {gain - from_training:+.3f} is kernel pooling's")
    why = "" if verdict == "yes" else (
        f"with the same steps, learning rate, init, loss and data the average-pooling head reaches "
        f"{np.mean(avg):.3f} vs {np.mean(kernel):.3f} for kernel pooling, so the stage-2 gain over stage 1 "
        f"comes from the extra fine-tuning, not from kernel pooling")
    at = f", both arms at {stage2_steps} stage-2 steps" if stage2_steps else ""
    return [{"claim": "Kernel pooling, not only the extra fine-tuning, gives the demo's stage-2 gain "
                      f"(fair control: the identical stage-2 recipe with average pooling{at})",
             "seed_figure": "demo/README (64 px): stage 1 0.675 -> stage 2 0.855; an earlier avg control "
                            "0.828; seed Table 3.2: KP > average pooling",
             "ours": ours, "reproduced": verdict, "why": why, "stats": stats}]


def plot(results: dict, path: str) -> None:
    with plotting.style():
        fig, axes = plotting.figure(2, 2)
        pooling, demo = results.get("pooling"), results.get("demo")
        demo_long = results.get("demo_long")
        if pooling:
            seeds = sorted(pooling["per_seed"], key=int)
            labels = [v.label for v in VARIANTS]
            values = [[pooling["per_seed"][s]["variants"][v.key]["top1"] for s in seeds] for v in VARIANTS]
            plotting.bars(axes[0], labels, values)
            low = min(min(v) for v in values)
            axes[0].set_ylim(max(0.0, low - 0.1), min(1.0, max(max(v) for v in values) + 0.05))
            axes[0].set_ylabel("test top-1")
            axes[0].set_title(f"A: poolings on a frozen backbone (n={len(seeds)})")
            for i, key in enumerate(("avg", "bilinear", "compact_bilinear", "kp2_learned", "kp4_fixed",
                                     "kp4_learned")):
                curves = [pooling["per_seed"][s]["variants"][key]["test_curve"] for s in seeds]
                epochs = np.arange(1, len(curves[0]) + 1)
                plotting.band(axes[1], epochs, curves, label=next(v.label for v in VARIANTS if v.key == key),
                              color=plotting.COLORS[i])
            axes[1].set_xlabel("epoch")
            axes[1].set_ylabel("test top-1")
            axes[1].set_title("A: test top-1 per epoch (plateau check)")
            axes[1].legend(loc="lower right")
        if demo:
            seeds = sorted(demo["per_seed"], key=int)
            arms = ("stage1", "stage2_avg", "stage2_kernel")
            names = ("stage 1 (avg)", "stage 2 avg", "stage 2 kernel")
            plotting.bars(axes[2], names, [[demo["per_seed"][s][a]["top1"] for s in seeds] for a in arms],
                          label="stage 2 at the demo's 150 steps")
            if demo_long:
                long_seeds = sorted(demo_long["per_seed"], key=int)
                steps = demo_long["per_seed"][long_seeds[0]]["steps"]
                for x, arm in ((1, "stage2_avg"), (2, "stage2_kernel")):
                    values = [demo_long["per_seed"][s][arm]["top1"] for s in long_seeds]
                    axes[2].errorbar([x + 0.3], [np.mean(values)], yerr=[np.std(values, ddof=1)], fmt="s",
                                     color=plotting.COLORS[2],
                                     label=f"stage 2 at {steps} steps (B2)" if x == 1 else None)
            plotting.seed_marker(axes[2], [0, 1, 2], [DEMO_FIGURES["stage1"],
                                                      DEMO_FIGURES["stage2_avg_earlier_control"],
                                                      DEMO_FIGURES["stage2_kernel"]],
                                 label="demo README (64 px)")
            axes[2].set_ylabel("test top-1")
            axes[2].set_ylim(0.0, 1.0)
            axes[2].set_title(f"B: demo stage 2, kernel vs avg control (n={len(seeds)})")
            axes[2].legend(loc="upper left")
            for i, arm in enumerate(("stage2_avg", "stage2_kernel")):
                curves = [demo["per_seed"][s]["loss_curves"][arm]["loss"] for s in seeds]
                steps = demo["per_seed"][seeds[0]]["loss_curves"][arm]["step"]
                if curves and all(len(c) == len(steps) for c in curves) and steps:
                    plotting.band(axes[3], steps, curves, label=names[1 + i], color=plotting.COLORS[i])
            axes[3].set_xlabel("stage-2 step")
            axes[3].set_ylabel("training loss (CB softmax)")
            axes[3].set_title("B: stage-2 training loss")
            axes[3].legend(loc="upper right")
        plotting.save(fig, path)


def main(argv):
    del argv
    json_path = os.path.join(FLAGS.output_dir, f"{NAME}.json")
    png_path = os.path.join(FLAGS.output_dir, f"{NAME}.png")
    if FLAGS.replot:
        with open(json_path) as f:
            plot(json.load(f), png_path)
        print(f"wrote {png_path}")
        return
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    scale = SCALES[FLAGS.scale]
    seeds = [int(s) for s in FLAGS.seeds]
    work = os.path.join(FLAGS.run_dir, FLAGS.scale)
    if FLAGS.fresh and os.path.exists(work):
        shutil.rmtree(work)
    partial_path = os.path.join(work, "partial.json")
    partial = _load_partial(partial_path)
    started, cpu = time.time(), cpu_seconds()
    runners = {"pooling": run_pooling_seed, "demo": run_demo_seed, "demo_long": run_demo_long_seed}
    for part in FLAGS.parts:
        if part not in runners:
            raise app.UsageError(f"--parts: unknown part {part!r}; choose from {sorted(runners)}")
        for seed in seeds:
            if partial.get(part, {}).get(str(seed)):
                continue
            print(f"[{time.time() - started:6.0f}s] {part} seed {seed}", flush=True)
            partial.setdefault(part, {})[str(seed)] = runners[part](seed, scale, work)
            _save_partial(partial_path, partial)
    results = {
        "study": NAME, "scale": FLAGS.scale, "seeds": seeds,
        "design": {"data": f"synthetic, {NUM_CLASSES} classes / {NUM_SUPERCLASSES} super-classes, "
                           f"{scale.image_size} px, {scale.train_per_class} train + {scale.test_per_class} "
                           f"test per class (part A); the demo's data at {scale.image_size} px (part B)",
                   "backbone": "small_cnn pre-trained on the 4 shape families (configs/coarse_pretrain.yaml), "
                               "frozen in part A (fine-tuned end to end: kernel_pooling_finetune.json)",
                   "head_training": f"Adam lr {LEARNING_RATE}, batch {BATCH_SIZE}, {scale.epochs} epochs, "
                                    f"kernel d_i = {scale.kernel_dims}",
                   "metric": "test top-1 after the last epoch / at the end of the demo's recipe",
                   "demo_control": "demo.yaml stage 1, then demo_kernel_finetune.yaml with "
                                   "model.pooling=kernel (as is) vs model.pooling=avg, same stage-1 backbone"},
        "design_changes": [
            "after the full run, wording only: part B's claim text changed from \"the demo's stage-2 gain "
            "comes from kernel pooling\" to \"kernel pooling, not only the extra fine-tuning, gives the "
            "demo's stage-2 gain\" (same rule: kernel > avg paired one-sided t-test; same numbers), and "
            "'ours' splits the stage-2 gain into the part average pooling also gets and kernel pooling's, "
            "because only part of the gain is kernel pooling's",
            "after the first full run (parts A and B unchanged): Part C (the poolings fine-tuned end to end "
            "from Part A's backbones, continued to 200/400/600 steps) and Part B2 (the demo's control at "
            "450 stage-2 steps) added, because Part A froze the backbone and Part B's stage 2 stopped at the "
            "demo's 150 steps; their claims are separate rows, Parts A and B's rows are unchanged",
            "Part C's stages extended from 600 to 1200 steps (every variant and seed) after seed 0's first four "
            "variants showed BP/CBP/KP still gaining 0.08-0.17 over their last 200 steps; decided before any "
            "claim of Part C was computed; data, recipe and metric unchanged",
            "Part C moved out to its own study, studies/kernel_pooling_finetune.py (with the demo's cosine schedule "
            "over 800 steps, two one-thread workers), so that each study fits the 30-minute budget; its constant-lr "
            "results are kept in kernel_pooling_finetune.json's \"constant_lr\" block; Parts A, B and B2 unchanged"],
        "seed_table_3_2": SEED_TABLE_3_2, "demo_figures": DEMO_FIGURES, "claims": [],
        "wall_seconds_this_invocation": time.time() - started,
        "cpu_seconds_this_invocation": cpu_seconds() - cpu,
    }
    for part in PARTS:
        per_seed = {s: v for s, v in partial.get(part, {}).items() if int(s) in seeds}
        if not per_seed:
            continue
        entry = {"per_seed": per_seed,
                 "wall_seconds": float(sum(v["seconds"] for v in per_seed.values())),
                 "cpu_seconds": float(sum(v["cpu_seconds"] for v in per_seed.values()))}
        if part == "pooling":
            entry["summary"] = summarize_pooling(per_seed)
            entry["baseline"] = {"variant": "avg", "top1": entry["summary"]["avg"]["top1"],
                                 "plateau_change_last5_vs_previous5": entry["summary"]["avg"]["plateau_change_mean"],
                                 "chance": 1.0 / NUM_CLASSES}
            entry["kernel_coefficients"] = {  # gamma of §3.3.2 and alpha before / after training
                v.key: {name: np.mean([per_seed[s]["variants"][v.key][name] for s in per_seed], axis=0).tolist()
                        for name in ("gamma", "alpha_start", "alpha_end")}
                for v in VARIANTS if v.pooling == "kernel"}
            results["claims"] += pooling_claims(per_seed)
        else:
            entry["summary"] = {arm: {k: mean_std([per_seed[s][arm][k] for s in per_seed])
                                      for k in per_seed[next(iter(per_seed))][arm]}
                                for arm in ("stage1", "stage2_kernel", "stage2_avg")}
            results["claims"] += demo_claims(per_seed, scale.image_size,
                                             scale.demo_long_steps if part == "demo_long" else None)
        results[part] = entry
    results["wall_seconds_all_parts"] = float(sum(results[p]["wall_seconds"] for p in PARTS if p in results))
    results["cpu_seconds_all_parts"] = float(sum(results[p]["cpu_seconds"] for p in PARTS if p in results))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    plot(results, png_path)
    for claim in results["claims"]:
        print(f"- {claim['claim']}: {claim['reproduced']}\n    ours: {claim['ours']}")
    print(f"wrote {json_path} and {png_path} ({results['wall_seconds_all_parts']:.0f}s wall, "
          f"{results['cpu_seconds_all_parts']:.0f}s CPU over all parts)")


if __name__ == "__main__":
    app.run(main)
