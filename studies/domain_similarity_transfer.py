"""Seed 000 §4.3 / Fig. 4.6 analogue: EMD domain similarity vs transfer accuracy (small, synthetic).

Data: the synthetic dataset with 80 classes in 8 super-classes (10 fine classes each), 64x64.
Within each super-class the first 5 classes form the *source pool* and the last 5 the *target pool*,
so no class is shared between a source and a target.

* Sources S_j (j = 0..3): the source-pool classes of super-classes {2j, 2j+1} (10 classes).  A small
  CNN is pre-trained on each source from scratch (train split).
* Targets T: the target-pool classes of a pair of super-classes (10 classes); the 8 pairs
  {0,1} {2,3} {4,5} {6,7} {1,2} {3,4} {5,6} {7,0} overlap a source in 2, 1 or 0 super-classes.
* Transfer accuracy(S -> T): a logistic regression on the source CNN's embedding of T's train
  images, evaluated on T's test images (the seed fine-tunes; a linear probe keeps this CPU-sized).
* Similarity sim(S, T) = exp(-0.01 EMD) on class means of a *generic* feature extractor g (the
  seed's JFT ResNet): a small CNN trained on the whole 40-class source pool.

Also: `select_source_classes` over the 40-class source pool per target (k=5), and the fraction of the
selected classes that share the target's super-class.

    python studies/domain_similarity_transfer.py --output_dir runs/studies/domain_similarity_transfer
"""

from __future__ import annotations

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
from finegrain_tf.analysis.emd_similarity import (  # noqa: E402
    emd_distance, plot_top_classes, select_source_classes)
from finegrain_tf.analysis.features import class_means_from_features  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/studies/domain_similarity_transfer", "where PNG + JSON go")
flags.DEFINE_integer("num_domains", 4, "super-classes used as sources / targets")
flags.DEFINE_integer("epochs", 15, "pre-training epochs per source CNN")
flags.DEFINE_integer("train_per_class", 40, "train images per class")
flags.DEFINE_integer("image_size", 64, "image side (at 32 px the fine cues vanish: probes sit at chance)")
flags.DEFINE_float("gamma", 0.01, "gamma of sim = exp(-gamma EMD) (the seed's 0.01)")


def probe_accuracy(train_x, train_y, test_x, test_y) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=1.0, max_iter=500).fit(scaler.transform(train_x), train_y)
    return float(clf.score(scaler.transform(test_x), test_y))


