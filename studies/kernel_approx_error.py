"""Kernel approximation error of kernel pooling (seed 000 §3.3.2, eq 3.12, Fig 3.6): why random ReLU
features gave 19 % where the seed shows ~1 %, and which setting reproduces ~1 %.

The relative error of phi(x)^T phi(y) against exp(-gamma ||x - y||^2) is swept over
  * the feature distribution: L2-normalised means of `pool` ReLU(N(0, 1)) vectors (pool = 1 is the
    old stand-in; pooled activations of a CNN are dense and similar, mean cosine ~0.7-0.9),
  * gamma: the §3.3.2 estimate 1 / mean <x, y> and fixed values,
  * the sketch dimension d_bar and the order p,
over --seeds seeds (features, pairs and hashes all change with the seed). Writes
`kernel_approx_error.json` (records + per-family headline mean ± std at p = 4, d_bar = 4096,
estimated gamma) and `kernel_approx_error.png` to --output_dir (default studies/results).

Findings (studies/results/kernel_approx_error.json, 3 seeds, 1000 pairs, c = 512, p = 4, d_bar = 4096):
  * With gamma = 1 / mean <x, y> (§3.3.2) a typical pair has 2 gamma x^T y ~ 2, so the order-4
    Taylor truncation alone is ~5.3 % (1 - 7 / e^2) whatever the features: 6.2-6.4 % on pooled
    (dense, cosine 0.65-0.97) features.
  * Random ReLU features (cosine 1/pi) give gamma ~ pi; then K = exp(-2 gamma (1 - cos)) is small
    against the sketch noise of the high orders (~ alpha_p^2, `noise_to_kernel` ~ 8.6): 20.0 ± 0.5 %,
    of which 5.4 % truncation. The feature distribution matters only through gamma and the cosine.
  * ~1 % needs a smaller gamma: 0.6-0.8 % at gamma = 0.5 and 0.16-0.21 % at 0.25 on every feature
    family (the sketch noise then also shrinks); at gamma = 1, 2.2-5.6 %. A very small gamma makes the
    RBF kernel nearly flat, so a small relative error is easy there; the seed's "proper gamma" is
    presumably the best of its sweep, not the §3.3.2 estimate.

  * Trained-CNN features (--features=coarse_cnn, below; 3 seeds): the local descriptors are sparse,
    mean cosine 0.30 (like pool1, not pool16), so the §3.3.2 gamma is ~3.3 and the error 45.4 ± 3.9 %
    (12 % truncation); at gamma = 0.5 it is 0.58 ± 0.07 % and at 0.25 0.15 ± 0.02 %. The 2 x 2-pooled
    vectors (cosine 0.38): 24.7 % at the estimate, 0.15 % at gamma = 0.25.

Trained-backbone features (added after the main run, --features=coarse_cnn; the metric, pairs, grid
and seeds unchanged): seed s's coarse CNN of studies/granularity_common.py (small_cnn width 16 trained
25 epochs on the 8 super-class labels of its synthetic set, 32 px; cached under runs/studies/_cache,
re-trained there exactly as those studies do when missing), applied in inference mode to its test
split (1200 images). Its last conv feature map (relu3_1, 2 x 2 x 128 at 32 px) gives two families,
each L2-normalised:
  * cnn_local: the local descriptors, one per spatial position (the vectors kernel pooling approximates
    the kernel on, like the seed's conv5_3 positions); --num_features of them drawn at random
    (all-zero ones, which cannot be normalised, are dropped and counted);
  * cnn_pool4: the mean of the map's 2 x 2 = 4 positions (the pooled vector; pool16's counterpart,
    which averages 16 vectors, but the map has only 4 positions).
Their records are merged into the stored JSON (the random ReLU families are not recomputed), and
cnn_local gets its own claims next to the random-ReLU pool16 ones.

    python -m studies.kernel_approx_error                 # ~12 min on 2 shared cores
    python -m studies.kernel_approx_error --features=coarse_cnn   # adds the trained-CNN families (~1 min)
    python -m studies.kernel_approx_error --features=feats.npy   # any [N, c] backbone features
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # plotting, claims_table

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "studies/results", "Where PNG + JSON go.")
flags.DEFINE_string("features", "pooled_relu", "'pooled_relu' (the --pools sweep), 'coarse_cnn' (local "
                    "and pooled features of the trained coarse CNNs, merged into the stored JSON) or a .npy [N, c].")
flags.DEFINE_string("cache_dir", "runs/studies/_cache", "cache of the coarse CNNs (studies/granularity_common.py)")
flags.DEFINE_list("pools", ["1", "4", "16", "64"], "Vectors averaged per pooled ReLU feature.")
flags.DEFINE_integer("feature_dim", 512, "c for random features (512 like VGG-16 conv5_3).")
flags.DEFINE_integer("num_features", 3000, "Number of random feature vectors.")
flags.DEFINE_integer("num_pairs", 1000, "Feature pairs averaged per data point (the seed: 100K).")
flags.DEFINE_list("dims", ["256", "1024", "4096"], "d_bar values.")
flags.DEFINE_list("orders", ["2", "3", "4"], "Orders p.")
flags.DEFINE_list("gammas", ["estimated", "0.25", "0.5", "1"],
                  "gamma values; 'estimated' = 1 / mean <x, y> (§3.3.2).")
flags.DEFINE_integer("seeds", 3, "Seeds 0..seeds-1 of the features, the pairs and the hashes.")
flags.DEFINE_boolean("plot_only", False, "Redraw the PNG from the JSON in --output_dir.")
flags.DEFINE_boolean("claims_only", False,
                     "Recompute the JSON's \"claims\" from its stored records (no sweep) and rewrite it.")

# The feature family that looks most like the seed's pooled CNN activations (mean cosine ~0.9).
SEED_LIKE_FAMILY = "pool16"
# The trained-backbone family in the seed's setting (local descriptors of the last conv map).
CNN_FAMILY = "cnn_local"
CNN_FAMILIES = ("cnn_local", "cnn_pool4")
CNN_LAYER = "relu3_1"  # small_cnn's last conv block output
FAMILY_TEXT = {
    "pool16": "random ReLU features: L2-normalised means of 16 ReLU(N(0, 1)) vectors, c = 512",
    "cnn_local": "trained-CNN features: L2-normalised local descriptors of the coarse CNN's last conv map "
                 "(2 x 2 x 128, 32 px synthetic test images)",
}
WHY_DATA = {
    "pool16": "random ReLU features without pooling (pool1, cosine 1/pi) give the issue's 20 %; features "
              "are synthetic pooled ReLU vectors, not trained-backbone activations",
    "cnn_local": "the trained CNN's local descriptors are sparse like unpooled random ReLU vectors (pool1, "
                 "cosine 1/pi), so the estimate is large; the backbone is a small CNN trained on 32 px "
                 "synthetic images (c = 128), not VGG-16 conv5_3 on CUB",
}
CNN_CHANGE = ("trained-backbone feature families cnn_local / cnn_pool4 (the cached coarse CNNs' last conv map) "
              "added after the main run with --features=coarse_cnn, with their own claims; the random ReLU "
              "records and claims are kept (now labelled); metric, pairs, grid and seeds unchanged")


def cnn_features(np, ka, seed):
    """(families {name: [N, c]}, info) from seed's coarse CNN: local descriptors and pooled vectors of
    its last conv map on its test split, each row L2-normalised."""
    import keras

    import granularity_common

    setup = granularity_common.coarse_setup(seed, FLAGS.cache_dir)
    trunk = keras.Model(setup.model.input, setup.model.get_layer(CNN_LAYER).output)
    maps = np.asarray(trunk.predict(setup.data.images["test"].astype(np.float32), batch_size=256, verbose=0),
                      np.float64)
    local = maps.reshape(-1, maps.shape[-1])
    nonzero = np.linalg.norm(local, axis=1) > 0
    local = local[nonzero]
    pick = np.random.RandomState(seed).choice(len(local), min(FLAGS.num_features, len(local)), replace=False)
    pooled = maps.mean(axis=(1, 2))
    pooled = pooled[np.linalg.norm(pooled, axis=1) > 0]
    info = {"seed": seed, "map_shape": list(maps.shape[1:]), "test_images": int(len(maps)),
            "local_zero_dropped": int((~nonzero).sum()), "local_used": int(len(pick)),
            "pooled_used": int(len(pooled)), "coarse_cnn": setup.report}
    return {"cnn_local": ka.l2_normalize(local[pick]), "cnn_pool4": ka.l2_normalize(pooled)}, info


def _families(np, ka, seed, cnn_info=None):
    if FLAGS.features == "coarse_cnn":
        families, info = cnn_features(np, ka, seed)
        logging.info("coarse CNN seed %d features: %s", seed, info)
        cnn_info.append(info)
        yield from families.items()
        return
    if FLAGS.features != "pooled_relu":
        yield "file", ka.l2_normalize(np.load(FLAGS.features))
        return
    for pool in [int(p) for p in FLAGS.pools]:
        yield f"pool{pool}", ka.pooled_relu_features(FLAGS.num_features, FLAGS.feature_dim, pool, seed)


def main(argv):
    del argv
    if FLAGS.features not in ("pooled_relu", "coarse_cnn") and not os.path.isfile(FLAGS.features):
        raise app.UsageError(f"--features={FLAGS.features!r} is neither 'pooled_relu', 'coarse_cnn' nor a "
                             ".npy file")
    import numpy as np

    from finegrain_tf.analysis import kernel_approx as ka

    gammas = [None if g == "estimated" else float(g) for g in FLAGS.gammas]
    dims, orders = [int(d) for d in FLAGS.dims], [int(p) for p in FLAGS.orders]
    json_path = os.path.join(FLAGS.output_dir, "kernel_approx_error.json")
    png_path = os.path.join(FLAGS.output_dir, "kernel_approx_error.png")
    if FLAGS.plot_only:
        records = json.load(open(json_path))["records"]
        families = sorted({r["family"] for r in records}, key=lambda f: (len(f), f))
        plot(records, families, dims, orders, png_path)
        return
    if FLAGS.claims_only:
        from claims_table import rewrite_claims

        rewrite_claims(json_path, lambda summary: all_claims(summary["records"]))
        return
    records, cnn_info = [], []
    for seed in range(FLAGS.seeds):
        for family, feats in _families(np, ka, seed, cnn_info):
            recs = ka.approximation_error_sweep(feats, dims, orders, gammas, FLAGS.num_pairs, seed)
            for r in recs:
                r.update(family=family, seed=seed)
                logging.info("%s seed %d gamma=%.3g p=%d d=%d: eps %.4f (truncation %.4f, cos %.3f)",
                             family, seed, r["gamma"], r["order"], r["dim"], r["mean"],
                             r["truncation"], r["mean_cosine"])
            records += recs
    stored = {}
    if FLAGS.features == "coarse_cnn":  # merge into the stored random-ReLU sweep
        with open(json_path) as f:
            stored = json.load(f)
        records = [r for r in stored["records"] if r["family"] not in CNN_FAMILIES] + records
    families = sorted({r["family"] for r in records}, key=lambda f: (len(f), f))
    headline = {}
    for family in families:
        rs = [r for r in records if r["family"] == family and r["gamma_estimated"]
              and r["order"] == 4 and r["dim"] == 4096]
        if rs:
            headline[family] = {key: [float(np.mean([r[key] for r in rs])), float(np.std([r[key] for r in rs]))]
                                for key in ("mean", "truncation", "gamma", "mean_cosine", "mean_kernel",
                                            "noise_to_kernel")}
            logging.info("headline %s: eps %.4f ± %.4f at gamma %.3f (cos %.3f)", family,
                         *headline[family]["mean"], headline[family]["gamma"][0],
                         headline[family]["mean_cosine"][0])
    best = {}
    for family in families:
        by_gamma = {}
        for r in records:
            if r["family"] == family and r["order"] == 4 and r["dim"] == 4096:
                key = "estimated" if r["gamma_estimated"] else f"{r['gamma']:g}"
                by_gamma.setdefault(key, []).append(r["mean"])
        key = min(by_gamma, key=lambda g: np.mean(by_gamma[g]))
        best[family] = {"gamma": key, "mean": float(np.mean(by_gamma[key])),
                        "std": float(np.std(by_gamma[key]))}
        logging.info("best gamma %s: %s -> eps %.4f ± %.4f", family, key, best[family]["mean"],
                     best[family]["std"])
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    summary = {"best_gamma_p4_d4096_mean_std_over_seeds": best,"claim": "seed 000 Fig 3.6: ~1 % mean relative error at d_bar = 4096, p = 4",
               "features": FLAGS.features, "feature_dim": FLAGS.feature_dim, "num_pairs": FLAGS.num_pairs,
               "seeds": FLAGS.seeds,
               "headline_p4_d4096_gamma_estimated_mean_std": headline, "records": records}
    if stored:
        summary["features"] = f"{stored['features']} (feature_dim {stored['feature_dim']}) + coarse_cnn"
        summary["design_changes"] = stored.get("design_changes", [])
        if CNN_CHANGE not in summary["design_changes"]:
            summary["design_changes"].append(CNN_CHANGE)
        summary["cnn_features"] = {"layer": CNN_LAYER, "per_seed": cnn_info}
    if SEED_LIKE_FAMILY in families:
        summary["claims"] = all_claims(records)
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=1)
    plot(records, families, dims, orders, png_path)

def all_claims(records) -> list:
    """The random-ReLU pool16 claims, then the trained-CNN cnn_local ones when the records have them."""
    out = claims(records, SEED_LIKE_FAMILY)
    if any(r["family"] == CNN_FAMILY for r in records):
        out += claims(records, CNN_FAMILY)
    return out


def claims(records, family: str = SEED_LIKE_FAMILY, top_dim: int = 4096, order: int = 4) -> list:
    """The seed's Fig 3.6 statements next to ours (studies/README.md table), from the sweep's records;
    each claim is labelled with the feature source (`family`).

    Each figure is the mean +- std over seeds (ddof=1) of the per-seed mean relative error."""
    import numpy as np

    import plotting

    def errors(gamma, p=order, dim=top_dim):
        return [r["mean"] for r in records if r["family"] == family and r["order"] == p and r["dim"] == dim
                and (r["gamma_estimated"] if gamma == "est" else (not r["gamma_estimated"] and r["gamma"] == gamma))]

    def pct(values):
        return plotting.mean_std_text(values, digits=2, scale=100, unit=" %")

    gammas = sorted({r["gamma"] for r in records if not r["gamma_estimated"]})
    dims = sorted({r["dim"] for r in records})
    orders = sorted({r["order"] for r in records})
    cosine = float(np.mean([r["mean_cosine"] for r in records if r["family"] == family]))
    feats = f"{family} ({FAMILY_TEXT[family]}; mean cosine {cosine:.2f})"
    source = "[random ReLU features] " if family == SEED_LIKE_FAMILY else "[trained-CNN local features] "
    at_est = errors("est")
    top_est = [r for r in records if r["family"] == family and r["gamma_estimated"] and r["order"] == order
               and r["dim"] == top_dim]
    est_gamma = float(np.mean([r["gamma"] for r in top_est]))
    est_truncation = float(np.mean([r["truncation"] for r in top_est]))
    best_gamma = min(gammas, key=lambda g: np.mean(errors(g)))
    within = [g for g in sorted(gammas, reverse=True) if float(np.mean(errors(g))) <= 0.015]
    near_one = bool(within)
    small_gamma_text = ("; ".join(f"{pct(errors(g))} at gamma = {g:g}" for g in within) if within
                        else f"{pct(errors(best_gamma))} at the best gamma = {best_gamma:g}")
    # Orderings, judged on the mean over seeds.
    by_dim = {g: [float(np.mean(errors(g, dim=d))) for d in dims] for g in ["est"] + gammas}
    dim_ok = {g: bool(np.all(np.diff(v) <= 0)) for g, v in by_dim.items()}
    by_order = {g: [float(np.mean(errors(g, p=p))) for p in orders] for g in ["est"] + gammas}
    order_ok = {g: bool(np.all(np.diff(v) <= 0)) for g, v in by_order.items()}
    by_gamma = [float(np.mean(errors(g))) for g in gammas]

    def fmt(values):
        return " -> ".join(f"{100 * v:.2f}" for v in values) + " %"

    def falls(ok: dict) -> dict:
        """reproduced / why of a "the error falls along this axis" claim, from {gamma: monotone?}."""
        bad = ", ".join(str(g) for g, good in ok.items() if not good)
        return {"reproduced": "yes" if not bad else ("partly" if any(ok.values()) else "no"),
                "why": f"not monotone at gamma {bad}" if bad else ""}

    rows = [
        {"claim": f"with d_bar = {top_dim}, p = {order} and a proper gamma, kernel pooling approximates the "
                  "Gaussian RBF kernel to about 1 % relative error (eq 3.12)",
         "seed_figure": "Fig 3.6 / §3.3.2: close to 1 % (VGG-16 conv5_3 on CUB, 100K pairs)",
         "ours": f"{pct(at_est)} at the §3.3.2 gamma = 1 / mean <x, y>; {small_gamma_text}; {feats}",
         "reproduced": "partly" if near_one else "no",
         "why": f"about 1 % needs a gamma below the §3.3.2 estimate ({est_gamma:.2f} at mean cosine {cosine:.2f}), "
                f"whose order-{order} Taylor truncation alone is {100 * est_truncation:.1f} %; " + WHY_DATA[family]},
        {"claim": "a higher feature pooling dimension d_bar gives a better approximation",
         "seed_figure": "Fig 3.6: error falls as d_bar grows (50 ... 5000)",
         "ours": f"p = {order}, d_bar = {', '.join(map(str, dims))}: {fmt(by_dim['est'])} (estimated gamma), "
                 f"{fmt(by_dim[best_gamma])} (gamma = {best_gamma:g}); means over n={len(at_est)} seeds, {family}",
         **falls(dim_ok)},
        {"claim": "the approximation error goes down with increasing order p",
         "seed_figure": "Fig 3.6: error falls from p = 2 to p = 4",
         "ours": f"d_bar = {top_dim}, p = {', '.join(map(str, orders))}: {fmt(by_order['est'])} (estimated gamma), "
                 f"{fmt(by_order[best_gamma])} (gamma = {best_gamma:g}); {family}",
         **falls(order_ok)},
        {"claim": "gamma plays a key role in the approximation error",
         "seed_figure": "Fig 3.6: curves for several gamma differ by orders of magnitude",
         "ours": f"p = {order}, d_bar = {top_dim}, gamma = {', '.join(f'{g:g}' for g in gammas)}: {fmt(by_gamma)}; "
                 f"estimated gamma: {pct(at_est)}",
         "reproduced": "yes" if max(by_gamma) >= 10 * min(by_gamma) else "partly",
         "why": "" if max(by_gamma) >= 10 * min(by_gamma) else "less than a tenfold spread over the gamma grid"},
    ]
    for row in rows:
        row["claim"] = source + row["claim"]
    return rows


def plot(records, families, dims, orders, path):
    """Error vs d_bar per family (estimated gamma), and error vs gamma at p = 4, d_bar = max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(families) + 1, figsize=(3.6 * (len(families) + 1), 3.4), squeeze=False)
    for ax, family in zip(axes[0], families):
        for order in orders:
            rs = [r for r in records if r["family"] == family and r["gamma_estimated"] and r["order"] == order]
            means = [np.mean([r["mean"] for r in rs if r["dim"] == d]) for d in dims]
            stds = [np.std([r["mean"] for r in rs if r["dim"] == d]) for d in dims]
            ax.errorbar(dims, means, yerr=stds, marker="o", capsize=3, label=f"p={order}")
        cos = np.mean([r["mean_cosine"] for r in records if r["family"] == family])
        gam = np.mean([r["gamma"] for r in records if r["family"] == family and r["gamma_estimated"]])
        ax.set_xscale("log", base=2)
        ax.set(yscale="log", xlabel="d_bar", title=f"{family}: cos {cos:.2f}, est. gamma {gam:.2f}")
        ax.axhline(0.01, color="k", lw=0.6, ls=":")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean relative error (eq 3.12)")
    axes[0][0].legend(fontsize=8)
    ax = axes[0][-1]
    top = max(dims)
    for family in families:
        rs = [r for r in records if r["family"] == family and r["order"] == 4 and r["dim"] == top]
        groups = {}  # the per-seed estimates of gamma form one point at their mean
        for r in rs:
            groups.setdefault("est" if r["gamma_estimated"] else r["gamma"], []).append(r)
        points = sorted((np.mean([r["gamma"] for r in g]), np.mean([r["mean"] for r in g]),
                         np.std([r["mean"] for r in g])) for g in groups.values())
        ax.errorbar(*zip(*points), marker="o", capsize=3, label=family)
    ax.set(xscale="log", yscale="log", xlabel="gamma", title=f"p=4, d_bar={top}: error vs gamma")
    ax.axhline(0.01, color="k", lw=0.6, ls=":")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Kernel pooling vs Gaussian RBF (seed 000 Fig 3.6), mean ± std over seeds; dotted: 1 %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
