"""Seed 000 Fig. 6.1: greedy search for "sweet" (low granularity) and "bitter" (high granularity)
k-class subsets of the synthetic dataset.

Design (fixed before the rerun; the earlier run used one CNN / one data seed):
  * Features: the coarse-trained small CNN of `granularity_common`, one per seed (seeds 0, 1, 2: data
    rendering and training), test split, 40 fine classes in 8 super-classes.
  * Greedy: start from the class pair with the lowest (sweet) / highest (bitter) RankM, then repeatedly
    add the class that keeps the subset's RankM lowest / highest until --k = 5 classes.  Reference:
    RankM of --random = 50 random k-class subsets (numpy seed = the seed), the whole test split with its
    40 fine labels and with its 8 coarse labels (the analogue of a "coarse-grained" dataset like CIFAR-10).
  * Claims: (1) sweet and bitter subsets with drastically different granularity exist: yes if, on every
    seed, the sweet subset is below and the bitter one above every random subset; (2) the seed's
    "CUB-200-Sweet is coarser than CIFAR-10": yes if, on every seed, the sweet subset of fine classes has a
    lower RankM than the whole set with its 8 coarse labels.

    python studies/granularity_sweet_bitter.py          # writes studies/results/granularity_sweet_bitter.*
"""

from __future__ import annotations

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import granularity_common as common  # noqa: E402
import plotting  # noqa: E402
from finegrain_tf.analysis.dataset_granularity import granularity  # noqa: E402

FLAGS = flags.FLAGS
common.define_flags()
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
        chosen.append(min(rest, key=lambda c: sign * subset_granularity(feats, fine, chosen + [c])))
    return chosen, subset_granularity(feats, fine, chosen)


def run_seed(setup, k: int, num_random: int) -> dict:
    data, feats = setup.data, setup.features
    fine = data.labels["test"]
    c = data.num_classes
    sweet, g_sweet = greedy(feats, fine, c, k, +1)
    bitter, g_bitter = greedy(feats, fine, c, k, -1)
    rng = np.random.default_rng(setup.seed)
    rand = [subset_granularity(feats, fine, list(rng.choice(c, k, replace=False))) for _ in range(num_random)]

    def describe(classes):
        return {"class_ids": [int(i) for i in classes], "classes": [data.class_names[i] for i in classes],
                "superclasses": sorted({data.superclass_names[data.superclass_of[i]] for i in classes})}

    return {"sweet": dict(describe(sweet), rankm=g_sweet), "bitter": dict(describe(bitter), rankm=g_bitter),
            "random": {"mean": float(np.mean(rand)), "std": float(np.std(rand, ddof=1)),
                       "min": float(np.min(rand)), "max": float(np.max(rand))},
            "whole_dataset_fine": granularity(feats, fine, "rankm"),
            "whole_dataset_coarse": granularity(feats, data.superclass_of[fine], "rankm")}


def claims(per_seed: dict) -> list:
    seeds = sorted(per_seed)

    def vals(key, sub=None):
        return [per_seed[s][key][sub] if sub else per_seed[s][key] for s in seeds]

    apart = all(per_seed[s]["sweet"]["rankm"] < per_seed[s]["random"]["min"]
                and per_seed[s]["bitter"]["rankm"] > per_seed[s]["random"]["max"] for s in seeds)
    sweet_coarser = all(per_seed[s]["sweet"]["rankm"] < per_seed[s]["whole_dataset_coarse"] for s in seeds)
    return [
        {"claim": "greedy search finds 'sweet' and 'bitter' subsets of one dataset with drastically different "
                  "granularity",
         "seed_figure": "Fig 6.1: CUB-200-Sweet vs CUB-200-Bitter (10 classes each)",
         "ours": f"RankM of {FLAGS.k}-class subsets: sweet {plotting.mean_std_text(vals('sweet', 'rankm'))}, "
                 f"random {plotting.mean_std_text(vals('random', 'mean'))}, bitter "
                 f"{plotting.mean_std_text(vals('bitter', 'rankm'))}",
         "reproduced": "yes" if apart else "partly",
         "why": "" if apart else "on some seed a random subset is as sweet or as bitter as the greedy one"},
        {"claim": "a sweet subset of a fine-grained dataset is coarser than a dataset considered coarse-grained",
         "seed_figure": "Fig 6.1: CUB-200-Sweet has lower granularity than CIFAR-10",
         "ours": f"sweet fine-class subset {plotting.mean_std_text(vals('sweet', 'rankm'))} vs the whole set with its "
                 f"8 coarse labels {plotting.mean_std_text(vals('whole_dataset_coarse'))} (40 fine labels: "
                 f"{plotting.mean_std_text(vals('whole_dataset_fine'))})",
         "reproduced": "yes" if sweet_coarser else "no",
         "why": "" if sweet_coarser else "the sweet subset is not below the coarse-labelled set on every seed"},
    ]


def plot(per_seed: dict, setups, path: str) -> None:
    """The sweet and bitter classes of the first seed (one test image each) and the RankM bars over seeds."""
    import matplotlib.pyplot as plt

    seeds = sorted(per_seed)
    setup, k = setups[0], FLAGS.k
    first = per_seed[str(setup.seed)]
    images, fine = setup.data.images["test"], setup.data.labels["test"]
    with plotting.style():
        fig = plt.figure(figsize=(2.0 * k + 4.5, 4.4))
        grid = fig.add_gridspec(2, k + 2)
        for row, name in enumerate(("sweet", "bitter")):
            for col, cls in enumerate(first[name]["class_ids"]):
                ax = fig.add_subplot(grid[row, col])
                ax.imshow(images[np.flatnonzero(fine == cls)[0]])
                ax.set(xticks=[], yticks=[])
                ax.grid(False)
                ax.set_title(setup.data.class_names[cls], fontsize=6)
            fig.axes[row * k].set_ylabel(f"{name}\nRankM {first[name]['rankm']:.3f}")
        ax = fig.add_subplot(grid[:, k:])
        plotting.bars(ax, ["sweet", "random", "bitter", "all, coarse", "all, fine"],
                      [[per_seed[s]["sweet"]["rankm"] for s in seeds], [per_seed[s]["random"]["mean"] for s in seeds],
                       [per_seed[s]["bitter"]["rankm"] for s in seeds],
                       [per_seed[s]["whole_dataset_coarse"] for s in seeds],
                       [per_seed[s]["whole_dataset_fine"] for s in seeds]])
        ax.set(ylabel="granularity (RankM)", title=f"mean ± std over {len(seeds)} seeds")
        fig.suptitle(f"Fig 6.1 analogue: {k}-class subsets (images: seed {setup.seed})")
        plotting.save(fig, path)


def main(argv):
    del argv
    common.run_over_seeds(
        "granularity_sweet_bitter", __doc__, lambda setup: run_seed(setup, FLAGS.k, FLAGS.random), claims, plot,
        ["rerun over 3 seeds (data + CNN) instead of one; the coarse-labelled whole set added as the "
         "'coarse-grained dataset' reference; CNN batch-norm momentum 0.9 and 25 epochs (granularity_common)"],
        extra={"k": FLAGS.k})


if __name__ == "__main__":
    app.run(main)
