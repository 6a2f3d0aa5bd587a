"""Seed 000 Fig. 6.1: greedy search for "sweet" (low granularity) and "bitter" (high granularity)
k-class subsets of the synthetic dataset.

Greedy: start from the class pair with the lowest (sweet) / highest (bitter) RankM, then repeatedly
add the class that keeps the subset's RankM lowest / highest until k classes.  Also reported: the
RankM of --random random k-class subsets and how many super-classes each subset spans.  Features:
the coarse-trained small CNN of `granularity_common` (test split).

    python studies/granularity_sweet_bitter.py --output_dir runs/studies/granularity_sweet_bitter --k 5
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import granularity_common as common  # noqa: E402
from finegrain_tf.analysis.dataset_granularity import granularity  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/studies/granularity_sweet_bitter", "where PNG + JSON go")
flags.DEFINE_string("cache_dir", "runs/studies/_cache", "shared CNN / feature cache")
flags.DEFINE_integer("k", 5, "classes per subset")
flags.DEFINE_integer("random", 50, "random subsets for reference")


def subset_granularity(feats, fine, classes):
    keep = np.isin(fine, classes)
    return granularity(feats[keep], fine[keep], "rankm")


def greedy(feats, fine, num_classes, k, sign):
    """sign=+1: minimise (sweet); sign=-1: maximise (bitter)."""
    best_pair = min(itertools.combinations(range(num_classes), 2),
                    key=lambda p: sign * subset_granularity(feats, fine, list(p)))
    chosen = list(best_pair)
    while len(chosen) < k:
        rest = [c for c in range(num_classes) if c not in chosen]
        nxt = min(rest, key=lambda c: sign * subset_granularity(feats, fine, chosen + [c]))
        chosen.append(nxt)
    return chosen, subset_granularity(feats, fine, chosen)


def main(argv):
    del argv
    t0 = time.time()
    data, _, feats = common.coarse_setup(FLAGS.cache_dir)
    fine = data.labels["test"]
    c = data.num_classes
    sweet, g_sweet = greedy(feats, fine, c, FLAGS.k, +1)
    bitter, g_bitter = greedy(feats, fine, c, FLAGS.k, -1)
    rng = np.random.default_rng(0)
    rand = [subset_granularity(feats, fine, list(rng.choice(c, FLAGS.k, replace=False)))
            for _ in range(FLAGS.random)]

    def describe(classes):
        return {"classes": [data.class_names[i] for i in classes],
                "superclasses": sorted({data.superclass_names[data.superclass_of[i]] for i in classes})}

    result = {"k": FLAGS.k, "features": "small CNN trained on the 8 coarse labels, synthetic test split",
              "sweet": dict(describe(sweet), rankm=g_sweet),
              "bitter": dict(describe(bitter), rankm=g_bitter),
              "random": {"mean": float(np.mean(rand)), "std": float(np.std(rand)),
                         "min": float(np.min(rand)), "max": float(np.max(rand))},
              "whole_dataset_fine": granularity(feats, fine, "rankm"),
              "seconds": time.time() - t0}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "granularity_sweet_bitter.json"), "w") as f:
        json.dump(result, f, indent=2)
    fig, axes = plt.subplots(2, FLAGS.k, figsize=(2 * FLAGS.k, 4.8))
    test_images = data.images["test"]
    for row, (name, classes, g) in enumerate((("sweet", sweet, g_sweet), ("bitter", bitter, g_bitter))):
        for col, cls in enumerate(classes):
            ax = axes[row, col]
            ax.imshow(test_images[np.flatnonzero(fine == cls)[0]])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(data.class_names[cls], fontsize=7)
        axes[row, 0].set_ylabel(f"{name}\nRankM={g:.3f}")
    fig.suptitle(f"Fig 6.1 analogue: {FLAGS.k}-class subsets (random: {np.mean(rand):.3f} ± {np.std(rand):.3f})")
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.output_dir, "granularity_sweet_bitter.png"), dpi=100)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main)
