"""finegrain_tf.layers: the project's Keras layers (all registered under the package "finegrain_tf").

`import finegrain_tf` (or this package) registers every custom object a finegrain_tf `.keras` file
refers to; models compiled with a project loss also need `finegrain_tf.losses`, which
`import finegrain_tf` imports too.
"""
from finegrain_tf.layers.kernel_pooling import KernelPooling  # noqa: F401
from finegrain_tf.layers.bilinear_pooling import BilinearPooling, CompactBilinearPooling  # noqa: F401
from finegrain_tf.layers.anchor_soft_vote import AnchorSoftVote, kmeans_anchors  # noqa: F401
from finegrain_tf.layers.normalization import CaffeNormalize, L2Normalize, Rescale  # noqa: F401
from finegrain_tf.layers.flip import FlipTestAugment, FlipTestAverage  # noqa: F401
from finegrain_tf.layers.prior_bias import PriorBias  # noqa: F401
from finegrain_tf.ops.taylor_kernel import estimate_gamma  # noqa: F401  (what KernelPooling.adapt computes)
