"""Shared pieces of the chapter-6 (granularity) and §4.3 (domain similarity) studies on the embedded
synthetic dataset.

Distance function d of §6.2.1: the Euclidean distance between the 64-d "embedding" features of a small
CNN (`finegrain_tf.models.backbones.small_cnn`, width 16, 32x32 inputs) trained on the *coarse*
(super-class) labels of the synthetic train split -- the analogue of the seed's ResNet-20 trained on
CIFAR-100's 20 coarse labels (§6.3.2); features are extracted on the test split.

Seeds: seed s renders the synthetic data with seed s *and* initialises and shuffles the CNN with seed
s, so a study's spread over seeds covers both the data draw and the training run.

Training recipe (fixed before the reruns): Adam 3e-3, batch 64, random horizontal flips, batch-norm
momentum 0.9.  Keras' default momentum 0.99 still carries ~35 % of the initial moving statistics after
the ~100 steps a 400-image source gets, and every study measures inference-mode features.  In the
pilot the 10-class source CNN at 64 px reached 0.9+ train accuracy with either momentum but held-out
accuracy 0.10-0.19 at 0.99 and 0.12-0.24 at 0.9: most of that gap is overfitting 40 images per class,
not the moving statistics.  The held-out accuracy of every CNN is
reported next to its results (the plateau check of the studies' contract).  Epochs from the pilot
(seed 0, held-out accuracy every 5 epochs): the coarse CNN (8 super-classes, 32 px, 1600 images)
0.66 / 0.79 / 0.85 / 0.81 / 0.88 / 0.89 at epochs 5-30, so COARSE_EPOCHS = 25.

The coarse CNN of each seed and its test features are cached under --cache_dir so the chapter-6
studies share one training run per seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

# The studies run many small BLAS products (per-pair logistic regressions, per-class distances): on 2
# shared cores a second BLAS thread only spins (DESIGN.md), so every study using this module runs with one.
threadpool_limits(limits=1, user_api="blas")

DEFAULTS = dict(num_classes=40, num_superclasses=8, train_per_class=40, test_per_class=30, image_size=32)
BN_MOMENTUM = 0.9
COARSE_EPOCHS = 25
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def design_text(doc: str) -> str:
    """The "Design" paragraph of a study's docstring (up to its usage line), for the JSON."""
    return doc.split("Design", 1)[1].split("python studies")[0].strip()


def define_flags(default_seeds=("0", "1", "2")) -> None:
    """--output_dir (default studies/results), --cache_dir and --seeds, shared by the studies."""
    flags.DEFINE_string("output_dir", RESULTS_DIR, "where the study's PNG + JSON go")
    flags.DEFINE_string("cache_dir", "runs/studies/_cache", "cache of the coarse CNNs and their features")
    flags.DEFINE_list("seeds", list(default_seeds), "seeds (data rendering and CNN training), at least 3")
    flags.DEFINE_bool("claims_only", False, "only recompute the JSON's \"claims\" from its stored per-seed results")


def synthetic_data(seed: int = 0, **overrides):
    from finegrain_tf.data import synthetic

    cfg = dict(DEFAULTS, **overrides)
    return synthetic.generate(num_classes=cfg["num_classes"], num_superclasses=cfg["num_superclasses"],
                              train_per_class=cfg["train_per_class"], val_per_class=0,
                              test_per_class=cfg["test_per_class"], image_size=cfg["image_size"],
                              seed=seed)


def build_cnn(image_size: int, num_outputs: int, width: int = 16, seed: int = 0):
    import keras

    from finegrain_tf.models.backbones import small_cnn

    keras.utils.set_random_seed(seed)
    backbone = small_cnn(image_size, width=width)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(backbone.output)
    emb = keras.layers.Dense(64, activation="relu", name="embedding")(h)
    out = keras.layers.Dense(num_outputs, name="logits")(emb)
    model = keras.Model(backbone.input, out)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return model


