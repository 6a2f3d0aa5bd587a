"""Seed 000 §6.4.3 / Figs. 6.7-6.8: granularity vs learning difficulty on the synthetic dataset.

Design (fixed before the rerun; the earlier run used one CNN / one data seed and all 780 pairs):
  * Features: the coarse-trained small CNN of `granularity_common`, one per seed (seeds 0, 1, 2: data
    rendering and training), test split (40 classes in 8 super-classes of 5, 30 images per class).
  * Difficulty = training error of a linear logistic regression on the features (sklearn lbfgs, C = 1,
    standardised features, 300 iterations), as in the seed.
  * Datasets per seed: (a) the test split with 0..8 of its 8 super-classes re-labelled to their fine
    classes in --orders = 3 random orders (Fig 6.7 analogue, 27 datasets); (b) --max_pairs = 200 random
    pairs of fine classes (Fig 6.8 analogue; the seed uses every pair), numpy seed = the seed.
  * Reported per seed: Pearson's rho between RankM (and RS) and the LR training error on (a) and on (b),
    the mean RankM of same-super-class vs different-super-class pairs, the 5 most fine-grained pairs.
  * Claims: (1) "dataset granularity is highly correlated with learning difficulty": yes if RankM's rho
    averaged over seeds is >= 0.7 on both (a) and (b), partly if on one, no otherwise; (2) the most
    fine-grained pairs make sense to a human (the seed: cat/dog, otter/seal, boy/girl): yes if pairs
    from the same super-class have a higher mean RankM than pairs across super-classes on every seed.

    python studies/granularity_difficulty.py          # writes studies/results/granularity_difficulty.*
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import granularity_common as common  # noqa: E402
import plotting  # noqa: E402
from finegrain_tf.analysis.dataset_granularity import granularity  # noqa: E402

FLAGS = flags.FLAGS
common.define_flags()
flags.DEFINE_integer("orders", 3, "random re-labelling orders per seed for the multi-class datasets")
flags.DEFINE_integer("max_pairs", 200, "random binary class pairs per seed")

HIGH_CORRELATION = 0.7


def lr_train_error(x, y) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xs = StandardScaler().fit_transform(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=1.0, max_iter=300).fit(xs, y)
    return float(1.0 - clf.score(xs, y))


def run_seed(setup, orders: int, max_pairs: int) -> dict:
    from scipy.stats import pearsonr

    data, feats = setup.data, setup.features
    fine = data.labels["test"]
    sup = data.superclass_of[fine]
    num_sup = int(data.superclass_of.max()) + 1
    rng = np.random.default_rng(setup.seed)
    multi = []
    for _ in range(orders):
        perm = rng.permutation(num_sup)
        labels = sup.copy()
        for step in range(num_sup + 1):
            if step:
                labels = np.where(sup == perm[step - 1], num_sup + fine, labels)
            multi.append({"relabelled": step, "rankm": granularity(feats, labels, "rankm"),
                          "rs": granularity(feats, labels, "rs"), "lr_train_error": lr_train_error(feats, labels)})
    all_pairs = list(itertools.combinations(range(data.num_classes), 2))
    pairs = []
    for i in sorted(rng.permutation(len(all_pairs))[:max_pairs]):
        a, b = all_pairs[i]
        keep = (fine == a) | (fine == b)
        x, y = feats[keep], fine[keep]
        pairs.append({"a": data.class_names[a], "b": data.class_names[b],
                      "same_superclass": bool(data.superclass_of[a] == data.superclass_of[b]),
                      "rankm": granularity(x, y, "rankm"), "rs": granularity(x, y, "rs"),
                      "lr_train_error": lr_train_error(x, y)})

    def rho(rows, measure):
        return float(pearsonr([r[measure] for r in rows], [r["lr_train_error"] for r in rows])[0])

    same = [r["rankm"] for r in pairs if r["same_superclass"]]
    other = [r["rankm"] for r in pairs if not r["same_superclass"]]
    return {"multi_class": {"rows": multi, "pearson_rankm_error": rho(multi, "rankm"),
                            "pearson_rs_error": rho(multi, "rs")},
            "pairs": {"rows": pairs, "count": len(pairs), "pearson_rankm_error": rho(pairs, "rankm"),
                      "pearson_rs_error": rho(pairs, "rs"),
                      "mean_rankm_same_superclass": float(np.mean(same)) if same else None,
                      "mean_rankm_different_superclass": float(np.mean(other)),
                      "most_fine_grained": sorted(pairs, key=lambda r: -r["rankm"])[:5]}}


def claims(per_seed: dict) -> list:
    seeds = sorted(per_seed)
    rho_multi = [per_seed[s]["multi_class"]["pearson_rankm_error"] for s in seeds]
    rho_pairs = [per_seed[s]["pairs"]["pearson_rankm_error"] for s in seeds]
    rs_multi = [per_seed[s]["multi_class"]["pearson_rs_error"] for s in seeds]
    rs_pairs = [per_seed[s]["pairs"]["pearson_rs_error"] for s in seeds]
    high = [float(np.mean(rho_multi)) >= HIGH_CORRELATION, float(np.mean(rho_pairs)) >= HIGH_CORRELATION]
    same = [per_seed[s]["pairs"]["mean_rankm_same_superclass"] for s in seeds]
    other = [per_seed[s]["pairs"]["mean_rankm_different_superclass"] for s in seeds]
    finer_within = all(a is not None and a > b for a, b in zip(same, other))
    top = per_seed[seeds[0]]["pairs"]["most_fine_grained"][0]
    return [
        {"claim": "dataset granularity is highly correlated with learning difficulty (training error of a "
                  "linear logistic regression)",
         "seed_figure": "Figs 6.7-6.8: granularity vs LR training error on CIFAR, re-labelled sets and all "
                        "class pairs, Pearson's rho high",
         "ours": f"Pearson rho(RankM, LR error): re-labelled sets {plotting.mean_std_text(rho_multi)}, class pairs "
                 f"{plotting.mean_std_text(rho_pairs)}; RS: {plotting.mean_std_text(rs_multi)} and "
                 f"{plotting.mean_std_text(rs_pairs)}",
         "reproduced": "yes" if all(high) else ("partly" if any(high) else "no"),
         "why": "" if all(high) else f"RankM's rho is below {HIGH_CORRELATION} on "
                + " and ".join(n for n, h in zip(("the re-labelled sets", "the class pairs"), high) if not h)},
        {"claim": "the most fine-grained class pairs are the ones a human also finds similar",
         "seed_figure": "§6.4.3: (cat, dog), (otter, seal), (boy, girl) are the most fine-grained CIFAR pairs",
         "ours": f"mean RankM of pairs within a super-class {plotting.mean_std_text([v for v in same if v is not None])}"
                 f" vs across {plotting.mean_std_text(other)}; finest pair (seed {seeds[0]}): {top['a']} / {top['b']} "
                 f"(RankM {top['rankm']:.3f})",
         "reproduced": "yes" if finer_within else "no",
         "why": "" if finer_within else "within-super-class pairs are not finer than cross pairs on every seed"},
    ]


def plot(per_seed: dict, setups, path: str) -> None:
    seeds = sorted(per_seed)
    with plotting.style():
        fig, axes = plotting.figure(ncols=2)
        for i, s in enumerate(seeds):
            rows = per_seed[s]["multi_class"]["rows"]
            axes[0].scatter([r["rankm"] for r in rows], [r["lr_train_error"] for r in rows], s=12,
                            color=plotting.COLORS[i], label=f"seed {s}: rho {per_seed[s]['multi_class']['pearson_rankm_error']:.2f}")
            pairs = per_seed[s]["pairs"]["rows"]
            for same, marker in ((False, "o"), (True, "^")):
                sel = [r for r in pairs if r["same_superclass"] == same]
                axes[1].scatter([r["rankm"] for r in sel], [r["lr_train_error"] for r in sel], s=8, alpha=0.6,
                                marker=marker, color=plotting.COLORS[i],
                                label=(f"seed {s}: rho {per_seed[s]['pairs']['pearson_rankm_error']:.2f}"
                                       if not same else None))
        axes[0].set(xlabel="granularity (RankM)", ylabel="LR training error",
                    title="Fig 6.7 analogue: 0..8 super-classes re-labelled")
        axes[1].set(xlabel="granularity (RankM)", ylabel="LR training error",
                    title="Fig 6.8 analogue: class pairs (▲ same super-class)")
        for ax in axes:
            ax.legend()
        plotting.save(fig, path)


def main(argv):
    del argv
    common.run_over_seeds(
        "granularity_difficulty", __doc__, lambda setup: run_seed(setup, FLAGS.orders, FLAGS.max_pairs), claims, plot,
        ["rerun over 3 seeds (data + CNN) with 200 random class pairs per seed instead of all 780 of one seed; CNN "
         "batch-norm momentum 0.9 and 25 epochs (granularity_common)"])


if __name__ == "__main__":
    app.run(main)
