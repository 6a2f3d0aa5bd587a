"""Softmax baselines that use human hard negatives (seed 000 §2.4.3, Table 2.3).

- HNS ("Softmax + HNS"): all hard negatives form one extra class: N + 1 outputs, HN label = N.
- HNM ("Softmax + HNM"): one hard-negative class per real class: 2N outputs, a hard negative proposed
  for class c gets label N + c.

Train an ordinary softmax classifier with `num_outputs(N, mode)` logits on the mapped labels; at test
time only the real classes' scores count (`real_class_logits` / `predict_real_classes`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

MODES = ("hns", "hnm")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {list(MODES)}")


def num_outputs(num_classes: int, mode: str) -> int:
    """Logits of the baseline: N + 1 (HNS) or 2N (HNM)."""
    _check_mode(mode)
    return num_classes + 1 if mode == "hns" else 2 * num_classes


def hard_negative_labels(proposed_classes, num_classes: int, mode: str) -> np.ndarray:
    """Training labels of hard negatives proposed for `proposed_classes`: N (HNS) or N + c (HNM)."""
    _check_mode(mode)
    c = np.asarray(proposed_classes).reshape(-1).astype(np.int64)
    if c.size and (c.min() < 0 or c.max() >= num_classes):
        raise ValueError(f"proposed classes must be in [0, {num_classes}), got range "
                         f"[{c.min()}, {c.max()}]")
    return np.full_like(c, num_classes) if mode == "hns" else num_classes + c


def merge_with_hard_negatives(labels, proposed_classes, num_classes: int, mode: str):
    """(labels of train images followed by hard negatives, is_hard_negative mask)."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    hn = hard_negative_labels(proposed_classes, num_classes, mode)
    merged = np.concatenate([labels, hn])
    mask = np.concatenate([np.zeros(len(labels), bool), np.ones(len(hn), bool)])
    return merged, mask


def real_class_logits(logits, num_classes: int):
    """The first `num_classes` columns: the scores that count at test time."""
    return logits[..., :num_classes]


def predict_real_classes(logits, num_classes: int) -> np.ndarray:
    """argmax over the real classes only."""
    return np.asarray(tf.argmax(real_class_logits(tf.convert_to_tensor(logits), num_classes), axis=-1))
