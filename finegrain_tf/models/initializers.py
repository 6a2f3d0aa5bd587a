"""Training support for sigmoid / focal losses (seed 000 §5.4.2).

* `PriorBias`: initialises the last layer's bias to b = -log((1 - pi) / pi) with pi = 1 / C, so the
  initial sigmoid outputs equal the class prior instead of 0.5 (which gives a huge initial loss).
* `decay_variables(model, decay_bias, decay_batchnorm)`: the variables weight decay should apply to;
  the seed removes weight decay from the last layer's bias, and by default we exclude every bias and
  the normalisation layers' scale/offset (`decay_bias=True` / `decay_batchnorm=True` put them back).
  `excluded_from_decay` is the complement and `configure_weight_decay` hands it to a Keras optimizer's
  `exclude_from_weight_decay`.
"""

from __future__ import annotations

import math
import numbers

import keras

_NORM_LAYERS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                keras.layers.GroupNormalization)


@keras.saving.register_keras_serializable(package="finegrain_tf")
class PriorBias(keras.initializers.Initializer):
    """Constant bias -log((1 - pi) / pi); pi = 1 / num_classes unless `prior` is given."""

    def __init__(self, num_classes: int | None = None, prior: float | None = None):
        if prior is None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
                raise ValueError(f"num_classes must be an int >= 2 (or give prior), got {num_classes!r}")
        elif isinstance(prior, bool) or not isinstance(prior, numbers.Real) or not 0.0 < prior < 1.0:
            raise ValueError(f"prior must be in (0, 1), got {prior!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.prior = None if prior is None else float(prior)

    @property
    def value(self) -> float:
        pi = self.prior if self.prior is not None else 1.0 / self.num_classes
        return -math.log((1.0 - pi) / pi)

    def __call__(self, shape, dtype=None):
        return keras.ops.full(shape, self.value, dtype=dtype or "float32")

    def get_config(self):
        return {"num_classes": self.num_classes, "prior": self.prior}


def _all_layers(model):
    """The model and every nested layer (Keras 3 `_flatten_layers`, de-duplicated)."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def _excluded(model, decay_bias: bool, decay_batchnorm: bool) -> set:
    excluded = set()
    for layer in _all_layers(model):
        if isinstance(layer, _NORM_LAYERS):
            if not decay_batchnorm:
                excluded.update(id(v) for v in layer._trainable_variables)
            continue
        if not decay_bias:
            for v in getattr(layer, "_trainable_variables", []):
                if v.name == "bias" or v.path.endswith("/bias"):
                    excluded.add(id(v))
    return excluded


def decay_variables(model, decay_bias: bool = False, decay_batchnorm: bool = False) -> list:
    """The trainable variables weight decay should apply to (kernels, embeddings, ...).

    Biases are excluded unless `decay_bias`; BatchNorm/LayerNorm/GroupNorm gamma and beta unless
    `decay_batchnorm` (config keys optimizer.decay_bias / optimizer.decay_batchnorm).
    """
    excluded = _excluded(model, decay_bias, decay_batchnorm)
    return [v for v in model.trainable_variables if id(v) not in excluded]


def excluded_from_decay(model, decay_bias: bool = False, decay_batchnorm: bool = False) -> list:
    """Trainable variables NOT in `decay_variables` (for `optimizer.exclude_from_weight_decay`)."""
    keep = {id(v) for v in decay_variables(model, decay_bias, decay_batchnorm)}
    return [v for v in model.trainable_variables if id(v) not in keep]


def configure_weight_decay(optimizer, model, decay_bias: bool = False, decay_batchnorm: bool = False):
    """Calls `optimizer.exclude_from_weight_decay(var_list=...)` (Keras 3 decoupled weight decay)
    before the optimizer is built; returns the optimizer."""
    optimizer.exclude_from_weight_decay(var_list=excluded_from_decay(model, decay_bias, decay_batchnorm))
    return optimizer
