"""PNG pictures of a training run (matplotlib, Agg backend): pure functions of arrays -> file.

* `curves`: train loss and accuracy per logged step, validation accuracy per evaluation.
* `per_class_accuracy`: the long-tail picture: classes sorted by training count (head on the left,
  tail on the right), bars of test accuracy with the counts on a second axis.
* `confusion`: the confusion matrix restricted to the most confused classes.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curves(path: str, history: list) -> str:
    """Loss (left) and accuracy (right) against the step, from `RunDir.load_history()` records."""
    train = [r for r in history if r.get("kind") == "train"]
    evals = [r for r in history if r.get("kind") == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r.get("loss", np.nan) for r in train], label="train")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    if any("accuracy" in r for r in train):
        ax_acc.plot([r["step"] for r in train], [r.get("accuracy", np.nan) for r in train],
                    label="train accuracy")
    for key in ("top1", "balanced_accuracy"):
        if any(key in r for r in evals):
            ax_acc.plot([r["step"] for r in evals], [r.get(key, np.nan) for r in evals], marker="o",
                        label=f"validation {key}")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def per_class_accuracy(path: str, labels, predicted, train_counts, class_names=None) -> str:
    """Test accuracy of every class, classes sorted by training count (descending)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    counts = np.asarray(train_counts)
    num_classes = len(counts)
    correct = np.bincount(labels, weights=(labels == predicted).astype(float), minlength=num_classes)
    seen = np.bincount(labels, minlength=num_classes)
    accuracy = np.divide(correct, seen, out=np.full(num_classes, np.nan), where=seen > 0)
    order = np.argsort(-counts, kind="stable")
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * num_classes), 4))
    x = np.arange(num_classes)
    ax.bar(x, accuracy[order], color="tab:blue", label="test accuracy")
    ax.set(xlabel="class (sorted by training images: head -> tail)", ylabel="test accuracy",
           ylim=(0, 1), title="per-class accuracy by training count")
    names = [str(class_names[i]) if class_names is not None else str(i) for i in order]
    ax.set_xticks(x, [f"{n} ({counts[i]})" for n, i in zip(names, order)], rotation=90, fontsize=7)
    twin = ax.twinx()
    twin.plot(x, counts[order], color="tab:orange", marker=".", label="training images")
    twin.set_ylabel("training images")
    twin.set_ylim(bottom=0)
    return _save(fig, path)


def confusion(path: str, labels, predicted, class_names=None, top: int = 15) -> str:
    """Confusion matrix (rows: true class, columns: predicted, row-normalised) of the `top` classes
    involved in the most errors."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    num_classes = int(max(labels.max(initial=0), predicted.max(initial=0)) + 1)
    if class_names is not None:
        num_classes = max(num_classes, len(class_names))
    matrix = np.zeros((num_classes, num_classes))
    np.add.at(matrix, (labels, predicted), 1)
    errors = matrix - np.diag(np.diag(matrix))
    involvement = errors.sum(0) + errors.sum(1)
    keep = np.sort(np.argsort(-involvement, kind="stable")[:min(top, num_classes)])
    sub = matrix[np.ix_(keep, keep)]
    sub = sub / np.maximum(sub.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6 + 0.2 * len(keep), 5 + 0.2 * len(keep)))
    image = ax.imshow(sub, cmap="Blues", vmin=0, vmax=1)
    names = [str(class_names[i]) if class_names is not None else str(i) for i in keep]
    ax.set_xticks(range(len(keep)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(keep)), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion of the {len(keep)} most confused classes")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)
