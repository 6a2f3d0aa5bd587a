"""Shared pieces of the chapter-6 studies on the embedded synthetic dataset.

Features (the distance function d of §6.2.1): the Euclidean distance between 64-d "embedding"
features of a small CNN (`finegrain_tf.models.backbones.small_cnn`, width 16, 32x32 inputs) trained
for a few epochs on the *coarse* (super-class) labels of the synthetic train split — the analogue of
the seed's ResNet-20 trained on CIFAR-100's 20 coarse labels (§6.3.2); features are extracted on the
test split.  The trained model and test features are cached under --cache_dir so the studies share
one training run.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

DEFAULTS = dict(num_classes=40, num_superclasses=8, train_per_class=40, test_per_class=30,
                image_size=32, seed=0)


def synthetic_data(**overrides):
    from finegrain_tf.data import synthetic

    cfg = dict(DEFAULTS, **overrides)
    return synthetic.generate(num_classes=cfg["num_classes"], num_superclasses=cfg["num_superclasses"],
                              train_per_class=cfg["train_per_class"], val_per_class=0,
                              test_per_class=cfg["test_per_class"], image_size=cfg["image_size"],
                              seed=cfg["seed"])


def build_cnn(image_size: int, num_outputs: int, width: int = 16, seed: int = 0):
    import keras

    from finegrain_tf.models.backbones import small_cnn

    keras.utils.set_random_seed(seed)
    backbone = small_cnn(image_size, width=width)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(backbone.output)
    emb = keras.layers.Dense(64, activation="relu", name="embedding")(h)
    out = keras.layers.Dense(num_outputs, name="logits")(emb)
    return keras.Model(backbone.input, out)


def train_cnn(images: np.ndarray, labels: np.ndarray, num_outputs: int, epochs: int = 12,
              batch_size: int = 64, seed: int = 0):
    """A small CNN trained with Adam + flips on (uint8 images, labels); returns the Keras model."""
    import keras
    import tensorflow as tf

    model = build_cnn(images.shape[1], num_outputs, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    ds = (tf.data.Dataset.from_tensor_slices((images.astype(np.float32), labels))
          .shuffle(len(labels), seed=seed).batch(batch_size)
          .map(lambda x, y: (tf.image.random_flip_left_right(x, seed=seed), y)))
    hist = model.fit(ds, epochs=epochs, verbose=0)
    logging.info("trained CNN: final train accuracy %.3f", hist.history["accuracy"][-1])
    return model


def embed(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Embedding-layer features of uint8/float images as float32 [N, 64]."""
    import tensorflow as tf

    from finegrain_tf.analysis.features import extract_features, feature_model

    ds = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), np.zeros(len(images), np.int64)))
    feats, _ = extract_features(feature_model(model, "embedding"), ds.batch(batch_size), progress=False)
    return feats


def coarse_setup(cache_dir: str = "runs/studies/_cache", epochs: int = 12):
    """(data, coarse-trained model, test features); cached in cache_dir."""
    import keras

    import finegrain_tf.models.backbones  # noqa: F401  (registers the custom layers for loading)

    data = synthetic_data()
    os.makedirs(cache_dir, exist_ok=True)
    key = "_".join(f"{k}{v}" for k, v in sorted(DEFAULTS.items())) + f"_e{epochs}"
    model_path = os.path.join(cache_dir, f"coarse_cnn_{key}.keras")
    feat_path = os.path.join(cache_dir, f"coarse_features_{key}.npz")
    if os.path.exists(model_path) and os.path.exists(feat_path):
        model = keras.models.load_model(model_path)
        feats = np.load(feat_path)["features"]
        return data, model, feats
    coarse_train = data.superclass_of[data.labels["train"]]
    model = train_cnn(data.images["train"], coarse_train, int(data.superclass_of.max()) + 1, epochs=epochs)
    feats = embed(model, data.images["test"])
    model.save(model_path)
    np.savez(feat_path, features=feats, labels=data.labels["test"])
    with open(os.path.join(cache_dir, f"coarse_cnn_{key}.json"), "w") as f:
        json.dump({"config": DEFAULTS, "epochs": epochs}, f)
    return data, model, feats
