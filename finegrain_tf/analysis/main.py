r"""finegrain-analyze SUBCOMMAND --flags: dataset analysis on features (seed 000 sec. 4.3 and ch.6).

Subcommands:
  features     Features of a saved Keras model (its "embedding" layer by default) over an image
               folder (one subfolder per class) or a CSV/JSONL manifest of path,label[,split]:
                 finegrain-analyze features --model=runs/x/model.keras --images=data/test \
                   --output=feat.npz --means_output=means.npz [--layer=embedding] [--split=test]
  similarity   EMD domain distance and similarity between two class-means files (eqs. 4.2-4.3),
               with a PNG of the optimal flow:
                 finegrain-analyze similarity --source=src_means.npz --target=tgt_means.npz \
                   --json=sim.json        (also writes sim.png)
  select       Top-k source classes per target and their union as a class list for the training
               binary's data.class_filter (sec. 4.3.2), plus a bar plot:
                 finegrain-analyze select --source=src.npz --targets=birds.npz,cars.npz --k=200 \
                   --output=classes.txt --plot=top.png
  granularity  Dataset granularity of a features file (sec. 6.2; RankM by default), with a PNG of
               the features and the per-class terms:
                 finegrain-analyze granularity --features=feat.npz --measures=rankm,rs \
                   --json=gran.json       (also writes gran.png)

  fuzziness    Table 5.7 of seed 004 for a geo pair set (sec. 5.1.1 options) of a photo manifest (or
               the embedded synthetic geo set) under an embedding (a trained tower, or a backbone's
               pooled ImageNet features), with a PNG of the two distance histograms:
                 finegrain-analyze fuzziness --photos=photos.csv --backbone=ResNet50 --weights=imagenet \
                   --positive_radius_m=10 --negative_min_m=2000 --json=fuzz.json   (also fuzz.png)
  rated-triplets  Triplet accuracy of an embedding on the decisive rows of a rated-triplet file
               (query,a,b,rating; seed 004 sec. 5.3):
                 finegrain-analyze rated-triplets --triplets=wang.csv --model=runs/geo/model.keras

Every subcommand writes its numbers as JSON with --json=path; --plot=path.png names the picture
(default: the JSON path with .png). The summary goes to stdout.
"""

from __future__ import annotations

import json
import math
import os

from absl import app, flags, logging

from finegrain_tf.utils import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "features: a saved Keras model (.keras), e.g. <run dir>/model.keras")
flags.DEFINE_string("images", None, "features: an image folder (one subfolder per class) or a .csv/.jsonl "
                    "manifest of path,label[,split]")
flags.DEFINE_string("split", "", "features: the manifest rows of this split (\"\" = every row)")
flags.DEFINE_integer("image_size", 0, "features: network input size (0 = the model's input size)")
flags.DEFINE_integer("resize_size", 0, "features: shorter side before the centre crop (0 = size * 8 / 7)")
flags.DEFINE_integer("batch_size", 32, "features: images per batch")
flags.DEFINE_string("layer", "embedding", "features: layer whose output is the feature (\"\" = model output)")
flags.DEFINE_integer("max_batches", None, "features: stop after this many batches")
flags.DEFINE_string("output", None, "features: per-sample features .npz; select: class-list text file")
flags.DEFINE_string("means_output", None, "features: class means + counts .npz")
flags.DEFINE_string("source", None, "similarity/select: source-domain class-means .npz")
flags.DEFINE_string("target", None, "similarity: target-domain class-means .npz")
flags.DEFINE_list("targets", [], "select: target-domain class-means .npz files")
flags.DEFINE_list("k", ["200"], "select: top k per target (one value, or one per target)")
flags.DEFINE_float("gamma", 0.01, "similarity/select: gamma of sim = exp(-gamma * EMD)")
flags.DEFINE_integer("min_count", 0, "similarity/select: drop source classes with fewer images (demo: 200)")
flags.DEFINE_string("plot", None, "similarity/select/granularity: PNG path (default: the --json path "
                    "with .png; select: no plot without --plot)")
flags.DEFINE_integer("plot_top", 10, "select: classes per target in the plot")
flags.DEFINE_string("features", None, "granularity: features .npz (from `features`)")
flags.DEFINE_list("measures", ["rankm"], "granularity: rankm, rank, rsm, rs, silhouette")
flags.DEFINE_string("metric", "euclidean", "granularity: euclidean, sqeuclidean, cosine")
flags.DEFINE_string("json", None, "write the results as JSON to this path")
flags.DEFINE_bool("progress", True, "features: show a progress bar (count, total, ETA)")
flags.DEFINE_string("photos", "synthetic", "fuzziness: geo photo manifest (CSV/JSONL path,latitude,longitude,"
                    "timestamp,user_id) or 'synthetic' (the embedded geo set)")
flags.DEFINE_string("backbone", None, "fuzziness/rated-triplets: embed with this keras.applications "
                    "backbone's pooled features instead of --model")
