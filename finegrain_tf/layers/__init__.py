"""finegrain_tf.layers."""
from finegrain_tf.layers.kernel_pooling import BilinearPooling, CompactBilinearPooling, KernelPooling, estimate_gamma  # noqa: F401
