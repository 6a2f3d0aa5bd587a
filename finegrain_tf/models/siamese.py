"""Siamese and double-Siamese embedding networks (seed 004 §3.2.1, §4.1.3-4.1.4).

A Siamese network is one embedding tower applied to both images of a pair (shared weights); its
output [B, 2, D] feeds `finegrain_tf.losses.ContrastiveLoss` (formulation="thesis" is eq 4.1.3).

    tower = build_tower("ResNet50", embedding_dim=1024, input_size=224)
    siamese = build_siamese(tower)          # {"image_a", "image_b"} -> [B, 2, D]
    siamese.compile(thesis_optimizer(), ContrastiveLoss(margin=1.0, formulation="thesis"))

The double Siamese network (§4.1.3) gives each tower two CNNs: a frozen invariant network I (a
backbone pre-trained on ImageNet when weights are given; 2048-d pooled features for ResNet50) and a
trainable variant network V (backbone -> 1024-d), blended by a shallow network B over [I(x), V(x)]
(§4.1.4: one or two dense layers, dropout, optional residual from V, I or both). `build_double_tower`
builds the tower of one training mode:

  variant  V(x) alone, trained on geo pairs (T_c^2 of Table 6.1)
  concat   [I(x), V(x)] with I frozen, V trained (T_c^1)
  joint    [I(x), V(x)] with I trained too (the thesis's third method)
  blend    B([I(x), V(x)]) with I and V frozen: B alone, trained on labeled pairs (T_b)

The sub-models are named "invariant", "variant" and "blend" so `transfer_weights` carries them from
one mode's model to the next (train V, then B). Every tower ends in a layer named "embedding"
(L2-normalised by default), which is what the export's `embed` / `lookup` signatures serve.
Options the thesis uses: PReLU activations and He-normal initialisation in the heads, Nadam with
lr 0.002 and gradient-norm clipping at 1 (`thesis_optimizer`). Only stock Keras layers and the
package's registered `L2Normalize` are used, so the models save and load as `.keras` files.
"""

from __future__ import annotations

from typing import Sequence

import keras

from finegrain_tf.layers.normalization import L2Normalize
from finegrain_tf.models.backbones import get_backbone

MODES = ("variant", "concat", "joint", "blend")
RESIDUALS = ("none", "variant", "invariant", "both")
ACTIVATIONS = ("prelu", "relu")
SUBMODELS = ("invariant", "variant", "blend")


def _activation(kind: str, name: str) -> keras.layers.Layer:
    return keras.layers.PReLU(name=name) if kind == "prelu" else keras.layers.ReLU(name=name)


def _check_common(embedding_dim, activation, dropout) -> None:
    if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _dense_stack(x, units: Sequence[int], activation: str, dropout: float, prefix: str):
    """Dense (He-normal) -> PReLU/ReLU -> Dropout for each width in `units` (§4.1.3-4.1.4)."""
    for i, width in enumerate(units):
        x = keras.layers.Dense(int(width), kernel_initializer="he_normal", name=f"{prefix}{i}")(x)
        x = _activation(activation, f"{prefix}{i}_act")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{prefix}{i}_dropout")(x)
    return x


def _embedding_layer(normalize: bool) -> keras.layers.Layer:
    return L2Normalize(name="embedding", dtype="float32") if normalize else \
        keras.layers.Activation("linear", name="embedding", dtype="float32")


def pooled_backbone(backbone: str, input_size: int, weights, name: str) -> keras.Model:
    """image -> globally average-pooled backbone features [B, C] (C = 2048 for ResNet50)."""
    net = get_backbone(backbone, input_size, weights or None)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(net(inputs))
    return keras.Model(inputs, features, name=name)


def _variant_network(backbone: str, input_size: int, weights, dim: int, activation: str) -> keras.Model:
    """V: backbone -> pooled features -> Dense(dim, He-normal) (the thesis's 1024-d variant output)."""
    net = pooled_backbone(backbone, input_size, weights, "variant_features")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Dense(dim, kernel_initializer="he_normal", name="variant_projection")(net(inputs))
    return keras.Model(inputs, x, name="variant")


def build_tower(backbone: str = "small_cnn", embedding_dim: int = 128, input_size: int = 224,
                weights: str | None = None, hidden_units: Sequence[int] = (), activation: str = "prelu",
                dropout: float = 0.0, normalize: bool = True, name: str = "tower") -> keras.Model:
    """One Siamese tower: backbone -> global average pool -> [Dense -> PReLU -> Dropout]* ->
    Dense(embedding_dim) -> "embedding". Dense kernels are He-normal (§4.1.3).

    Args:
      backbone: "small_cnn" or a keras.applications name (`finegrain_tf.models.backbones.BACKBONES`).
      weights: None (random), "imagenet" or a weights file for the backbone.
      hidden_units: widths of hidden dense layers of the head.
      activation: "prelu" (the thesis) or "relu" for the hidden layers.
      normalize: L2-normalise the embedding (else it is the raw projection).
    """
    _check_common(embedding_dim, activation, dropout)
    features = pooled_backbone(backbone, input_size, weights, "features")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = _dense_stack(features(inputs), hidden_units, activation, dropout, "hidden")
    x = keras.layers.Dense(embedding_dim, kernel_initializer="he_normal", name="projection")(x)
    return keras.Model(inputs, _embedding_layer(normalize)(x), name=name)


