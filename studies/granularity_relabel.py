"""Seed 000 §6.3.2 / Fig. 6.5: coarse -> fine relabelling on the synthetic hierarchy.

Features: the coarse-trained small CNN of `granularity_common` (test split, 40 classes in 8
super-classes of 5).  Starting from the 8 coarse labels, super-classes are re-labelled to their fine
classes one at a time in a random order (--orders shuffles); the oracle says granularity must rise
at every step.  Reported: mean/std per step for RS, RSM, Rank, RankM, and the fraction of single
steps at which each measure increased.  CIFAR-100 coarse/fine (the seed's data) is not available
offline here; the JSON records whether tfds had it prepared.

    python studies/granularity_relabel.py --output_dir runs/studies/granularity_relabel
"""

from __future__ import annotations

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
flags.DEFINE_string("output_dir", "runs/studies/granularity_relabel", "where PNG + JSON go")
flags.DEFINE_string("cache_dir", "runs/studies/_cache", "shared CNN / feature cache")
flags.DEFINE_integer("orders", 30, "random re-labelling orders (100 in the seed)")
flags.DEFINE_bool("cifar", True, "check whether CIFAR-100 is prepared in tfds")

MEASURES = ("rs", "rsm", "rank", "rankm")


def relabel_curve(feats, fine, superclass_of, orders, rng):
    sup = superclass_of[fine]
    num_sup = int(superclass_of.max()) + 1
    out = {m: np.zeros((orders, num_sup + 1)) for m in MEASURES}
    for o in range(orders):
        perm = rng.permutation(num_sup)
        labels = sup.copy()  # coarse ids 0..S-1; fine ids are offset by S
        for step in range(num_sup + 1):
            if step > 0:
                s = perm[step - 1]
                labels = np.where(sup == s, num_sup + fine, labels)
            for m in MEASURES:
                out[m][o, step] = granularity(feats, labels, m)
    return out


def cifar100_on_disk() -> bool:
    """Whether tfds already has CIFAR-100 prepared locally (this study never downloads)."""
    try:
        import tensorflow_datasets as tfds

        return tfds.builder("cifar100").is_prepared()
    except Exception:
        return False


def main(argv):
    del argv
    t0 = time.time()
    data, _, feats = common.coarse_setup(FLAGS.cache_dir)
    fine = data.labels["test"]
    rng = np.random.default_rng(0)
    curves = relabel_curve(feats, fine, data.superclass_of, FLAGS.orders, rng)
    result = {"features": "small CNN trained on the 8 coarse labels (synthetic train split), test split",
              "num_samples": int(fine.size), "orders": FLAGS.orders,
              "mean": {m: c.mean(axis=0).tolist() for m, c in curves.items()},
              "std": {m: c.std(axis=0).tolist() for m, c in curves.items()},
              "fraction_of_steps_increasing": {
                  m: float(np.mean(np.diff(c, axis=1) > 0)) for m, c in curves.items()},
              "mean_curve_monotone": {m: bool(np.all(np.diff(c.mean(axis=0)) > 0)) for m, c in curves.items()}}
    result["cifar100"] = ("prepared in tfds but not processed by this CPU-scale study"
                          if FLAGS.cifar and cifar100_on_disk() else "not on disk (no download); skipped")
    result["seconds"] = time.time() - t0
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "granularity_relabel.json"), "w") as f:
        json.dump(result, f, indent=2)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.5))
    steps = np.arange(len(result["mean"]["rankm"]))
    for ax, m in zip(axes, MEASURES):
        mu, sd = np.array(result["mean"][m]), np.array(result["std"][m])
        ax.plot(steps, mu, marker="o")
        ax.fill_between(steps, mu - sd, mu + sd, alpha=0.3)
        ax.set_title(f"{m.upper() if m != 'rankm' else 'RankM'} "
                     f"({100 * result['fraction_of_steps_increasing'][m]:.0f}% steps up)")
        ax.set_xlabel("# super-classes re-labelled fine")
    axes[0].set_ylabel("granularity")
    fig.suptitle("Fig 6.5 analogue: synthetic hierarchy, coarse -> fine re-labelling")
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.output_dir, "granularity_relabel.png"), dpi=100)
    print(json.dumps({k: result[k] for k in ("mean", "fraction_of_steps_increasing", "seconds")}, indent=1))


if __name__ == "__main__":
    app.run(main)
