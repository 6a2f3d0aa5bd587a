"""Helpers for the serving tests: a tiny training-run model dir, encoded test images."""

import os
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

IMAGE_SIZE = 16
RESIZE_SIZE = 18
CLASS_NAMES = ["acadian_flycatcher", "alder flycatcher", "least_flycatcher", "willow_flycatcher", "other"]
MODEL_NAME = "tiny"
TOP_K = 3


def _install_fallback_preprocessing():
    """Until finegrain_tf.data.preprocessing exists: a minimal decode + resize-shorter-side + centre crop."""
    try:
        from finegrain_tf.data import preprocessing  # noqa: F401
        return
    except ImportError:
        pass

    def decode_image(encoded):
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    def preprocess_eval(image, image_size, resize_size=0):
        resize_size = resize_size or int(round(image_size * 8 / 7))
        image = tf.cast(image, tf.float32)
        shape = tf.shape(image)
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        scale = resize_size / tf.minimum(h, w)
        new_h = tf.cast(tf.round(h * scale), tf.int32)
        new_w = tf.cast(tf.round(w * scale), tf.int32)
        image = tf.image.resize(image, [new_h, new_w])
        top = (new_h - image_size) // 2
        left = (new_w - image_size) // 2
        image = image[top:top + image_size, left:left + image_size]
        return tf.reshape(tf.clip_by_value(image, 0.0, 255.0), [image_size, image_size, 3])

    module = types.ModuleType("finegrain_tf.data.preprocessing")
    module.decode_image = decode_image
    module.preprocess_eval = preprocess_eval
    import finegrain_tf.data as data_pkg

    sys.modules["finegrain_tf.data.preprocessing"] = module
    data_pkg.preprocessing = module


_install_fallback_preprocessing()


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

    cfg = config.ExperimentConfig()
    cfg.data.image_size = image_size
    cfg.data.resize_size = resize_size
    cfg.export.model_name = MODEL_NAME
    cfg.export.top_k = TOP_K
    os.makedirs(path, exist_ok=True)
    config.save_params(config.validate(cfg), str(path))
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


