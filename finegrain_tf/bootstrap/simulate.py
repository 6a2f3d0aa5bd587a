"""Offline bootstrapping: a synthetic seed set / candidate pool and a simulated labeler (seed 000 §2.2.2).

`prepare_synthetic` renders the embedded synthetic dataset to PNG files and writes three manifests:

- seed.csv: S_0, a few train images of each of the N classes we want to grow;
- pool.csv: the unlabeled pool C, most of the train split of the N classes plus every train image of
  the distractor classes (one sibling class per super-class left out of the N: the confusable
  "flowers outside the dataset" of §2.3), with the ground truth in a `label` column;
- test.csv: the test split of the N classes.

`SimulatedLabeler` answers review items through the `LabelStore` API exactly as a person using the
review app would (lease, then one verdict per item): yes when the proposed class is the item's true
class, no otherwise, each answer flipped with probability `error_rate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from finegrain_tf.bootstrap.manifest import write_manifest
from finegrain_tf.data import synthetic


@dataclasses.dataclass
class SyntheticSetup:
    seed_manifest: str
    pool_manifest: str
    test_manifest: str
    class_names: list  # the N classes
    distractor_names: list
    truth: dict  # pool item id -> true class name (a distractor name for distractors)


def _write_png(path: str, image: np.ndarray) -> str:
    tf.io.write_file(path, tf.io.encode_png(image))
    return path


def prepare_synthetic(out_dir: str, num_superclasses: int = 4, classes_per_superclass: int = 4,
                      distractors_per_superclass: int = 1, seed_per_class: int = 20,
                      train_per_class: int = 60, test_per_class: int = 20, image_size: int = 32,
                      seed: int = 0) -> SyntheticSetup:
    """Renders the files and manifests described in the module docstring (idempotent: re-rendering
    gives identical bytes)."""
    if not 0 < distractors_per_superclass < classes_per_superclass:
        raise ValueError(f"distractors_per_superclass must be in [1, {classes_per_superclass - 1}], got "
                         f"{distractors_per_superclass!r}")
    if not 0 < seed_per_class < train_per_class:
        raise ValueError(f"seed_per_class must be in [1, train_per_class={train_per_class}), got "
                         f"{seed_per_class!r}")
    total = num_superclasses * classes_per_superclass
    data = synthetic.generate(total, num_superclasses, train_per_class, 0, test_per_class, image_size,
                              seed)
    within = np.arange(total) % classes_per_superclass  # super-classes are contiguous blocks
    ours = np.flatnonzero(within < classes_per_superclass - distractors_per_superclass)
    distractors = np.flatnonzero(within >= classes_per_superclass - distractors_per_superclass)
    names = [data.class_names[c] for c in ours]
    os.makedirs(out_dir, exist_ok=True)

    def render(split, keep):
        rows = []
        for i in np.flatnonzero(keep):
            name = data.class_names[int(data.labels[split][i])]
            folder = os.path.join(out_dir, "images", split, name)
            os.makedirs(folder, exist_ok=True)
            rows.append((_write_png(os.path.join(folder, f"{i:06d}.png"), data.images[split][i]), name))
        return rows

    labels = data.labels["train"]
    rank = np.zeros(len(labels), np.int64)  # index of each image within its class
    for c in range(total):
        rank[labels == c] = np.arange(int((labels == c).sum()))
    is_ours = np.isin(labels, ours)
    seed_rows = render("train", is_ours & (rank < seed_per_class))
    pool_rows = render("train", ~is_ours | (rank >= seed_per_class))
    test_rows = render("test", np.isin(data.labels["test"], ours))
    seed_manifest = write_manifest(os.path.join(out_dir, "seed.csv"), *zip(*seed_rows))
    test_manifest = write_manifest(os.path.join(out_dir, "test.csv"), *zip(*test_rows))
    pool_manifest = os.path.join(out_dir, "pool.csv")
    write_manifest(pool_manifest, *zip(*pool_rows))  # path,label: label is the ground truth
    truth = {os.path.abspath(p): label for p, label in pool_rows}
    return SyntheticSetup(seed_manifest=seed_manifest, pool_manifest=pool_manifest,
                          test_manifest=test_manifest, class_names=names,
                          distractor_names=[data.class_names[c] for c in distractors], truth=truth)


def pretrain_backbone(config: str, model_dir: str, seed: int = 0, overrides=()) -> str:
    """Trains `config` (e.g. configs/metric_pretrain.yaml: the shape families of an independent
    rendering, a stand-in for ImageNet pre-training) once into `model_dir`; returns the path of its
    backbone weights for `model.weights`."""
    from finegrain_tf.bootstrap.rounds import default_train
    from finegrain_tf.train.run_dir import RunDir

    run = RunDir(model_dir)
    if not run.exists(RunDir.backbone_weights_path):
        default_train([config], list(overrides) + [f"train.model_dir={model_dir}", f"train.seed={seed}",
                                                   "train.plots=false"])
    return run.backbone_weights_path


class SimulatedLabeler:
    """A labeler answering from ground truth with a given error rate, through the store's API."""

    def __init__(self, store, truth: dict, error_rate: float = 0.0, seed: int = 0,
                 name: str = "simulated"):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate!r}")
        self.store, self.truth, self.error_rate, self.name = store, truth, float(error_rate), name
        self._rng = np.random.default_rng(seed)
        self.token = store.add_labeler(name)
        self.verdicts = 0

    def verdict(self, item: dict) -> str:
        true = self.truth.get(item["item_id"])
        if true is None:
            raise ValueError(f"the simulated labeler has no ground truth for item {item['item_id']!r}")
        correct = true == item["proposed_class"]
        if self._rng.random() < self.error_rate:
            correct = not correct
        return "yes" if correct else "no"

    def _request_id(self, item_id: str) -> str:
        # One request per (labeler, item): a rerun after a crash replays instead of judging twice.
        return f"{self.name}:{hashlib.sha256(item_id.encode()).hexdigest()[:40]}"

    def answer_all(self, batch: int = 100, max_items: Optional[int] = None) -> int:
        """Leases and judges items until none is left for this labeler; returns how many it judged."""
        done = 0
        while max_items is None or done < max_items:
            limit = batch if max_items is None else min(batch, max_items - done)
            leased = self.store.lease(self.token, limit)
            if not leased:
                break
            for item in leased:
                self.store.record_verdict(self.token, item["item_id"], self.verdict(item),
                                          request_id=self._request_id(item["item_id"]))
                done += 1
        self.verdicts += done
        return done
