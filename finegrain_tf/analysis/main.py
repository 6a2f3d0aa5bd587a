r"""finegrain-analyze: dataset analysis from the command line (seed 000 §4.3 and chapter 6).

Subcommands (first positional argument):

  features     Features of a trained model over its eval split (or any split via --set):
                 finegrain-analyze features --model_dir=runs/x --output=feat.npz \
                   --means_output=means.npz [--layer=embedding] [--set=data.eval_split=train]
  similarity   EMD domain distance and similarity between two class-means files (eqs. 4.2-4.3):
                 finegrain-analyze similarity --source=src_means.npz --target=tgt_means.npz
  select       Top-k source classes per target and their union as a class list for the training
               binary's data.class_filter (§4.3.2), plus a bar plot:
                 finegrain-analyze select --source=src.npz --targets=birds.npz,cars.npz --k=200 \
                   --output=classes.txt --plot=top.png
  granularity  Dataset granularity of a features file (§6.2; RankM by default):
                 finegrain-analyze granularity --features=feat.npz --measures=rankm,rs

Every subcommand can also write its numbers as JSON (--json=path).
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "features: a finegrain-train model dir (params.yaml, model.keras)")
flags.DEFINE_string("model", None, "features: a .keras model file (default <model_dir>/model.keras)")
flags.DEFINE_string("layer", "embedding", "features: layer whose output is the feature (\"\" = model output)")
flags.DEFINE_multi_string("set", [], "features: config overrides a.b=value (e.g. data.eval_split=train)")
flags.DEFINE_integer("max_batches", None, "features: stop after this many batches")
flags.DEFINE_string("output", None, "features: per-sample features .npz; select: class-list text file")
flags.DEFINE_string("means_output", None, "features: class means + counts .npz")
flags.DEFINE_string("source", None, "similarity/select: source-domain class-means .npz")
flags.DEFINE_string("target", None, "similarity: target-domain class-means .npz")
flags.DEFINE_list("targets", [], "select: target-domain class-means .npz files")
flags.DEFINE_list("k", ["200"], "select: top k per target (one value, or one per target)")
flags.DEFINE_float("gamma", 0.01, "similarity/select: gamma of sim = exp(-gamma * EMD)")
flags.DEFINE_integer("min_count", 0, "similarity/select: drop source classes with fewer images (demo: 200)")
flags.DEFINE_string("plot", None, "select: bar plot of the top classes per target (.png)")
flags.DEFINE_integer("plot_top", 10, "select: classes per target in the plot")
flags.DEFINE_string("features", None, "granularity: features .npz (from `features`)")
flags.DEFINE_list("measures", ["rankm"], "granularity: rankm, rank, rsm, rs, silhouette")
flags.DEFINE_string("metric", "euclidean", "granularity: euclidean, sqeuclidean, cosine")
flags.DEFINE_string("json", None, "write the results as JSON to this path")
flags.DEFINE_bool("progress", True, "features: show a progress bar")

COMMANDS = ("features", "similarity", "select", "granularity")


def _require(name: str):
    value = getattr(FLAGS, name)
    if value in (None, "", []):
        raise app.UsageError(f"--{name} is required for this subcommand")
    return value


def _write_json(result: dict) -> None:
    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=2)
        logging.info("wrote %s", FLAGS.json)


def _register_custom_objects() -> None:
    """Imports the modules whose registered Keras classes a finegrain-train model.keras may use."""
    import importlib

    for name in ("finegrain_tf.layers", "finegrain_tf.models.backbones", "finegrain_tf.models.heads",
                 "finegrain_tf.models.embedding", "finegrain_tf.models.initializers"):
        try:
            importlib.import_module(name)
        except ImportError as e:  # pragma: no cover - a module of the package missing
            logging.warning("could not import %s: %s", name, e)


def cmd_features() -> dict:
    import keras

    from finegrain_tf.analysis import features as feats
    from finegrain_tf.data.pipeline import build_datasets
    from finegrain_tf.train.config import apply_override, load_params

    model_dir = _require("model_dir")
    if not (FLAGS.output or FLAGS.means_output):
        raise app.UsageError("features needs --output and/or --means_output")
    cfg = load_params(model_dir)
    for override in FLAGS.set:
        cfg = apply_override(cfg, override)
    _register_custom_objects()
    model = keras.models.load_model(FLAGS.model or os.path.join(model_dir, "model.keras"), compile=False)
    extractor = feats.feature_model(model, FLAGS.layer) if FLAGS.layer else model
    _, eval_ds, info = build_datasets(cfg.data)
    f, y = feats.extract_features(extractor, eval_ds, max_batches=FLAGS.max_batches,
                                  progress=FLAGS.progress)
    result = {"split": cfg.data.eval_split, "num_samples": int(f.shape[0]), "dim": int(f.shape[1])}
    if FLAGS.output:
        feats.save_features(FLAGS.output, f, y, class_names=info.class_names)
        result["features"] = FLAGS.output
    if FLAGS.means_output:
        means, counts = feats.class_means_from_features(f, y, num_classes=info.num_classes)
        feats.save_class_means(FLAGS.means_output, means, counts, class_names=info.class_names)
        result["means"] = FLAGS.means_output
    return result


def cmd_similarity() -> dict:
    from finegrain_tf.analysis.emd_similarity import emd_distance
    from finegrain_tf.analysis.features import load_class_means

    sm, sc, _ = load_class_means(_require("source"))
    tm, tc, _ = load_class_means(_require("target"))
    d = emd_distance(sm, sc, tm, tc, min_count=FLAGS.min_count)
    import math

    return {"source": FLAGS.source, "target": FLAGS.target, "emd": d, "gamma": FLAGS.gamma,
            "similarity": math.exp(-FLAGS.gamma * d), "min_count": FLAGS.min_count}


def cmd_select() -> dict:
    from finegrain_tf.analysis.emd_similarity import (
        plot_top_classes, select_source_classes, union_source_classes, write_class_list)
    from finegrain_tf.analysis.features import load_class_means

    sm, sc, names = load_class_means(_require("source"))
    targets = _require("targets")
    ks = [int(k) for k in FLAGS.k]
    if len(ks) == 1:
        ks = ks * len(targets)
    if len(ks) != len(targets):
        raise app.UsageError(f"--k has {len(ks)} values for {len(targets)} targets")
    selections, per_target = {}, {}
    for path, k in zip(targets, ks):
        tm, tc, _ = load_class_means(path)
        sel = select_source_classes(sm, sc, tm, tc, k, gamma=FLAGS.gamma, min_count=FLAGS.min_count)
        label = os.path.splitext(os.path.basename(path))[0]
        selections[label] = sel
        per_target[label] = {"k": k, "indices": sel.indices.tolist(),
                             "similarities": sel.similarities.tolist(),
                             "names": [names[i] for i in sel.indices] if names else None}
    union = union_source_classes(selections.values())
    result = {"targets": per_target, "union": union, "num_union": len(union)}
    if FLAGS.output:
        write_class_list(FLAGS.output, union)
        result["class_list"] = FLAGS.output
    if FLAGS.plot:
        plot_top_classes(selections, FLAGS.plot, class_names=names, top=FLAGS.plot_top)
        result["plot"] = FLAGS.plot
    return result


def cmd_granularity() -> dict:
    from finegrain_tf.analysis.features import load_features
    from finegrain_tf.analysis.dataset_granularity import granularity

    z = load_features(_require("features"))
    values = {m: granularity(z["features"], z["labels"], measure=m, metric=FLAGS.metric)
              for m in FLAGS.measures}
    return {"features": FLAGS.features, "metric": FLAGS.metric, "num_samples": int(len(z["labels"])),
            "granularity": values}


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: finegrain-analyze {{{','.join(COMMANDS)}}} --flags ... (got {argv[1:]})")
    # POT would otherwise import its TensorFlow backend for nothing (numpy arrays only here).
    os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
    result = {"features": cmd_features, "similarity": cmd_similarity, "select": cmd_select,
              "granularity": cmd_granularity}[argv[1]]()
    _write_json(result)
    summary = {k: v for k, v in result.items() if k not in ("targets", "union")}
    if argv[1] == "select":
        summary["union_first"] = result["union"][:20]
    print(json.dumps({argv[1]: summary}))  # the binary's report on stdout (library code logs only)
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