flags.DEFINE_string("weights", "", "fuzziness/rated-triplets: --backbone weights ('' random, 'imagenet', file)")
flags.DEFINE_float("positive_radius_m", 10.0, "fuzziness: positives within this many metres")
flags.DEFINE_float("location_error_m", 10.0, "fuzziness: GPS error per photo (far negatives: R + 2 e)")
flags.DEFINE_enum("negatives", "far", ["far", "ring", "near"], "fuzziness: negative pairs (sec. 5.1.1)")
flags.DEFINE_float("negative_min_m", 2000.0, "fuzziness: far negatives beyond this many metres (+ 2 e)")
flags.DEFINE_list("ring_m", ["30", "100"], "fuzziness: ring negatives between a,b metres")
flags.DEFINE_enum("positive_user", "any", ["any", "same", "different"], "fuzziness: positives' users")
flags.DEFINE_enum("negative_user", "any", ["any", "same", "different"], "fuzziness: negatives' users")
flags.DEFINE_integer("max_positives", 0, "fuzziness: subsample positives (0 = all)")
flags.DEFINE_string("triplets", None, "rated-triplets: CSV/JSONL file of query,a,b,rating")


def _require(name: str):
    value = getattr(FLAGS, name)
    if value in (None, "", []):
        raise app.UsageError(f"--{name} is required for this subcommand")
    return value


def _plot_path() -> str | None:
    """--plot, else the --json path with .png, else None."""
    if FLAGS.plot:
        return FLAGS.plot
    return os.path.splitext(FLAGS.json)[0] + ".png" if FLAGS.json else None


def _write_json(result: dict) -> None:
    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=2)
        logging.info("wrote %s", FLAGS.json)


