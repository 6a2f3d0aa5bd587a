"""`PriorBias`: the last layer's bias initialiser for sigmoid / focal losses (seed 000 §5.4.2).

b = -log((1 - pi) / pi) with pi = 1 / C (or a given prior), so the initial sigmoid outputs equal the
class prior instead of 0.5, which would give a huge initial loss summed over C classes.
"""

from __future__ import annotations

import math
import numbers

import keras


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
