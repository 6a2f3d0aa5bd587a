"""Classifier heads: backbone -> pooling -> (embedding) -> logits.

The classifier contract (relied on by export and serving): input float32 [None, S, S, 3] in [0, 255],
output logits [None, C], and a layer named "embedding" whose output is the penultimate embedding.

Poolings (Table 3.1 of seed 000, registry `POOLINGS`): "avg" (global average), "bilinear" (full c^2
bilinear), "compact_bilinear" (Tensor Sketch) and "kernel" (kernel pooling, Algorithm 1). Heads
(`HEADS`): "linear" (Dense logits) and "anchor_vote" (eq 2.3 soft voting over anchors).

`flip_test=True` (§3.3.1): at inference the image and its horizontal flip go through the network and
the classification scores are averaged. Two registered layers around the backbone do it (stock ops,
so it survives `.keras` reload and SavedModel export): the batch is doubled with the flipped images
before the backbone and the pooled features of the two halves are averaged right after pooling.
Everything after pooling is affine at inference (Dense embedding, dropout = identity, Dense logits),
so this equals averaging the logits. In training the layers are identities.

Data-dependent initialisation (kernel gamma, logistic-regression classifier, k-means anchors) needs
training data and lives on the training side: `finegrain_tf.train.initialization`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import keras

from finegrain_tf.layers import (AnchorSoftVote, BilinearPooling, CompactBilinearPooling,
                                 FlipTestAugment, FlipTestAverage, KernelPooling, L2Normalize,
                                 PriorBias)
from finegrain_tf.models.backbones import get_backbone

HEADS = ("linear", "anchor_vote")
BIAS_INITS = ("zeros", "prior")
_KERNEL_POOLING_KEYS = ("order", "dims", "coefficients", "gamma", "normalize")


def parse_coefficients(coefficients: Any):
    """"learned" | "rbf" | "a0,a1,...,ap" (config form) | list -> KernelPooling's `coefficients`."""
    if isinstance(coefficients, str) and coefficients not in ("learned", "rbf"):
        try:
            return [float(v) for v in coefficients.split(",")]
        except ValueError:
            raise ValueError(f"kernel coefficients must be 'learned', 'rbf' or comma-separated "
                             f"floats, got {coefficients!r}") from None
    return coefficients


def kernel_pooling_kwargs(kernel_pooling: Any = None) -> dict:
    """`KernelPooling` keyword arguments from a mapping or an object with the fields order, dims,
    coefficients, gamma (None = estimate later) and normalize (e.g. the config's KernelPoolingConfig)."""
    if kernel_pooling is None:
        return {}
    if dataclasses.is_dataclass(kernel_pooling):
        kernel_pooling = dataclasses.asdict(kernel_pooling)
    if not isinstance(kernel_pooling, Mapping):
        raise ValueError(f"kernel_pooling must be a mapping or a dataclass, got {kernel_pooling!r}")
    unknown = sorted(set(kernel_pooling) - set(_KERNEL_POOLING_KEYS))
    if unknown:
        raise ValueError(f"unknown kernel_pooling keys {unknown}; expected {list(_KERNEL_POOLING_KEYS)}")
    kwargs = dict(kernel_pooling)
    if "coefficients" in kwargs:
        kwargs["coefficients"] = parse_coefficients(kwargs["coefficients"])
    return kwargs


def _avg(name, compact_dim, kernel_pooling, seed):
    return keras.layers.GlobalAveragePooling2D(name=name)


def _bilinear(name, compact_dim, kernel_pooling, seed):
    return BilinearPooling(name=name)


def _compact_bilinear(name, compact_dim, kernel_pooling, seed):
    return CompactBilinearPooling(dim=compact_dim, seed=seed, name=name)


def _kernel(name, compact_dim, kernel_pooling, seed):
    return KernelPooling(**kernel_pooling_kwargs(kernel_pooling), seed=seed, name=name)


# name -> builder(name, compact_dim, kernel_pooling, seed); the config's model.pooling choices.
POOLINGS = {"avg": _avg, "bilinear": _bilinear, "compact_bilinear": _compact_bilinear,
            "kernel": _kernel}


