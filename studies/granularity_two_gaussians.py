"""Seed 000 §6.3.1 / Fig. 6.4: granularity of two 2-D Gaussian classes as their means separate.

X_1 ~ N((0, 0), I), X_2 ~ N((m, 0), I), 1000 samples per class (as in the seed), Euclidean distance.
For each m the measures RS, RSM, Rank and RankM (and the silhouette baseline) are averaged over
--repeats draws (100 in the seed; Rank, the O(n^2 log n) measure, uses --rank_repeats to keep the
study within a few CPU minutes).  Expected: every granularity measure decreases as m grows (the
silhouette increases: it measures separation, not granularity).

    python studies/granularity_two_gaussians.py --output_dir runs/studies/granularity_two_gaussians
"""

from __future__ import annotations

import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from finegrain_tf.analysis.dataset_granularity import granularity  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/studies/granularity_two_gaussians", "where PNG + JSON go")
flags.DEFINE_list("m", ["0", "0.5", "1", "1.5", "2", "3", "4", "5", "6"], "distances between the means")
flags.DEFINE_integer("per_class", 1000, "samples per class")
flags.DEFINE_integer("repeats", 100, "draws per m for RS, RSM, RankM, silhouette")
flags.DEFINE_integer("rank_repeats", 10, "draws per m for Rank (O(n^2 log n))")
flags.DEFINE_integer("seed", 0, "random seed")

MEASURES = ("rs", "rsm", "rank", "rankm", "silhouette")


def main(argv):
    del argv
    t0 = time.time()
    ms = [float(v) for v in FLAGS.m]
    rng = np.random.default_rng(FLAGS.seed)
    y = np.repeat([0, 1], FLAGS.per_class)
    scores = {meas: np.full((len(ms), FLAGS.repeats), np.nan) for meas in MEASURES}
    for a, m in enumerate(ms):
        for r in range(FLAGS.repeats):
            x = rng.standard_normal((y.size, 2))
            x[y == 1, 0] += m
            for meas in MEASURES:
                if meas == "rank" and r >= FLAGS.rank_repeats:
                    continue
                scores[meas][a, r] = granularity(x, y, meas)
    result = {"m": ms, "per_class": FLAGS.per_class, "repeats": FLAGS.repeats,
              "rank_repeats": FLAGS.rank_repeats,
              "mean": {k: np.nanmean(v, axis=1).tolist() for k, v in scores.items()},
              "std": {k: np.nanstd(v, axis=1).tolist() for k, v in scores.items()}}
    result["monotone_decreasing"] = {
        k: bool(np.all(np.diff(result["mean"][k]) < 0)) for k in ("rs", "rsm", "rank", "rankm")}
    result["seconds"] = time.time() - t0
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "granularity_two_gaussians.json"), "w") as f:
        json.dump(result, f, indent=2)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for meas in ("rs", "rsm", "rank", "rankm"):
        mu, sd = np.array(result["mean"][meas]), np.array(result["std"][meas])
        axes[0].plot(ms, mu, marker="o", label=meas.upper() if meas != "rankm" else "RankM")
        axes[0].fill_between(ms, mu - sd, mu + sd, alpha=0.25)
    axes[0].set_xlabel("m (distance between class means)")
    axes[0].set_ylabel("granularity")
    axes[0].set_title("Fig 6.4: two Gaussians (mean ± std)")
    axes[0].legend()
    mu, sd = np.array(result["mean"]["silhouette"]), np.array(result["std"]["silhouette"])
    axes[1].plot(ms, mu, marker="o", color="gray")
    axes[1].fill_between(ms, mu - sd, mu + sd, alpha=0.25, color="gray")
    axes[1].set_xlabel("m")
    axes[1].set_title("silhouette baseline (higher = coarser)")
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.output_dir, "granularity_two_gaussians.png"), dpi=100)
    print(json.dumps({k: result[k] for k in ("mean", "monotone_decreasing", "seconds")}, indent=1))


if __name__ == "__main__":
    app.run(main)
