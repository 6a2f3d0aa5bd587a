"""Seed 004 ch.6 at CPU scale on the synthetic geo-tagged set: three experiments, several seeds.

Fixed before looking at results:
  * Data: `generate_geo(num_places=--places, photos_per_place=--per_place, image_size=--size)` with
    the seed; the test set is a separate collection of new places (seed + 1000), all seasons and
    hours, so every number measures generalisation to unseen places.
  * Pairs: §5.1.1's P_{30,2000} (positives within 10 m, far negatives beyond 2020 m), balanced.
  * Model: a Siamese small CNN tower (64-d, L2-normalised), contrastive loss (eq 4.1.3, margin 1),
    Nadam lr 0.002, gradient norm clipped at 1, --steps steps of --batch pairs.
  * Metric: accuracy on --triplets decisive rated triplets of the test collection (Q and the
    closer image show the same place; ground truth stands in for the Wang raters), and the
    contrastive training loss curve (learning speed = mean loss over the first 30 steps and the last
    30 steps).

Experiments:
  1. §6.1 weakly supervised embedding vs the same network untrained (random init).
  2. §6.2 fuzziness: the share of fuzzy photos (same place, unrelated content) at 0.0 / 0.3 / 0.6.
  3. §6.3 invariants: train on summer daytime photos only vs all seasons and hours; test on all
     (the "other" conditions included).

Findings (studies/results/geo_weak_supervision.json: seeds 0,1,2, --places 40 --per_place 6
--steps 100 --triplets 200, 32 px; 10 min on 2 shared cores), mean ± std over seeds:
  * §6.1: weakly supervised 0.590 ± 0.047 vs untrained 0.587 ± 0.047 rated-triplet accuracy: no
    measurable gain after 100 steps at this scale (the random tower already scores ~0.59 because
    same-place photos share colours).
  * §6.2: more fuzzy photos -> slower learning: final train loss (last 30 steps) 0.104 ± 0.014,
    0.120 ± 0.007, 0.133 ± 0.012 at fuzzy shares 0.0 / 0.3 / 0.6 (first 30 steps equal, ~0.184);
    test accuracy 0.610 ± 0.098, 0.582 ± 0.009, 0.535 ± 0.022 -- the same order, within the
    seed spread at 0.0.
  * §6.3: summer-daytime-only 0.615 ± 0.051 vs all seasons / hours 0.590 ± 0.047 on a test set of
    all conditions: no significant difference at this scale.

    python -m studies.geo_weak_supervision --seeds 0,1,2      # writes studies/results/geo_weak_supervision.{json,png}
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (data, pairs, init).")
flags.DEFINE_integer("places", 60, "Places per training collection.")
flags.DEFINE_integer("per_place", 6, "Photos per place.")
flags.DEFINE_integer("size", 32, "Image size.")
flags.DEFINE_integer("steps", 150, "Training steps per run.")
flags.DEFINE_integer("batch", 32, "Pairs per step.")
flags.DEFINE_integer("triplets", 300, "Decisive rated triplets in the test collection.")
flags.DEFINE_string("output_dir", "studies/results", "Where PNG + JSON go.")
flags.DEFINE_bool("claims_only", False, "Only recompute the JSON's \"claims\" from its stored runs.")


def _collection(seed, fuzzy_share=0.1, seasons=(0, 1, 2, 3), hours=tuple(range(24))):
    from finegrain_tf.data.synthetic_geo import generate_geo
    return generate_geo(num_places=FLAGS.places, photos_per_place=FLAGS.per_place, image_size=FLAGS.size,
                        seed=seed, fuzzy_share=fuzzy_share, seasons=seasons, hours=hours)


def _test_set(seed):
    from finegrain_tf.data.rated_triplets import generate_rated_triplets
    data = _collection(seed + 1000)
    return data, generate_rated_triplets(data, FLAGS.triplets, seed=seed, decisive_share=1.0)


def _accuracy(tower, test):
    from finegrain_tf.analysis.fuzziness import photo_embeddings
    from finegrain_tf.metrics.retrieval import triplet_accuracy
    data, rated = test
    emb = photo_embeddings(tower, data.photos, FLAGS.size)
    take = lambda ids: emb[np.asarray(ids)]  # noqa: E731
    return triplet_accuracy(take(rated.query), take(rated.a), take(rated.b), rated.closer)


def _tower(seed):
    import keras

    from finegrain_tf.models.siamese import build_tower
    keras.utils.set_random_seed(seed)
    return build_tower("small_cnn", 64, FLAGS.size)


def _train(data, seed):
    """Trains a Siamese tower on P_{30,2000} of `data`; returns (tower, loss per step)."""
    import tensorflow as tf

    from finegrain_tf.data.geo import pair_dataset
    from finegrain_tf.losses import ContrastiveLoss
    from finegrain_tf.models.siamese import build_siamese, thesis_optimizer
    from finegrain_tf.sampling.geo import sample_geo_pairs

    photos = data.photos
    pairs = sample_geo_pairs(photos.latitudes, photos.longitudes, positive_radius_m=10.0,
                             location_error_m=10.0, negative_min_m=2000.0, seed=seed)
    ds = pair_dataset(photos, pairs.left, pairs.right, pairs.labels, FLAGS.size, training=True, seed=seed)
    ds = ds.repeat().batch(FLAGS.batch, drop_remainder=True).prefetch(2)
    tower = _tower(seed)
    model = build_siamese(tower)
    optimizer, loss_fn = thesis_optimizer(), ContrastiveLoss(1.0, "thesis")

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
        return loss

    losses = [float(step(x, y)) for x, y in ds.take(FLAGS.steps)]
    return tower, losses, pairs.counts


def _speed(losses):
    return {"first30": float(np.mean(losses[:30])), "last30": float(np.mean(losses[-30:]))}


def _summary(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "values": values.tolist()}


def run_seed(seed: int) -> dict:
    test = _test_set(seed)
    out = {"seed": seed}
    default = _collection(seed)
    tower, losses, counts = _train(default, seed)
    out["weak"] = {"accuracy": _accuracy(tower, test), "loss": losses, "pair_counts": counts}
    out["untrained"] = {"accuracy": _accuracy(_tower(seed), test)}
    out["fuzzy"] = {}
    for share in (0.0, 0.3, 0.6):
        tower, losses, counts = _train(_collection(seed, fuzzy_share=share), seed)
        out["fuzzy"][str(share)] = {"accuracy": _accuracy(tower, test), "loss": losses, **_speed(losses),
                                    "pairs": counts["positives"] * 2}
    summer_day = _collection(seed, seasons=(2,), hours=tuple(range(9, 18)))
    tower, losses, counts = _train(summer_day, seed)
    out["invariants"] = {"summer_daytime_only": {"accuracy": _accuracy(tower, test)},
                         "all_seasons_hours": {"accuracy": out["weak"]["accuracy"]}}
    logging.info("seed %d: %s", seed, {k: v for k, v in out.items() if k != "fuzzy"})
    return out


def _plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = ["untrained", "weakly supervised"]
    acc = [[r["untrained"]["accuracy"] for r in runs], [r["weak"]["accuracy"] for r in runs]]
    axes[0].bar(names, [np.mean(a) for a in acc], yerr=[np.std(a) for a in acc], color=["grey", "tab:blue"])
    axes[0].axhline(0.5, ls="--", c="k", lw=0.8)
    axes[0].set_ylim(0, 1)
    axes[0].set_title("§6.1 rated-triplet accuracy (unseen places)")
    for share, colour in zip(("0.0", "0.3", "0.6"), ("tab:green", "tab:orange", "tab:red")):
        curves = np.array([r["fuzzy"][share]["loss"] for r in runs])
        smooth = np.array([np.convolve(c, np.ones(10) / 10, mode="valid") for c in curves])
        mean_acc = np.mean([r["fuzzy"][share]["accuracy"] for r in runs])
        axes[1].plot(smooth.mean(0), color=colour, label=f"fuzzy {share}: test acc {mean_acc:.2f}")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("train contrastive loss (10-step mean)")
    axes[1].set_title("§6.2 fuzziness vs learning")
    axes[1].legend(fontsize=8)
    inv = [[r["invariants"]["summer_daytime_only"]["accuracy"] for r in runs],
           [r["invariants"]["all_seasons_hours"]["accuracy"] for r in runs]]
    axes[2].bar(["summer daytime only", "all seasons / hours"], [np.mean(a) for a in inv],
                yerr=[np.std(a) for a in inv], color=["tab:purple", "tab:blue"])
    axes[2].axhline(0.5, ls="--", c="k", lw=0.8)
    axes[2].set_ylim(0, 1)
    axes[2].set_title("§6.3 invariants (test: all conditions)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def claims(runs) -> list:
    """Seed 004 ch.6's three goals next to our figures (studies/README.md table), from the per-seed runs.

    The seed states the goals but reports no figure (§6.2 and §6.3 are empty), so "reproduced" says
    whether our runs show the effect: a per-seed paired difference whose mean exceeds twice its
    standard error."""
    import plotting

    n = len(runs)

    def clear(diffs):
        diffs = np.asarray(diffs, np.float64)
        return n > 1 and abs(float(diffs.mean())) > 2 * float(diffs.std(ddof=1)) / np.sqrt(n)

    def text(values, digits=3):
        return plotting.mean_std_text(values, digits=digits)

    weak = [r["weak"]["accuracy"] for r in runs]
    untrained = [r["untrained"]["accuracy"] for r in runs]
    shares = sorted(runs[0]["fuzzy"], key=float)
    last30 = {s: [r["fuzzy"][s]["last30"] for r in runs] for s in shares}
    fuzzy_acc = {s: [r["fuzzy"][s]["accuracy"] for r in runs] for s in shares}
    summer = [r["invariants"]["summer_daytime_only"]["accuracy"] for r in runs]
    everything = [r["invariants"]["all_seasons_hours"]["accuracy"] for r in runs]
    weak_gain = np.subtract(weak, untrained)
    loss_rise = np.subtract(last30[shares[-1]], last30[shares[0]])
    loss_monotone = bool(np.all(np.diff([np.mean(last30[s]) for s in shares]) > 0))
    acc_monotone = bool(np.all(np.diff([np.mean(fuzzy_acc[s]) for s in shares]) < 0))
    slower = loss_monotone and float(loss_rise.mean()) > 0 and clear(loss_rise)
    invariant_gap = np.subtract(summer, everything)
    acc_drop = np.subtract(fuzzy_acc[shares[-1]], fuzzy_acc[shares[0]])
    fuzzy_verdict = ("yes" if slower and acc_monotone and clear(acc_drop)
                     else "partly" if slower or acc_monotone else "no")
    fuzzy_why = {"yes": "",
                 "partly": ("the final loss rises with fuzziness beyond seed noise "
                            f"({int(np.sum(loss_rise > 0))} of {n} seeds); the accuracy drop is within the "
                            "seed spread") if slower else
                           "test accuracy falls with fuzziness on average, but the loss does not rise beyond "
                           "seed noise",
                 "no": "neither the loss nor the accuracy changes with fuzziness beyond seed noise"}[fuzzy_verdict]
    return [
        {"claim": "a useful image embedding can be learned from fuzzily labelled, geo-tagged photos "
                  "(weak supervision from place)",
         "seed_figure": "seed 004 §6.1 goal 1 (no figure reported)",
         "ours": f"rated-triplet accuracy on unseen places: weakly supervised {text(weak)} vs the same "
                 f"tower untrained {text(untrained)}",
         "reproduced": "yes" if float(weak_gain.mean()) > 0 and clear(weak_gain) else "no",
         "why": "" if float(weak_gain.mean()) > 0 and clear(weak_gain) else
                "no gain over the untrained tower beyond seed noise at this scale (32 px, short training)"},
        {"claim": "fuzzier data (more same-place photos of unrelated content) slows learning and "
                  "hurts generalisation",
         "seed_figure": "seed 004 §6.2 goal 2 (section empty: no figure)",
         "ours": "final train loss " + ", ".join(f"{text(last30[s])} at {s}" for s in shares)
                 + "; test accuracy " + ", ".join(f"{text(fuzzy_acc[s])} at {s}" for s in shares),
         "reproduced": fuzzy_verdict,
         "why": fuzzy_why},
        {"claim": "invariants present in the training photos (seasons, hours) change how the embedding "
                  "generalises",
         "seed_figure": "seed 004 §6.3 goal 3 (section empty: no figure)",
         "ours": f"summer-daytime-only {text(summer)} vs all seasons and hours {text(everything)} on a test "
                 "set of all conditions",
         "reproduced": "yes" if clear(invariant_gap) else "no",
         "why": "" if clear(invariant_gap) else "no difference beyond seed noise at this scale"},
    ]


def main(argv):
    del argv
    if FLAGS.claims_only:
        from claims_table import rewrite_claims

        rewrite_claims(os.path.join(FLAGS.output_dir, "geo_weak_supervision.json"), lambda r: claims(r["runs"]))
        return
    start = time.time()
    runs = [run_seed(int(s)) for s in FLAGS.seeds]
    result = {
            "settings": {k: getattr(FLAGS, k) for k in ("seeds", "places", "per_place", "size", "steps",
                                                         "batch", "triplets")},
            "weak_vs_untrained": {"untrained": _summary([r["untrained"]["accuracy"] for r in runs]),
                                  "weakly_supervised": _summary([r["weak"]["accuracy"] for r in runs])},
            "fuzziness": {share: {"accuracy": _summary([r["fuzzy"][share]["accuracy"] for r in runs]),
                                  "loss_first30": _summary([r["fuzzy"][share]["first30"] for r in runs]),
                                  "loss_last30": _summary([r["fuzzy"][share]["last30"] for r in runs])}
                          for share in ("0.0", "0.3", "0.6")},
            "invariants": {name: _summary([r["invariants"][name]["accuracy"] for r in runs])
                           for name in ("summer_daytime_only", "all_seasons_hours")},
            "runs": runs, "seconds": time.time() - start,
    }
    result["claims"] = claims(runs)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "geo_weak_supervision.json"), "w") as f:
        json.dump(result, f, indent=1)
    _plot(runs, os.path.join(FLAGS.output_dir, "geo_weak_supervision.png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs",)}, indent=1))


if __name__ == "__main__":
    app.run(main)
