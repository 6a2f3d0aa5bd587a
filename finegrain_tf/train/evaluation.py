"""The evaluation report printed at the end of training: top-1, top-5, balanced and head/tail accuracy,
and the class-count table logged at the start."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from finegrain_tf.metrics.long_tail import head_tail_report


def predict_logits(model: keras.Model, dataset: tf.data.Dataset, max_batches: int = 0,
                   num_classes: int | None = None):
    """Runs `model` over a dataset of (images, labels) batches; returns (logits, labels) arrays.

    `num_classes` keeps the first columns only (the real classes of the hard-negative baselines).
    Multi-crop batches [B, V, S, S, 3] (`data.eval_crops=12`) score each image by the log of its
    class probabilities averaged over the V views."""
    def views_forward(images):
        shape = tf.shape(images)
        probs = tf.nn.softmax(tf.cast(model(tf.reshape(images, tf.concat([[-1], shape[2:]], 0)),
                                            training=False), tf.float32))
        return tf.math.log(tf.reduce_mean(tf.reshape(probs, [shape[0], shape[1], -1]), axis=1) + 1e-12)

    forward = tf.function(lambda images: views_forward(images) if images.shape.rank == 5
                          else model(images, training=False), reduce_retracing=True)
    logits, labels = [], []
    for i, (images, batch_labels) in enumerate(dataset):
        if max_batches and i >= max_batches:
            break
        logits.append(np.asarray(forward(images), dtype=np.float32)[:, :num_classes])
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    if not logits:
        raise ValueError("the evaluation split is empty")
    return np.concatenate(logits), np.concatenate(labels)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    topk = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def evaluate(model, dataset, train_class_counts, max_batches: int = 0, many: int = 100,
             few: int = 20, num_classes: int | None = None):
    """(report, (predicted class [N], label [N])): top-1, top-5, balanced accuracy and the head/tail
    breakdown of seed 000 (head: >= `many` training images per class, tail: fewer; plus many /
    medium / few-shot groups)."""
    logits, labels = predict_logits(model, dataset, max_batches, num_classes)
    return report_from_logits(logits, labels, train_class_counts, many, few), \
        (np.argmax(logits, axis=1), labels)


def report_from_logits(logits, labels, train_class_counts, many: int = 100, few: int = 20) -> dict:
    """The evaluation report of `evaluate` from logits [N, C] and labels [N]."""
    breakdown = head_tail_report(labels, logits, train_class_counts, many=many, few=few)
    return {
        "num_examples": int(len(labels)),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "balanced_accuracy": breakdown["balanced"],
        "head_accuracy": breakdown["head"]["accuracy"],
        "tail_accuracy": breakdown["tail"]["accuracy"],
        "many_shot_accuracy": breakdown["many"]["accuracy"],
        "medium_shot_accuracy": breakdown["medium"]["accuracy"],
        "few_shot_accuracy": breakdown["few"]["accuracy"],
        "breakdown": breakdown,
    }


def format_report(report: dict) -> str:
    """A two-column table of the scalar entries (groups without classes show as '-')."""
    lines = [f"{'metric':<24}{'value':>10}"]
    for key, value in report.items():
        if isinstance(value, float):
            lines.append(f"{key:<24}{value:>10.4f}")
        elif isinstance(value, int):
            lines.append(f"{key:<24}{value:>10d}")
        elif value is None:
            lines.append(f"{key:<24}{'-':>10}")
    return "\n".join(lines)


def format_class_counts(class_names, counts, max_rows: int = 40) -> str:
    """The training images per class, largest first (long lists keep the head and the tail)."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    rows = [f"{str(class_names[i])[:40]:<42}{int(counts[i]):>8}" for i in order]
    if len(rows) > max_rows:
        half = max_rows // 2
        rows = rows[:half] + [f"... {len(rows) - 2 * half} more classes ..."] + rows[-half:]
    total = int(counts.sum())
    ratio = counts.max() / max(counts.min(), 1)
    return "\n".join([f"{'class':<42}{'images':>8}"] + rows +
                     [f"{len(counts)} classes, {total} images, imbalance max/min = {ratio:.1f}"])
