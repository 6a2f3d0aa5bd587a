"""finegrain_tf.layers."""
from finegrain_tf.layers.kernel_pooling import BilinearPooling, CompactBilinearPooling, KernelPooling, estimate_gamma  # noqa: F401
from finegrain_tf.layers.anchor_soft_vote import AnchorSoftVote, kmeans_anchors  # noqa: F401
from finegrain_tf.layers.normalization import L2Normalize  # noqa: F401
