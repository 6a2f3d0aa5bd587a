"""Seed 000 §6.4.3 / Figs. 6.7-6.8: granularity vs learning difficulty on the synthetic dataset.

Difficulty = training error of a linear logistic regression on the features (sklearn, lbfgs,
C=1, standardised features).  Datasets: (a) the synthetic test split with 0..8 of its 8 super-classes
re-labelled to their fine classes (Fig 6.7 analogue), (b) every pair of fine classes (Fig 6.8
analogue, 780 binary datasets).  Reported: Pearson's rho between RankM (and RS) and the LR training
error.  Features: the coarse-trained small CNN of `granularity_common`.

    python studies/granularity_difficulty.py --output_dir runs/studies/granularity_difficulty
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import granularity_common as common  # noqa: E402
from finegrain_tf.analysis.dataset_granularity import granularity  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/studies/granularity_difficulty", "where PNG + JSON go")
flags.DEFINE_string("cache_dir", "runs/studies/_cache", "shared CNN / feature cache")
flags.DEFINE_integer("orders", 3, "random re-labelling orders for the multi-class datasets")
flags.DEFINE_integer("max_pairs", 780, "binary class pairs to evaluate")


def lr_train_error(x, y) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xs = StandardScaler().fit_transform(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=1.0, max_iter=300).fit(xs, y)
    return float(1.0 - clf.score(xs, y))


def main(argv):
    del argv
    from scipy.stats import pearsonr

    t0 = time.time()
    data, _, feats = common.coarse_setup(FLAGS.cache_dir)
    fine = data.labels["test"]
    sup = data.superclass_of[fine]
    num_sup = int(data.superclass_of.max()) + 1
    rng = np.random.default_rng(0)
    multi = []  # (num relabelled, rankm, rs, error)
    for _ in range(FLAGS.orders):
        perm = rng.permutation(num_sup)
        labels = sup.copy()
        for step in range(num_sup + 1):
            if step:
                labels = np.where(sup == perm[step - 1], num_sup + fine, labels)
            multi.append((step, granularity(feats, labels, "rankm"), granularity(feats, labels, "rs"),
                          lr_train_error(feats, labels)))
    pairs = []  # (a, b, same super-class, rankm, rs, error)
    all_pairs = list(itertools.combinations(range(data.num_classes), 2))
    idx = rng.permutation(len(all_pairs))[:FLAGS.max_pairs]
    for a, b in (all_pairs[i] for i in sorted(idx)):
        keep = (fine == a) | (fine == b)
        x, y = feats[keep], fine[keep]
        pairs.append((a, b, bool(data.superclass_of[a] == data.superclass_of[b]),
                      granularity(x, y, "rankm"), granularity(x, y, "rs"), lr_train_error(x, y)))
    m = np.array([r[1:] for r in multi])
    p = np.array([r[3:] for r in pairs])
    result = {
        "features": "small CNN trained on the 8 coarse labels, synthetic test split",
        "multi_class": {"rows": [dict(relabelled=r[0], rankm=r[1], rs=r[2], lr_train_error=r[3]) for r in multi],
                        "pearson_rankm_error": float(pearsonr(m[:, 0], m[:, 2])[0]),
                        "pearson_rs_error": float(pearsonr(m[:, 1], m[:, 2])[0])},
        "pairs": {"count": len(pairs),
                  "pearson_rankm_error": float(pearsonr(p[:, 0], p[:, 2])[0]),
                  "pearson_rs_error": float(pearsonr(p[:, 1], p[:, 2])[0]),
                  "mean_rankm_same_superclass": float(np.mean([r[3] for r in pairs if r[2]])),
                  "mean_rankm_different_superclass": float(np.mean([r[3] for r in pairs if not r[2]])),
                  "most_fine_grained": [dict(a=data.class_names[r[0]], b=data.class_names[r[1]], rankm=r[3],
                                             lr_train_error=r[5])
                                        for r in sorted(pairs, key=lambda r: -r[3])[:5]]},
    }
    result["seconds"] = time.time() - t0
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "granularity_difficulty.json"), "w") as f:
        json.dump(result, f, indent=2)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sc = axes[0].scatter(m[:, 0], m[:, 2], c=[r[0] for r in multi], cmap="viridis")
    fig.colorbar(sc, ax=axes[0], label="# super-classes re-labelled fine")
    axes[0].set_title(f"Fig 6.7 analogue (rho = {result['multi_class']['pearson_rankm_error']:.3f})")
    axes[0].set_xlabel("granularity (RankM)")
    axes[0].set_ylabel("LR training error")
    same = np.array([r[2] for r in pairs])
    axes[1].scatter(p[~same, 0], p[~same, 2], s=8, label="different super-class", alpha=0.6)
    axes[1].scatter(p[same, 0], p[same, 2], s=8, label="same super-class", alpha=0.8)
    axes[1].set_title(f"Fig 6.8 analogue: class pairs (rho = {result['pairs']['pearson_rankm_error']:.3f})")
    axes[1].set_xlabel("granularity (RankM)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.output_dir, "granularity_difficulty.png"), dpi=100)
    print(json.dumps({"multi_rho": result["multi_class"]["pearson_rankm_error"],
                      "pairs": {k: v for k, v in result["pairs"].items() if k != "most_fine_grained"},
                      "seconds": result["seconds"]}, indent=1))


if __name__ == "__main__":
    app.run(main)