def train_cnn(images: np.ndarray, labels: np.ndarray, num_outputs: int, epochs: int,
              batch_size: int = 64, seed: int = 0):
    """A small CNN trained with Adam + flips on (uint8 images, labels); returns (model, train accuracy)."""
    import keras
    import tensorflow as tf

    model = build_cnn(images.shape[1], num_outputs, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    ds = (tf.data.Dataset.from_tensor_slices((images.astype(np.float32), labels))
          .shuffle(len(labels), seed=seed).batch(batch_size)
          .map(lambda x, y: (tf.image.random_flip_left_right(x, seed=seed), y)))
    hist = model.fit(ds, epochs=epochs, verbose=0)
    train_accuracy = float(hist.history["accuracy"][-1])
    logging.info("trained CNN (%d classes, %d images, %d epochs): final train accuracy %.3f", num_outputs,
                 len(labels), epochs, train_accuracy)
    return model, train_accuracy


def accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model`'s logits in inference mode."""
    logits = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def embed(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Embedding-layer features of uint8/float images as float32 [N, 64]."""
    import tensorflow as tf

    from finegrain_tf.analysis.features import extract_features, feature_model

    ds = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), np.zeros(len(images), np.int64)))
    feats, _ = extract_features(feature_model(model, "embedding"), ds.batch(batch_size), progress=False)
    return feats


@dataclasses.dataclass
class CoarseSetup:
    """One seed's data, coarse-trained CNN, its test-split features and its accuracies."""
    seed: int
    data: object
    model: object
    features: np.ndarray
    report: dict  # {"train_accuracy", "test_accuracy", "epochs", "chance"}


def coarse_setup(seed: int, cache_dir: str = "runs/studies/_cache", epochs: int | None = None) -> CoarseSetup:
    """The coarse-label CNN of `seed` (COARSE_EPOCHS epochs unless given) and its test features; cached."""
    import keras

    import finegrain_tf.models.backbones  # noqa: F401  (registers the custom layers for loading)

    epochs = COARSE_EPOCHS if epochs is None else epochs

    data = synthetic_data(seed)
    os.makedirs(cache_dir, exist_ok=True)
    key = "_".join(f"{k}{v}" for k, v in sorted(DEFAULTS.items())) + f"_seed{seed}_e{epochs}_bn{BN_MOMENTUM}"
    model_path = os.path.join(cache_dir, f"coarse_cnn_{key}.keras")
    feat_path = os.path.join(cache_dir, f"coarse_features_{key}.npz")
    report_path = os.path.join(cache_dir, f"coarse_cnn_{key}.json")
    if all(os.path.exists(p) for p in (model_path, feat_path, report_path)):
        with open(report_path) as f:
            report = json.load(f)["report"]
        return CoarseSetup(seed, data, keras.models.load_model(model_path), np.load(feat_path)["features"], report)
    coarse_of = data.superclass_of
    num_coarse = int(coarse_of.max()) + 1
    model, train_acc = train_cnn(data.images["train"], coarse_of[data.labels["train"]], num_coarse,
                                 epochs=epochs, seed=seed)
    report = {"train_accuracy": train_acc,
              "test_accuracy": accuracy(model, data.images["test"], coarse_of[data.labels["test"]]),
              "epochs": epochs, "chance": 1.0 / num_coarse}
    logging.info("coarse CNN seed %d: %s", seed, report)
    feats = embed(model, data.images["test"])
    model.save(model_path)
    np.savez(feat_path, features=feats, labels=data.labels["test"])
    with open(report_path, "w") as f:
        json.dump({"config": DEFAULTS, "seed": seed, "report": report}, f)
    return CoarseSetup(seed, data, model, feats, report)


def coarse_reports(setups) -> dict:
    """The plateau check of the coarse CNNs: per-seed train/test accuracy and chance, for a JSON."""
    return {"what": "small CNN trained on the 8 coarse labels; top-1 on the coarse labels",
            "per_seed": {str(s.seed): s.report for s in setups}}


def run_over_seeds(name: str, doc: str, run_seed, claims, plot, design_changes: list, extra: dict | None = None):
    """The shared main of the coarse-CNN studies: `run_seed(setup)` for the coarse setup of every --seeds
    seed, then `<name>.json` (design, coarse CNNs' accuracies, per-seed results, `claims(per_seed)`,
    design changes, wall and CPU seconds) and `plot(per_seed, setups, png_path)` in --output_dir."""
    FLAGS = flags.FLAGS
    if FLAGS.claims_only:
        from claims_table import rewrite_claims

        return rewrite_claims(os.path.join(FLAGS.output_dir, f"{name}.json"), lambda r: claims(r["per_seed"]))
    t0, cpu0 = time.time(), time.process_time()
    setups, per_seed = [], {}
    for seed in (int(s) for s in FLAGS.seeds):
        setup = coarse_setup(seed, FLAGS.cache_dir)
        setups.append(setup)
        per_seed[str(seed)] = run_seed(setup)
    result = {"design": design_text(doc), "coarse_cnn": coarse_reports(setups), **(extra or {}),
              "per_seed": per_seed, "claims": claims(per_seed), "design_changes": design_changes}
    result["seconds"] = time.time() - t0
    result["cpu_seconds"] = time.process_time() - cpu0  # all threads: an idle 2-core wall is at least half
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(per_seed, setups, os.path.join(FLAGS.output_dir, f"{name}.png"))
    print(json.dumps({k: result[k] for k in ("coarse_cnn", "claims", "seconds", "cpu_seconds")}, indent=1))
    return result