def make_pooling(pooling: str, compact_dim: int = 8192, kernel_pooling: Any = None,
                 pooling_seed: int = 0, name: str = "pool") -> keras.layers.Layer:
    """The pooling layer of `build_classifier` ([B, h, w, c] -> [B, D])."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
    return POOLINGS[pooling](name, compact_dim, kernel_pooling, pooling_seed)


def build_classifier(backbone, pooling: str = "avg", num_classes: int = 10, input_size: int = 224,
                     weights: str | None = None, embedding_dim: int = 0, dropout: float = 0.0,
                     bias_init: str = "zeros", name: str = "classifier", *,
                     compact_dim: int = 8192, kernel_pooling: Any = None, pooling_seed: int = 0,
                     flip_test: bool = False, head: str = "linear", anchors_per_class: int = 3,
                     anchor_gamma: float = 5.0) -> keras.Model:
    """Builds the classifier of the contract above.

    Args:
      backbone: a name for `get_backbone` or a Keras model producing a feature map [B, h, w, c].
      pooling: one of `POOLINGS`.
      num_classes: C.
      input_size: S (448 is the seed's size for fine-grained datasets).
      weights: backbone weights when `backbone` is a name (None, "imagenet" or a file).
      embedding_dim: > 0 adds a Dense projection (the "embedding" layer); else the pooled feature is
        the embedding.
      dropout: dropout rate before the classifier.
      bias_init: "zeros" or "prior" (`PriorBias`: b = -log((1 - pi) / pi), pi = 1 / C, §5.4.2).
      compact_dim: output size of "compact_bilinear".
      kernel_pooling: `KernelPooling` settings of "kernel" as one object: a mapping or dataclass with
        order, dims, coefficients ("learned", "rbf", a list or "a0,...,ap"), gamma (None = estimate
        later with `KernelPooling.adapt`) and normalize (the config's `model.kernel_pooling`).
      pooling_seed: hash seed of the sketching poolings.
      flip_test: average the scores over the image and its horizontal flip at inference.
      head: "linear" (Dense logits) or "anchor_vote" (`AnchorSoftVote` over `anchors_per_class`
        anchors per class with softness `anchor_gamma` on the L2-normalised embedding, §2.3.4).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    if bias_init not in BIAS_INITS:
        raise ValueError(f"bias_init must be one of {list(BIAS_INITS)}, got {bias_init!r}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {list(HEADS)}")
    if head == "anchor_vote" and bias_init != "zeros":
        raise ValueError(f"bias_init={bias_init!r} needs a linear head; the anchor_vote head has no bias")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
    if isinstance(backbone, str):
        backbone = get_backbone(backbone, input_size, weights)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = FlipTestAugment(name="flip_augment")(inputs) if flip_test else inputs
    features = backbone(x)
    pooled = make_pooling(pooling, compact_dim=compact_dim, kernel_pooling=kernel_pooling,
                          pooling_seed=pooling_seed)(features)
    if flip_test:
        pooled = FlipTestAverage(name="flip_average")(pooled)
    if embedding_dim > 0:
        embedding = keras.layers.Dense(embedding_dim, name="embedding")(pooled)
    else:
        embedding = keras.layers.Identity(name="embedding")(pooled)
    x = keras.layers.Dropout(dropout, name="dropout")(embedding) if dropout > 0 else embedding
    if head == "anchor_vote":
        # Eq 2.3 as logits s_i = logsumexp_j(-gamma ||f(x) - u_ij||^2) on the L2-normalised
        # embedding: softmax(s) = p of eq 2.3 and cross-entropy on s = eq 2.4.
        unit = L2Normalize(name="embedding_l2")(x)
        logits = AnchorSoftVote(num_classes, anchors_per_class, anchor_gamma, output_mode="logits",
                                dtype="float32", name="logits")(unit)
    else:
        bias = PriorBias(num_classes) if bias_init == "prior" else "zeros"
        logits = keras.layers.Dense(num_classes, bias_initializer=bias, dtype="float32",
                                    name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def classifier_kwargs_from_config(model_cfg) -> dict:
    """`build_classifier` keyword arguments from a `finegrain_tf.train.config.ModelConfig`.

    Use: build_classifier(cfg.model.backbone, num_classes=C, input_size=cfg.data.image_size,
                          **classifier_kwargs_from_config(cfg.model))
    """
    return dict(pooling=model_cfg.pooling, weights=model_cfg.weights or None,
                embedding_dim=model_cfg.embedding_dim, dropout=model_cfg.dropout,
                bias_init=model_cfg.bias_init, compact_dim=model_cfg.compact_dim,
                kernel_pooling=model_cfg.kernel_pooling, flip_test=model_cfg.flip_test,
                head=model_cfg.head, anchors_per_class=model_cfg.anchors_per_class,
                anchor_gamma=model_cfg.anchor_gamma)