def _image_dataset(image_size: int):
    """(batched (float32 crops, labels), class names, number of batches) of --images."""
    import tensorflow as tf

    from finegrain_tf.data import decode, loaders, manifest, preprocessing

    source = _require("images")
    if source.lower().endswith((".csv",) + manifest.JSON_SUFFIXES):
        ds, class_names, num_files = manifest.load_manifest(source, FLAGS.split)
    else:
        if FLAGS.split:
            raise app.UsageError("--split selects manifest rows; for a folder point --images at the split's "
                                 "folder (e.g. data/test)")
        ds, info = loaders.load_image_folder(source, with_info=True, limits=decode.DEFAULT_LIMITS)
        class_names, num_files = info.class_names, info.num_files
    ds = ds.map(lambda image, label: (preprocessing.preprocess_eval(image, image_size, FLAGS.resize_size), label),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(FLAGS.batch_size).prefetch(tf.data.AUTOTUNE), class_names, math.ceil(num_files / FLAGS.batch_size)


def cmd_features() -> dict:
    import keras

    import finegrain_tf.layers  # noqa: F401  (registers the custom layers a model may use)
    import finegrain_tf.losses  # noqa: F401
    from finegrain_tf.analysis import features as feats

    if not (FLAGS.output or FLAGS.means_output):
        raise app.UsageError("features needs --output and/or --means_output")
    model_path = _require("model")
    if not os.path.isfile(model_path):
        raise app.UsageError(f"--model={model_path!r}: no such file")
    if FLAGS.batch_size < 1:
        raise app.UsageError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    model = keras.models.load_model(model_path, compile=False)
    image_size = FLAGS.image_size or (model.input_shape[1] if len(model.input_shape) == 4 else None)
    if not image_size:
        raise app.UsageError(f"the model's input size is not fixed ({model.input_shape}): give --image_size")
    extractor = feats.feature_model(model, FLAGS.layer) if FLAGS.layer else model
    dataset, class_names, num_batches = _image_dataset(int(image_size))
    f, y = feats.extract_features(extractor, dataset, max_batches=FLAGS.max_batches, progress=FLAGS.progress,
                                  total=num_batches)
    result = {"images": FLAGS.images, "split": FLAGS.split, "num_samples": int(f.shape[0]),
              "dim": int(f.shape[1])}
    if FLAGS.output:
        feats.save_features(FLAGS.output, f, y, class_names=class_names)
        result["features"] = FLAGS.output
    if FLAGS.means_output:
        means, counts = feats.class_means_from_features(f, y, num_classes=len(class_names))
        feats.save_class_means(FLAGS.means_output, means, counts, class_names=class_names)
        result["means"] = FLAGS.means_output
    return result


def cmd_similarity() -> dict:
    from finegrain_tf.analysis.emd_similarity import emd_distance, plot_flow
    from finegrain_tf.analysis.features import load_class_means

    sm, sc, source_names = load_class_means(_require("source"))
    tm, tc, target_names = load_class_means(_require("target"))
    if not FLAGS.gamma > 0:
        raise app.UsageError(f"--gamma must be > 0, got {FLAGS.gamma}")
    d, flow = emd_distance(sm, sc, tm, tc, min_count=FLAGS.min_count, return_flow=True)
    similarity = math.exp(-FLAGS.gamma * d)
    result = {"source": FLAGS.source, "target": FLAGS.target, "emd": d, "gamma": FLAGS.gamma,
              "similarity": similarity, "min_count": FLAGS.min_count}
    plot = _plot_path()
    if plot:
        kept = [n for n, c in zip(source_names, sc) if c >= FLAGS.min_count] if source_names else None
        result["plot"] = plot_flow(flow, plot, d, similarity, FLAGS.gamma, kept, target_names)
    return result


def cmd_select() -> dict:
    from finegrain_tf.analysis.emd_similarity import (
        plot_top_classes, select_source_classes, union_source_classes, write_class_list)
    from finegrain_tf.analysis.features import load_class_means

    sm, sc, names = load_class_means(_require("source"))
    targets = _require("targets")
    try:
        ks = [int(k) for k in FLAGS.k]
    except ValueError:
        raise app.UsageError(f"--k must be integers, got {FLAGS.k}") from None
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
        result["plot"] = plot_top_classes(selections, FLAGS.plot, class_names=names, top=FLAGS.plot_top)
    return result


def cmd_granularity() -> dict:
    import numpy as np

    from finegrain_tf.analysis.dataset_granularity import granularity_per_sample, plot_granularity
    from finegrain_tf.analysis.features import load_features

    z = load_features(_require("features"))
    per_sample = {m: granularity_per_sample(z["features"], z["labels"], measure=m, metric=FLAGS.metric)
                  for m in FLAGS.measures}
    result = {"features": FLAGS.features, "metric": FLAGS.metric, "num_samples": int(len(z["labels"])),
              "granularity": {m: float(np.mean(t)) for m, t in per_sample.items()}}
    plot = _plot_path()
    if plot:
        result["plot"] = plot_granularity(z["features"], z["labels"], per_sample, plot)
    return result


def _embedder():
    """(embedding model, input size) of --model (a .keras file) or --backbone / --weights."""
    import keras

    import finegrain_tf.layers  # noqa: F401  (registers the custom layers a model may use)
    if FLAGS.model and FLAGS.backbone:
        raise app.UsageError("give --model or --backbone, not both")
    if FLAGS.backbone:
        from finegrain_tf.models.siamese import pooled_backbone
        size = FLAGS.image_size or 224
        return pooled_backbone(FLAGS.backbone, size, FLAGS.weights or None, "pooled_features"), size
    model_path = _require("model")
    if not os.path.isfile(model_path):
        raise app.UsageError(f"--model={model_path!r}: no such file")
    model = keras.models.load_model(model_path, compile=False)
    size = FLAGS.image_size or model.input_shape[1]
    if not size:
        raise app.UsageError(f"the model's input size is not fixed ({model.input_shape}): give --image_size")
    return model, int(size)


def cmd_fuzziness() -> dict:
    from finegrain_tf.analysis.fuzziness import photo_pair_fuzziness
    from finegrain_tf.data import geo, synthetic_geo

    embedder, size = _embedder()
    photos = synthetic_geo.generate_geo(image_size=size).photos if FLAGS.photos == "synthetic" else \
        geo.load_manifest(FLAGS.photos)
    ring = tuple(float(v) for v in FLAGS.ring_m)
    result = photo_pair_fuzziness(
        photos, embedder, size, _plot_path() or "", positive_radius_m=FLAGS.positive_radius_m,
        location_error_m=FLAGS.location_error_m, negatives=FLAGS.negatives,
        negative_min_m=FLAGS.negative_min_m, ring_m=ring, positive_user=FLAGS.positive_user,
        negative_user=FLAGS.negative_user, max_positives=FLAGS.max_positives)
    return {"photos": FLAGS.photos, "embedding": FLAGS.model or f"{FLAGS.backbone} ({FLAGS.weights or 'random'})",
            **result}


def cmd_rated_triplets() -> dict:
    from finegrain_tf.analysis.rated_triplets import rated_triplet_report

    embedder, size = _embedder()
    return {"triplets_file": _require("triplets"), **rated_triplet_report(FLAGS.triplets, embedder, size)}


COMMANDS = {"features": cmd_features, "similarity": cmd_similarity, "select": cmd_select,
            "granularity": cmd_granularity, "fuzziness": cmd_fuzziness,
            "rated-triplets": cmd_rated_triplets}


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: finegrain-analyze {{{','.join(COMMANDS)}}} --flags ... (got {argv[1:]})")
    # POT would otherwise import its TensorFlow backend for nothing (numpy arrays only here).
    os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
    try:
        result = COMMANDS[argv[1]]()
    except (ValueError, OSError) as e:  # bad input files or values: one line, no traceback
        raise app.UsageError(f"finegrain-analyze {argv[1]}: {e}") from None
    _write_json(result)
    summary = {k: v for k, v in result.items() if k not in ("targets", "union")}
    if argv[1] == "select":
        summary["union_first"] = result["union"][:20]
    print(json.dumps({argv[1]: summary}))  # the binary's report on stdout (library code logs only)
    return 0


def run():
    cli.run(main, __name__)  # --help lists this module's flags and subcommands, exits 0


if __name__ == "__main__":
    run()
