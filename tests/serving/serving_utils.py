"""Helpers for the serving tests: a tiny training-run model dir, encoded test images."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

IMAGE_SIZE = 16
RESIZE_SIZE = 18
CLASS_NAMES = ["acadian_flycatcher", "alder flycatcher", "least_flycatcher", "willow_flycatcher", "other"]
MODEL_NAME = "tiny"
TOP_K = 3


def build_tiny_model(seed=0, num_classes=len(CLASS_NAMES), image_size=IMAGE_SIZE, extra=None):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    if extra is not None:
        x = extra(x)
    else:
        x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, name="embedding")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(keras.layers.ReLU()(x))
    return keras.Model(inputs, outputs, name="tiny")


def write_model_dir(path, model, class_names=CLASS_NAMES, image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE):
    from finegrain_tf.train import config

    cfg = config.build_config([], [f"data.image_size={image_size}", f"data.resize_size={resize_size}",
                                   f"export.model_name={MODEL_NAME}", f"export.top_k={TOP_K}"])
    os.makedirs(path, exist_ok=True)
    config.save_params(cfg, str(path))
    model.save(os.path.join(path, "model.keras"))
    with open(os.path.join(path, "class_names.txt"), "w") as f:
        f.write("\n".join(class_names) + "\n")
    return str(path)


def random_images(count, seed=1, fmt="png"):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = rng.integers(0, 256, size=(IMAGE_SIZE + 3 * i + 2, IMAGE_SIZE + 5, 3), dtype=np.uint8)
        enc = tf.io.encode_png(img) if fmt == "png" or (fmt == "mixed" and i % 2) else tf.io.encode_jpeg(img)
        out.append(enc.numpy())
    return out


