"""Classifier heads: backbone -> pooling -> (embedding) -> logits.

The classifier contract (relied on by export and serving): input float32 [None, S, S, 3] in [0, 255],
output logits [None, C], and a layer named "embedding" whose output is the penultimate embedding.
"""

from __future__ import annotations

import math

import keras

from finegrain_tf.models.backbones import get_backbone

POOLINGS = ("avg",)


def prior_bias_initializer(num_classes: int) -> keras.initializers.Initializer:
    """b = -log((1 - pi) / pi) with pi = 1 / C (seed 000 §5.4.2), for sigmoid / focal losses."""
    pi = 1.0 / num_classes
    return keras.initializers.Constant(-math.log((1.0 - pi) / pi))


def _pooling_layer(pooling: str) -> keras.layers.Layer:
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pool")
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")


def build_classifier(backbone, pooling: str = "avg", num_classes: int = 10, input_size: int = 224,
                     weights: str | None = None, embedding_dim: int = 0, dropout: float = 0.0,
                     bias_init: str = "zeros", name: str = "classifier") -> keras.Model:
    """Builds the classifier of the contract above.

    Args:
      backbone: a name for `get_backbone` or a Keras model producing a feature map [B, h, w, c].
      pooling: one of `POOLINGS`.
      num_classes: C.
      input_size: S.
      weights: backbone weights when `backbone` is a name (None, "imagenet" or a file).
      embedding_dim: > 0 adds a Dense projection (the "embedding" layer); else the pooled feature is
        the embedding.
      dropout: dropout rate before the classifier.
      bias_init: "zeros" or "prior" (see `prior_bias_initializer`).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    if bias_init not in ("zeros", "prior"):
        raise ValueError(f"bias_init must be 'zeros' or 'prior', got {bias_init!r}")
    if isinstance(backbone, str):
        backbone = get_backbone(backbone, input_size, weights)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    features = backbone(inputs)
    pooled = _pooling_layer(pooling)(features)
    if embedding_dim > 0:
        embedding = keras.layers.Dense(embedding_dim, name="embedding")(pooled)
    else:
        embedding = keras.layers.Identity(name="embedding")(pooled)
    x = keras.layers.Dropout(dropout, name="dropout")(embedding) if dropout > 0 else embedding
    bias = prior_bias_initializer(num_classes) if bias_init == "prior" else "zeros"
    logits = keras.layers.Dense(num_classes, bias_initializer=bias, dtype="float32",
                                name="logits")(x)
    return keras.Model(inputs, logits, name=name)