def main(argv):
    del argv
    from scipy.stats import pearsonr, spearmanr

    t0 = time.time()
    data = common.synthetic_data(num_classes=80, num_superclasses=8, train_per_class=FLAGS.train_per_class,
                                 test_per_class=20, image_size=FLAGS.image_size)
    sup = data.superclass_of
    classes_of = {s: np.flatnonzero(sup == s) for s in range(8)}
    source_pool = np.concatenate([classes_of[s][:5] for s in range(8)])
    source_sc = {j: (2 * j, 2 * j + 1) for j in range(4)}
    target_sc = [(0, 1), (2, 3), (4, 5), (6, 7), (1, 2), (3, 4), (5, 6), (7, 0)]
    source_of = {j: np.concatenate([classes_of[s][:5] for s in scs]) for j, scs in source_sc.items()}
    target_of = {t: np.concatenate([classes_of[s][5:] for s in scs]) for t, scs in enumerate(target_sc)}
    xtr, ytr = data.images["train"], data.labels["train"]
    xte, yte = data.images["test"], data.labels["test"]

    def subset(x, y, classes):
        keep = np.isin(y, classes)
        remap = {c: i for i, c in enumerate(classes)}
        return x[keep], np.array([remap[v] for v in y[keep]])

    # Generic extractor g: trained on the whole source pool (fine labels).
    gx, gy = subset(xtr, ytr, list(source_pool))
    g_model = common.train_cnn(gx, gy, len(source_pool), epochs=FLAGS.epochs)
    g_train = common.embed(g_model, xtr)
    means, counts = class_means_from_features(g_train, ytr, num_classes=data.num_classes)

    rows = []
    for j, s_classes in source_of.items():
        sx, sy = subset(xtr, ytr, list(s_classes))
        src_model = common.train_cnn(sx, sy, len(s_classes), epochs=FLAGS.epochs, seed=j + 1)
        for t, t_classes in target_of.items():
            trx, try_ = subset(xtr, ytr, list(t_classes))
            tex, tey = subset(xte, yte, list(t_classes))
            acc = probe_accuracy(common.embed(src_model, trx), try_, common.embed(src_model, tex), tey)
            emd = emd_distance(means[s_classes], counts[s_classes], means[t_classes], counts[t_classes])
            overlap = len(set(source_sc[j]) & set(target_sc[t]))
            rows.append({"source": j, "source_superclasses": list(source_sc[j]), "target": t,
                         "target_superclasses": list(target_sc[t]), "shared_superclasses": overlap,
                         "emd": emd, "similarity": float(np.exp(-FLAGS.gamma * emd)),
                         "transfer_accuracy": acc})
    emds = np.array([r["emd"] for r in rows])
    accs = np.array([r["transfer_accuracy"] for r in rows])
    sims = np.array([r["similarity"] for r in rows])
    best_by_sim = {s: max((r for r in rows if r["target"] == s), key=lambda r: r["similarity"])["source"]
                   for s in target_of}
    best_by_acc = {s: max((r for r in rows if r["target"] == s), key=lambda r: r["transfer_accuracy"])["source"]
                   for s in target_of}
    # Source-class selection over the whole 40-class pool.
    selections, precision = {}, {}
    for t, t_classes in target_of.items():
        sel = select_source_classes(means[source_pool], counts[source_pool], means[t_classes],
                                    counts[t_classes], k=10)
        picked = source_pool[sel.indices]
        selections[f"T{t}_sc{target_sc[t][0]}{target_sc[t][1]}"] = sel
        precision[t] = float(np.mean(np.isin(sup[picked], target_sc[t])))
    result = {
        "design": "80 synthetic classes / 8 super-classes; sources and targets are disjoint class sets",
        "pairs": rows,
        "pearson_similarity_accuracy": float(pearsonr(sims, accs)[0]),
        "spearman_similarity_accuracy": float(spearmanr(sims, accs)[0]),
        "pearson_emd_accuracy": float(pearsonr(emds, accs)[0]),
        "similarity_range": [float(sims.min()), float(sims.max())],
        "mean_accuracy_by_shared_superclasses": {
            str(v): float(np.mean([r["transfer_accuracy"] for r in rows if r["shared_superclasses"] == v]))
            for v in (0, 1, 2)},
        "mean_similarity_by_shared_superclasses": {
            str(v): float(np.mean([r["similarity"] for r in rows if r["shared_superclasses"] == v]))
            for v in (0, 1, 2)},
        "most_similar_source_is_best_transfer": {str(s): best_by_sim[s] == best_by_acc[s] for s in target_of},
        "selection_same_superclass_precision_k10": {str(s): p for s, p in precision.items()},
        "seconds": None,
    }
    result["seconds"] = time.time() - t0
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "domain_similarity_transfer.json"), "w") as f:
        json.dump(result, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    shared = np.array([r["shared_superclasses"] for r in rows])
    for v, marker in ((0, "o"), (1, "s"), (2, "*")):
        ax.scatter(emds[shared == v], accs[shared == v], marker=marker, s=60 if v < 2 else 140,
                   label=f"source shares {v} super-class(es) with the target")
    for r in rows:
        ax.annotate(f"S{r['source']}->T{r['target']}", (r["emd"], r["transfer_accuracy"]), fontsize=7)
    ax.set_xlabel("EMD(S, T) on generic features (sim = exp(-gamma EMD) decreases to the right)")
    ax.set_ylabel("transfer accuracy (linear probe)")
    ax.set_title(f"Fig 4.6 analogue: Pearson(sim, acc) = {result['pearson_similarity_accuracy']:.3f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.output_dir, "domain_similarity_transfer.png"), dpi=100)
    names = [data.class_names[i] for i in source_pool]
    plot_top_classes(dict(list(selections.items())[:4]),
                     os.path.join(FLAGS.output_dir, "domain_similarity_selection.png"), class_names=names, top=10)
    print(json.dumps({k: v for k, v in result.items() if k != "pairs"}, indent=1))


if __name__ == "__main__":
    app.run(main)
