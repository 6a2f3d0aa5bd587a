"""Backbones: keras.applications by name, or a small CNN for CPU demos.

Every backbone returned here maps float32 images in [0, 255] to a feature map [B, h, w, c]; the
architecture-specific input normalisation is part of the returned model, so the data pipeline and the
exported serving graph feed raw pixel values.
"""

from __future__ import annotations

import os

import keras

from finegrain_tf.layers.normalization import CaffeNormalize, Rescale

# name -> (constructor, input normalisation family of its ImageNet weights)
_APPLICATIONS = {
    "ResNet50": (keras.applications.ResNet50, "caffe"),
    "ResNet101": (keras.applications.ResNet101, "caffe"),
    "ResNet152": (keras.applications.ResNet152, "caffe"),
    "ResNet50V2": (keras.applications.ResNet50V2, "tf"),
    "InceptionV3": (keras.applications.InceptionV3, "tf"),
    "InceptionResNetV2": (keras.applications.InceptionResNetV2, "tf"),
    "EfficientNetB0": (keras.applications.EfficientNetB0, "none"),
    "EfficientNetB3": (keras.applications.EfficientNetB3, "none"),
    "EfficientNetV2S": (keras.applications.EfficientNetV2S, "none"),
    "MobileNetV2": (keras.applications.MobileNetV2, "tf"),
    "VGG16": (keras.applications.VGG16, "caffe"),
}

# Smallest input side each family accepts when include_top=False.
_MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "VGG16": 32, "MobileNetV2": 32}

BACKBONES = ("small_cnn",) + tuple(_APPLICATIONS)


def _normalizer(name: str) -> keras.layers.Layer:
    """The input normalisation that keras.applications' preprocess_input applies, as a layer."""
    family = _APPLICATIONS[name][1]
    if family == "tf":  # [-1, 1]
        return Rescale(1.0 / 127.5, -1.0, name="normalize")
    if family == "caffe":  # BGR order minus the ImageNet mean
        return CaffeNormalize(name="normalize")
    return Rescale(1.0, 0.0, name="normalize")  # EfficientNets normalise inside the model


def small_cnn(input_size: int, width: int = 32, name: str = "small_cnn") -> keras.Model:
    """A 4-stage CNN (conv-BN-ReLU x2 per stage, each stage opening with a stride-2 conv) for CPU
    demos and tests: stride 16 overall, 8 * width channels out (a 4x4x256 map at 64x64 input).

    Its batch normalisation is synchronised: under a strategy with N replicas the statistics are
    those of the global batch, computed the same way as on one device, so N replicas train like one
    device (tests/train/test_distributed.py)."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = Rescale(1.0 / 127.5, -1.0, name="normalize")(inputs)
    for stage, filters in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for conv in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                    strides=2 if conv == 0 else 1, name=f"conv{stage}_{conv}")(x)
            x = keras.layers.BatchNormalization(synchronized=True, name=f"bn{stage}_{conv}")(x)
            x = keras.layers.ReLU(name=f"relu{stage}_{conv}")(x)
    return keras.Model(inputs, x, name=name)


def get_backbone(name: str, input_size: int, weights: str | None = None) -> keras.Model:
    """Returns a model mapping [B, S, S, 3] float images in [0, 255] to a feature map [B, h, w, c].

    Args:
      name: "small_cnn" or a keras.applications name in `BACKBONES`.
      input_size: S, any size the architecture accepts (224, 299, 448, ...).
      weights: None/"" (random init), "imagenet" (downloads once into ~/.keras), or a path to a
        weights file saved with `save_weights` for this architecture.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)}")
    if input_size < _MIN_SIZE.get(name, 32):
        raise ValueError(f"input size {input_size} is too small for backbone {name!r} "
                         f"(minimum {_MIN_SIZE.get(name, 32)})")
    weights = weights or None
    if weights not in (None, "imagenet") and not os.path.exists(weights):
        raise ValueError(f"backbone weights file not found: {weights!r}")
    if name == "small_cnn":
        model = small_cnn(input_size)
        if weights == "imagenet":
            raise ValueError("backbone 'small_cnn' has no ImageNet weights; use weights=None or a file")
        if weights:
            model.load_weights(weights)
        return model
    constructor, _ = _APPLICATIONS[name]
    shape = (input_size, input_size, 3)
    inputs = keras.Input(shape, name="image")
    net = constructor(include_top=False, weights="imagenet" if weights == "imagenet" else None,
                      input_shape=shape)
    if weights and weights != "imagenet":
        net.load_weights(weights)
    return keras.Model(inputs, net(_normalizer(name)(inputs)), name=f"{name.lower()}_backbone")
