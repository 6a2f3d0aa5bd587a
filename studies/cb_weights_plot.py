"""Class-balanced weights and effective numbers vs class size (seed 000 Fig 5.3 and Fig 5.6).

Left:   the class-balanced term (1 - beta) / (1 - beta^n) vs n for several beta (log-log, Fig 5.3; the
        un-normalised term, as the figure plots it).
Middle/right: effective number E_n = (1 - beta^n)/(1 - beta) per class of long-tailed CIFAR-10 and
        CIFAR-100 with imbalance factor 50 (semi-log, Fig 5.6), next to the number of samples.
Also writes the normalised weights (sum = C) per beta to JSON.

    python studies/cb_weights_plot.py --output_dir runs/studies/cb_weights
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from finegrain_tf.data.long_tail import long_tailed_counts  # noqa: E402
from finegrain_tf.losses.class_balanced import class_balanced_weights, effective_number  # noqa: E402

_OUT = flags.DEFINE_string("output_dir", "runs/studies/cb_weights", "where the PNG and JSON go")
_BETAS = flags.DEFINE_list("betas", ["0", "0.9", "0.99", "0.999", "0.9999"], "betas to plot")
_IF = flags.DEFINE_float("imbalance_factor", 50, "imbalance factor of the CIFAR-LT panels (Fig 5.6: 50)")


def compute(betas, imbalance_factor: float) -> dict:
    n = np.unique(np.round(np.logspace(0, 5, 200)).astype(np.int64))
    out = {"betas": betas, "fig5_3": {"n": n.tolist(), "term": {}}, "fig5_6": {}}
    for b in betas:
        out["fig5_3"]["term"][str(b)] = (1.0 / effective_number(n, b)).tolist()  # (1-b)/(1-b^n)
    for name, n_max, c in (("cifar10_lt", 5000, 10), ("cifar100_lt", 500, 100)):
        counts = long_tailed_counts(n_max, c, imbalance_factor)
        out["fig5_6"][name] = {
                "counts": counts.tolist(),
                "effective_number": {str(b): effective_number(counts, b).tolist() for b in betas},
                "weights_sum_to_C": {str(b): class_balanced_weights(counts, b).tolist() for b in betas},
        }
    return out


def plot(data: dict, path: str, imbalance_factor: float) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    n = np.asarray(data["fig5_3"]["n"])
    for b, term in data["fig5_3"]["term"].items():
        axes[0].loglog(n, term, label=f"beta = {b}")
    axes[0].set_xlabel("number of samples in the ground-truth class n_y")
    axes[0].set_ylabel("class-balanced term (1 - beta) / (1 - beta^n_y)")
    axes[0].set_title("Fig 5.3: class-balanced term vs class size")
    axes[0].legend(fontsize=8)
    for ax, (name, d) in zip(axes[1:], data["fig5_6"].items()):
        idx = np.arange(len(d["counts"]))
        ax.semilogy(idx, d["counts"], "k--", label="number of samples")
        for b, e in d["effective_number"].items():
            ax.semilogy(idx, e, label=f"beta = {b}")
        ax.set_xlabel("class index (sorted by size)")
        ax.set_ylabel("effective number of samples")
        ax.set_title(f"Fig 5.6: {name.replace('_lt', '').upper()}-LT, IF {imbalance_factor:g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    betas = [float(b) for b in _BETAS.value]
    os.makedirs(_OUT.value, exist_ok=True)
    data = compute(betas, _IF.value)
    png = os.path.join(_OUT.value, "cb_weights.png")
    plot(data, png, _IF.value)
    with open(os.path.join(_OUT.value, "cb_weights.json"), "w") as f:
        json.dump(data, f)
    logging.info("wrote %s and cb_weights.json", png)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
