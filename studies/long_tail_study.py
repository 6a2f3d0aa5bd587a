"""CPU-scale study of seed 000 ch.5: long-tailed synthetic data, one training budget, several losses.

The embedded synthetic fine-grained dataset (`finegrain_tf.data.synthetic`, 20 classes in 4
super-classes) is made long-tailed with `make_long_tailed` (n_i = floor(n_max * IF^(-i/(C-1))), IF 50 by
default: 100 -> 2 train images per class); the test split stays balanced. The same small CNN is trained
with the same budget (steps, batch, optimizer, schedule, augmentation, seed) under each loss:

  softmax          plain softmax cross-entropy (zero bias)
  cb_softmax       class-balanced softmax, eq 5.8
  cb_sigmoid       class-balanced sigmoid, eq 5.11, prior bias init b = -log((1-pi)/pi) (§5.4.2)
  cb_focal         class-balanced focal, eq 5.13, prior bias init
  balanced_softmax Balanced Softmax (Ren et al. 2020), beyond the seed
  ldam_drw         LDAM + deferred re-weighting (Cao et al. 2019) on a cosine classifier, beyond the seed

Weight decay skips the biases and batch-norm parameters (`decay_variables`, §5.4.2). Reported: overall
top-1, balanced (mean per-class) accuracy, head / tail accuracy (head = classes with >= `head` train
images; the seed's 100 is scaled to this dataset's size) and many / medium / few shot, averaged over
seeds. Writes `long_tail_study.json` and `long_tail_study.png` into --output_dir.

    python studies/long_tail_study.py --output_dir runs/studies/long_tail [--steps 800 --seeds 0,1]
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from finegrain_tf.data import synthetic  # noqa: E402
from finegrain_tf.data.long_tail import make_long_tailed  # noqa: E402
from finegrain_tf.losses import (BalancedSoftmaxLoss, ClassBalancedLoss, DeferredReweighting,  # noqa: E402
                                 LDAMLoss, count_labels)
from finegrain_tf.metrics.long_tail import head_tail_report  # noqa: E402
from finegrain_tf.layers import PriorBias  # noqa: E402
from finegrain_tf.train.optim import configure_weight_decay  # noqa: E402

LOSSES = ("softmax", "cb_softmax", "cb_sigmoid", "cb_focal", "balanced_softmax", "ldam_drw")

_OUT = flags.DEFINE_string("output_dir", "runs/studies/long_tail", "where the JSON and PNG go")
_LOSSES = flags.DEFINE_list("losses", list(LOSSES), f"subset of {LOSSES}")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "training seeds (the data seed is fixed)")
_STEPS = flags.DEFINE_integer("steps", 800, "training steps per run (same budget for every loss)")
_BATCH = flags.DEFINE_integer("batch_size", 64, "batch size")
_LR = flags.DEFINE_float("learning_rate", 0.2, "peak SGD learning rate (cosine decay, 5% warm-up)")
_OPT = flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw"], "optimizer (SGD momentum 0.9 or AdamW)")
_WD = flags.DEFINE_float("weight_decay", 5e-4, "decoupled weight decay on kernels only")
_CLASSES = flags.DEFINE_integer("num_classes", 20, "synthetic classes")
_PER_CLASS = flags.DEFINE_integer("train_per_class", 100, "n_max: train images of the head class")
_TEST = flags.DEFINE_integer("test_per_class", 30, "balanced test images per class")
_SIZE = flags.DEFINE_integer("image_size", 32, "synthetic image side")
_IF = flags.DEFINE_float("imbalance_factor", 50, "imbalance factor (50-100)")
_BETA = flags.DEFINE_float("beta", 0.99, "class-balanced beta (Table 5.2: 0.99 on fine-grained CIFAR-100-LT IF 50)")
_GAMMA = flags.DEFINE_float("gamma", 0.5, "focal gamma")
_HEAD = flags.DEFINE_integer("head", 20, "head classes have >= this many train images (seed: 100)")
_FEW = flags.DEFINE_integer("few", 5, "few-shot classes have < this many train images")
_WIDTH = flags.DEFINE_integer("width", 32, "CNN width")


def build_model(num_classes: int, image_size: int, width: int, loss_name: str) -> keras.Model:
    """Conv-BN-ReLU x 4 (stride 2 from the 2nd), global average pooling, linear (or cosine) classifier."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    for i, filters in enumerate((width, width, 2 * width, 4 * width)):
        x = keras.layers.Conv2D(filters, 3, strides=1 if i == 0 else 2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    if loss_name == "ldam_drw":
        # LDAM works on cosine logits: unit-norm features times unit-norm class vectors (stock layers).
        x = keras.layers.UnitNormalization()(x)
        logits = keras.layers.Dense(num_classes, use_bias=False, kernel_constraint=keras.constraints.UnitNorm(0),
                                    name="logits")(x)
    else:
        bias = PriorBias(num_classes) if loss_name in ("cb_sigmoid", "cb_focal") else "zeros"
        logits = keras.layers.Dense(num_classes, bias_initializer=bias, name="logits")(x)
    return keras.Model(inputs, logits)


def build_loss(name: str, counts, steps: int):
    if name == "softmax":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True), []
    if name.startswith("cb_"):
        return ClassBalancedLoss(counts, beta=_BETA.value, loss_type=name[3:], gamma=_GAMMA.value), []
    if name == "balanced_softmax":
        return BalancedSoftmaxLoss(counts), []
    if name == "ldam_drw":
        loss = LDAMLoss(counts, max_margin=0.5, scale=30.0, beta=0.9999, drw_step=int(0.8 * steps))
        return loss, [DeferredReweighting(loss)]
    raise ValueError(f"unknown loss {name!r}; choose from {list(LOSSES)}")


