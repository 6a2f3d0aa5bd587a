"""Fig 2.9 style plot: 2-D PCA of embeddings coloured by class (seed 000 §2.4.4).

Reads an `embeddings_<method>.npz` written by studies/metric_learning_study.py (arrays `train`,
`train_labels`, optionally `superclass_of`) and writes a PNG plus a small JSON with the explained
variance and an intra/inter-class spread summary.

    python studies/embedding_pca.py --embeddings runs/studies/metric_learning/embeddings_triplet_a.npz
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("embeddings", "runs/studies/metric_learning/embeddings_triplet_a.npz",
                    "npz with `train` [n, D] and `train_labels` [n]")
flags.DEFINE_string("split", "train", "array name in the npz to plot (train or test)")
flags.DEFINE_string("output_dir", "runs/studies/embedding_pca", "where the PNG and JSON go")
flags.DEFINE_string("title", "", "plot title (default: the npz name)")


def pca_2d(x: np.ndarray):
    """Projection on the two leading principal components and their explained-variance ratios."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0)
    return pca.fit_transform(x), pca.explained_variance_ratio_


def spread(x: np.ndarray, labels: np.ndarray) -> dict:
    """Mean distance to the class mean (intra) and mean distance between class means (inter)."""
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    intra = float(np.mean([np.linalg.norm(x[labels == c] - means[i], axis=1).mean()
                           for i, c in enumerate(classes)]))
    diff = means[:, None, :] - means[None, :, :]
    inter = float(np.linalg.norm(diff, axis=-1)[np.triu_indices(len(classes), 1)].mean())
    return {"intra_class": intra, "inter_class_means": inter}


def main(argv):
    del argv
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(FLAGS.embeddings)
    x = data[FLAGS.split]
    labels = data[f"{FLAGS.split}_labels"]
    xy, ratio = pca_2d(x)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(FLAGS.embeddings))[0]
    fig, ax = plt.subplots(figsize=(6, 6))
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab20", max(len(classes), 1))
    markers = "os^vD<>p*h"
    sup = data["superclass_of"] if "superclass_of" in data else np.zeros(len(classes), int)
    for i, c in enumerate(classes):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=10, color=cmap(i), marker=markers[int(sup[c]) % len(markers)],
                   label=str(c), alpha=0.8)
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% var)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% var)")
    ax.set_title(FLAGS.title or f"2-D PCA of {stem} ({FLAGS.split}); marker = super-class")
    if len(classes) <= 20:
        ax.legend(fontsize=6, ncol=2, markerscale=1.5, loc="best")
    fig.tight_layout()
    png = os.path.join(FLAGS.output_dir, f"{stem}_{FLAGS.split}_pca.png")
    fig.savefig(png, dpi=120)
    summary = {"embeddings": FLAGS.embeddings, "split": FLAGS.split, "png": png,
               "explained_variance_ratio": [float(r) for r in ratio], **spread(x, labels)}
    with open(os.path.join(FLAGS.output_dir, f"{stem}_{FLAGS.split}_pca.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
