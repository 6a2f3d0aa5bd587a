"""Embedding head for deep metric learning (seed 000 §2.3.1, Fig 2.4): backbone -> D-dim L2 embedding.

`build_embedding_model(backbone, embedding_dim=64)` maps float32 images in [0, 255] to
L2-normalised embeddings [B, D] (D = 64 in the seed); the last layer is named "embedding".
Add `finegrain_tf.layers.AnchorSoftVote` on top for classification (eq 2.3), or use
`finegrain_tf.losses.build_anchor_vote_model` for the joint objective of eq 2.5.
"""

from __future__ import annotations

import keras

from finegrain_tf.layers.normalization import L2Normalize


def build_embedding_model(backbone, embedding_dim: int = 64, input_size: int | None = None,
                          weights: str | None = None, pooling: str = "avg", batch_norm: bool = False,
                          name: str = "embedding_model") -> keras.Model:
    """Backbone -> global pooling -> Dense(embedding_dim) -> L2Normalize(name="embedding").

    Args:
      backbone: a name for `finegrain_tf.models.backbones.get_backbone` (then `input_size` is required)
        or a Keras model mapping images to a feature map [B, h, w, c] or to features [B, c].
      embedding_dim: D (> 0).
      input_size: S for a named backbone (and the input size when a model has an unknown one).
      weights: backbone weights for a named backbone (None, "imagenet" or a file).
      pooling: "avg" or "max" global pooling of a feature map.
      batch_norm: BatchNormalization between the projection and the L2 normalisation. Pooled ReLU
        features share a large common component, so freshly initialised embeddings all point the same
        way and triplet training can collapse (loss stuck at the margin); centring them avoids that.
    """
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    if isinstance(backbone, str):
        if not input_size:
            raise ValueError(f"input_size is required for the named backbone {backbone!r}")
        from finegrain_tf.models.backbones import get_backbone

        backbone = get_backbone(backbone, input_size, weights)
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"backbone must be a name or a keras.Model, got {backbone!r}")
    shape = tuple(backbone.input_shape[1:])
    if any(s is None for s in shape[:-1]):
        if not input_size:
            raise ValueError(f"backbone input shape {shape} is not fully known: pass input_size")
        shape = (input_size, input_size, shape[-1] or 3)
    inputs = keras.Input(shape, name="image")
    features = backbone(inputs)
    if len(features.shape) == 4:
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        features = pool(name="pool")(features)
    elif len(features.shape) != 2:
        raise ValueError(f"backbone output must be [B, h, w, c] or [B, c], got {features.shape}")
    x = keras.layers.Dense(embedding_dim, name="projection")(features)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="projection_bn")(x)
    emb = L2Normalize(name="embedding", dtype="float32")(x)
    return keras.Model(inputs, emb, name=name)