def _augment(image, label):
    image = tf.image.random_flip_left_right(image)
    size = tf.shape(image)[0]
    image = tf.image.resize_with_crop_or_pad(image, size + 4, size + 4)
    image = tf.image.random_crop(image, tf.stack([size, size, 3]))
    return tf.cast(image, tf.float32), label


def train_and_evaluate(loss_name: str, seed: int, data: dict, counts: np.ndarray) -> dict:
    keras.utils.set_random_seed(seed)
    steps = _STEPS.value
    x, y = data["train"]
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
          .repeat().map(_augment, num_parallel_calls=2).batch(_BATCH.value, drop_remainder=True).prefetch(2))
    model = build_model(_CLASSES.value, _SIZE.value, _WIDTH.value, loss_name)
    schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=steps - steps // 20, warmup_target=_LR.value, warmup_steps=steps // 20)
    if _OPT.value == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=_WD.value)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=_WD.value)
    configure_weight_decay(optimizer, model, decay_bias=False, decay_batchnorm=False)
    loss, callbacks = build_loss(loss_name, counts.tolist(), steps)
    model.compile(optimizer=optimizer, loss=loss)
    start = time.time()
    history = model.fit(ds, steps_per_epoch=steps // 4, epochs=4, verbose=0, callbacks=callbacks)
    seconds = time.time() - start
    tx, ty = data["test"]
    pred = model.predict(tx.astype(np.float32), batch_size=256, verbose=0).argmax(-1)
    report = head_tail_report(ty, pred, counts, many=_HEAD.value, few=_FEW.value, head_threshold=_HEAD.value)
    report["final_train_loss"] = float(history.history["loss"][-1])
    report["train_seconds"] = seconds
    logging.info("%-16s seed %d: overall %.3f balanced %.3f head %s tail %s (%.0f s)", loss_name, seed,
                 report["overall"], report["balanced"], report["head"]["accuracy"], report["tail"]["accuracy"],
                 seconds)
    return report


def _mean(reports: list, *keys):
    vals = []
    for r in reports:
        v = r
        for k in keys:
            v = v[k]
        if v is not None:
            vals.append(v)
    return float(np.mean(vals)) if vals else None


def plot(summary: dict, path: str, title: str) -> None:
    names = list(summary)
    fields = ("overall", "balanced", "head", "tail", "few")
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(fields)
    for k, field in enumerate(fields):
        vals = [summary[n][field] or 0.0 for n in names]
        bars = ax.bar(np.arange(len(names)) + (k - len(fields) / 2 + 0.5) * width, vals, width, label=field)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.005, f"{v:.2f}", ha="center", fontsize=6)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=len(fields))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    for name in _LOSSES.value:
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose from {list(LOSSES)}")
    os.makedirs(_OUT.value, exist_ok=True)
    t0 = time.time()
    full = synthetic.generate(num_classes=_CLASSES.value, num_superclasses=4, train_per_class=_PER_CLASS.value,
                              val_per_class=0, test_per_class=_TEST.value, image_size=_SIZE.value, seed=0)
    kept = make_long_tailed(full.labels["train"], _IF.value, seed=0, num_classes=_CLASSES.value)
    data = {"train": (full.images["train"][kept], full.labels["train"][kept]),
            "test": (full.images["test"], full.labels["test"])}
    counts = count_labels(data["train"][1], _CLASSES.value)
    logging.info("train counts %s (IF %.1f, %d images); data in %.1f s", counts.tolist(),
                 counts.max() / counts.min(), counts.sum(), time.time() - t0)
    runs = {}
    for name in _LOSSES.value:
        runs[name] = [train_and_evaluate(name, int(s), data, counts) for s in _SEEDS.value]
    summary = {name: {"overall": _mean(r, "overall"), "balanced": _mean(r, "balanced"),
                      "head": _mean(r, "head", "accuracy"), "tail": _mean(r, "tail", "accuracy"),
                      "many": _mean(r, "many", "accuracy"), "medium": _mean(r, "medium", "accuracy"),
                      "few": _mean(r, "few", "accuracy"),
                      "overall_per_seed": [x["overall"] for x in r],
                      "tail_per_seed": [x["tail"]["accuracy"] for x in r]}
               for name, r in runs.items()}
    settings = {"num_classes": _CLASSES.value, "train_counts": counts.tolist(), "imbalance_factor": _IF.value,
                "test_per_class": _TEST.value, "image_size": _SIZE.value, "steps": _STEPS.value,
                "batch_size": _BATCH.value, "optimizer": _OPT.value, "learning_rate": _LR.value,
                "weight_decay": _WD.value,
                "beta": _BETA.value, "gamma": _GAMMA.value, "head_threshold": _HEAD.value, "few": _FEW.value,
                "seeds": [int(s) for s in _SEEDS.value], "width": _WIDTH.value,
                "wall_seconds": time.time() - t0}
    with open(os.path.join(_OUT.value, "long_tail_study.json"), "w") as f:
        json.dump({"settings": settings, "summary": summary, "runs": runs}, f, indent=1)
    title = (f"Synthetic-LT: {_CLASSES.value} classes, IF {_IF.value:g} "
             f"({counts.max()}->{counts.min()} train images), {_STEPS.value} steps, {len(_SEEDS.value)} seed(s); "
             f"head = >= {_HEAD.value} train images")
    plot(summary, os.path.join(_OUT.value, "long_tail_study.png"), title)
    for name, s in summary.items():
        logging.info("%-16s %s", name, "  ".join(
                f"{k} {'-' if s[k] is None else format(s[k], '.3f')}"
                for k in ("overall", "balanced", "head", "tail", "many", "medium", "few")))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
