"""Forward+backward time of the class-balanced losses vs keras SparseCategoricalCrossentropy.

Goals (issue 16): B=256, C=8142 (iNaturalist 2018): CB softmax <= 1.05x keras sparse CE, CB sigmoid
<= 1.2x, CB focal <= 1.0x keras BinaryFocalCrossentropy with the same gamma on the same logits (and
<= 2x sparse CE).
Each candidate is a `tf.function` computing the batch loss and its gradient w.r.t. the logits; the
reported time is the median over `--repeats` timed calls after `--warmup` calls.

    python benchmarks/bench_class_balanced.py [--classes 1000,8142] [--batch 256] [--repeats 50]
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from finegrain_tf.data.long_tail import long_tailed_counts  # noqa: E402
from finegrain_tf.losses import (BalancedSoftmaxLoss, ClassBalancedLoss, LDAMLoss,  # noqa: E402
                                 LogitAdjustedLoss)

_CLASSES = flags.DEFINE_string("classes", "8142", "comma-separated numbers of classes")
_BATCH = flags.DEFINE_integer("batch", 256, "batch size")
_REPEATS = flags.DEFINE_integer("repeats", 50, "timed calls per candidate")
_WARMUP = flags.DEFINE_integer("warmup", 5, "untimed calls per candidate")


def _step_fn(loss_fn):
    @tf.function
    def step(y, z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = loss_fn(y, z)
        return value, tape.gradient(value, z)

    return step


def _timed_round_robin(steps, inputs, repeats: int, warmup: int) -> list:
    """Median seconds per candidate; candidates are interleaved call by call so that load changes on a
    shared machine hit all of them alike."""
    for step, (y, z) in zip(steps, inputs):
        for _ in range(warmup):
            step(y, z)[1].numpy()
    times = [[] for _ in steps]
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for k in order.permutation(len(steps)):  # a fresh order each round: no position bias
            step, (y, z) = steps[k], inputs[k]
            start = time.perf_counter()
            step(y, z)[1].numpy()  # wait for the gradient
            times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def main(argv):
    del argv
    classes = [int(c) for c in _CLASSES.value.split(",")]
    batch = _BATCH.value
    print(f"device: {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}; B={batch}; "
          f"median of {_REPEATS.value} forward+backward calls, interleaved")
    header = f"{'C':>6} {'loss':<32} {'ms':>8} {'x plain CE':>10} {'x keras focal':>13}"
    print(header)
    print("-" * len(header))
    for num_classes in classes:
        # iNat-like long-tailed counts (IF 500 from 1000 images) for the weights.
        counts = long_tailed_counts(1000, num_classes, 500)
        rng = np.random.default_rng(0)
        labels = tf.constant(rng.integers(0, num_classes, size=batch), tf.int64)
        logits = tf.constant(rng.normal(size=(batch, num_classes)).astype(np.float32) * 3)
        candidates = [
                ("keras SparseCategoricalCE", keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
                ("CB softmax", ClassBalancedLoss(counts, 0.999, "softmax")),
                ("CB sigmoid", ClassBalancedLoss(counts, 0.999, "sigmoid")),
                ("CB focal (gamma 1)", ClassBalancedLoss(counts, 0.999, "focal", 1.0)),
                ("keras BinaryFocalCE (gamma 1)", keras.losses.BinaryFocalCrossentropy(gamma=1.0, from_logits=True)),
                ("CB focal (gamma 0.5)", ClassBalancedLoss(counts, 0.999, "focal", 0.5)),
                ("keras BinaryFocalCE (gamma 0.5)", keras.losses.BinaryFocalCrossentropy(gamma=0.5, from_logits=True)),
                ("logit-adjusted", LogitAdjustedLoss(counts, 1.0)),
                ("Balanced Softmax", BalancedSoftmaxLoss(counts)),
                ("LDAM-DRW", LDAMLoss(counts, drw_step=0)),
        ]
        onehot = tf.one_hot(labels, num_classes)
        steps = [_step_fn(loss) for _, loss in candidates]
        inputs = [(onehot if "Binary" in name else labels, logits) for name, _ in candidates]
        seconds = _timed_round_robin(steps, inputs, _REPEATS.value, _WARMUP.value)
        names = [name for name, _ in candidates]
        for name, sec in zip(names, seconds):
            vs_focal = ""
            if name.startswith("CB focal"):
                ref = names.index("keras BinaryFocalCE" + name[len("CB focal"):])
                vs_focal = f"{sec / seconds[ref]:13.2f}"
            print(f"{num_classes:>6} {name:<32} {1e3 * sec:8.3f} {sec / seconds[0]:10.2f} {vs_focal}")
        print()


if __name__ == "__main__":
    app.run(main)