def build_blend_network(invariant_dim: int, variant_dim: int, units: Sequence[int], embedding_dim: int,
                        dropout: float, residual: str, activation: str) -> keras.Model:
    """B: ([I(x)] [B, invariant_dim], [V(x)] [B, variant_dim]) -> [B, embedding_dim] (§4.1.4).

    Dense layers of `units` (He-normal, PReLU, dropout) then a linear output; the residual adds a
    linear projection of V, I or both to the output.
    """
    invariant = keras.Input((invariant_dim,), name="invariant_features")
    variant = keras.Input((variant_dim,), name="variant_features")
    x = keras.layers.Concatenate(name="blend_concat")([invariant, variant])
    x = _dense_stack(x, units, activation, dropout, "blend")
    out = keras.layers.Dense(embedding_dim, kernel_initializer="he_normal", name="blend_out")(x)
    shortcuts = []
    if residual in ("invariant", "both"):
        shortcuts.append(keras.layers.Dense(embedding_dim, use_bias=False, name="invariant_residual")(invariant))
    if residual in ("variant", "both"):
        shortcuts.append(keras.layers.Dense(embedding_dim, use_bias=False, name="variant_residual")(variant))
    if shortcuts:
        out = keras.layers.Add(name="blend_residual")([out] + shortcuts)
    return keras.Model([invariant, variant], out, name="blend")


def build_double_tower(mode: str = "variant", input_size: int = 224,
                       invariant_backbone: str = "ResNet50", invariant_weights: str | None = None,
                       variant_backbone: str = "ResNet50", variant_weights: str | None = None,
                       variant_dim: int = 1024, blend_units: Sequence[int] = (512,),
                       embedding_dim: int = 128, dropout: float = 0.5, residual: str = "none",
                       activation: str = "prelu", normalize: bool = True) -> keras.Model:
    """The double-Siamese tower of one training mode (see the module docstring).

    Args:
      mode: "variant", "concat", "joint" or "blend".
      invariant_backbone / invariant_weights: I ("imagenet" in the thesis; None = random, for tests).
      variant_backbone / variant_weights: V's backbone; variant_dim: V's output size (1024).
      blend_units: widths of B's hidden dense layers (0, 1 or 2 of them in §4.1.4);
      embedding_dim: B's output size (the thesis tried 128 to 1024).
      dropout: after each hidden blend layer; residual: "none", "variant", "invariant" or "both".
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {list(RESIDUALS)}, got {residual!r}")
    _check_common(variant_dim, activation, dropout)
    _check_common(embedding_dim, activation, dropout)
    if len(blend_units) > 2:
        raise ValueError(f"blend_units takes at most 2 hidden layers (§4.1.4), got {list(blend_units)!r}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    variant = _variant_network(variant_backbone, input_size, variant_weights, variant_dim, activation)
    v = variant(inputs)
    if mode == "variant":
        return keras.Model(inputs, _embedding_layer(normalize)(v), name="double_siamese_variant")
    invariant = pooled_backbone(invariant_backbone, input_size, invariant_weights, "invariant")
    invariant.trainable = mode == "joint"
    i = invariant(inputs)
    if mode in ("concat", "joint"):
        x = keras.layers.Concatenate(name="invariant_variant")([i, v])
        return keras.Model(inputs, _embedding_layer(normalize)(x), name=f"double_siamese_{mode}")
    variant.trainable = False
    blend = build_blend_network(int(i.shape[-1]), variant_dim, blend_units, embedding_dim, dropout, residual,
                           activation)
    return keras.Model(inputs, _embedding_layer(normalize)(blend([i, v])), name="double_siamese_blend")


def transfer_weights(source: keras.Model, target: keras.Model, names: Sequence[str] = SUBMODELS) -> list:
    """Copies the weights of the sub-models named in `names` present in both models; returns the
    names copied (e.g. V trained in mode "variant" into the "blend" model)."""
    copied = []
    for name in names:
        try:
            src, dst = source.get_layer(name), target.get_layer(name)
        except ValueError:
            continue
        dst.set_weights(src.get_weights())
        copied.append(name)
    return copied


def build_siamese(tower: keras.Model, name: str = "siamese") -> keras.Model:
    """Shared-weight two-tower model: {"image_a", "image_b"} -> pair embeddings [B, 2, D]
    (the y_pred layout of `ContrastiveLoss`)."""
    if len(tower.inputs) != 1 or len(tower.outputs) != 1:
        raise ValueError(f"the tower must map one image to one embedding, got {len(tower.inputs)} inputs "
                         f"and {len(tower.outputs)} outputs")
    shape = tuple(tower.inputs[0].shape[1:])
    image_a = keras.Input(shape, name="image_a")
    image_b = keras.Input(shape, name="image_b")
    dim = int(tower.outputs[0].shape[-1])
    a = keras.layers.Reshape((1, dim), name="embedding_a")(tower(image_a))
    b = keras.layers.Reshape((1, dim), name="embedding_b")(tower(image_b))
    pair = keras.layers.Concatenate(axis=1, name="pair_embeddings", dtype="float32")([a, b])
    return keras.Model({"image_a": image_a, "image_b": image_b}, pair, name=name)


def thesis_optimizer(learning_rate: float = 0.002, clipnorm: float = 1.0) -> keras.optimizers.Optimizer:
    """Nadam with the thesis's hyper-parameters (§6.1.1: lr 0.002, beta 0.9 / 0.999, eps 1e-8) and
    gradient-norm clipping at 1 (§4.1.3)."""
    return keras.optimizers.Nadam(learning_rate=learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                                  clipnorm=clipnorm)
