"""`PriorBias` (seed 000 §5.4.2): initialises the last layer's bias to b = -log((1 - pi) / pi) with
pi = 1 / C, so the initial sigmoid outputs equal the class prior instead of 0.5 (which gives a huge
initial loss). Defined in `finegrain_tf.layers.prior_bias`; weight-decay helpers live in `finegrain_tf.train.optim`.
"""

from __future__ import annotations

from finegrain_tf.layers.prior_bias import PriorBias  # noqa: F401  (the layer-side home of PriorBias)
