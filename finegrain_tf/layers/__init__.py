"""finegrain_tf.layers: the project's Keras layers (all registered under the package "finegrain_tf").

`import finegrain_tf.layers` registers every custom object a finegrain_tf `.keras` file refers to.
"""
from finegrain_tf.layers.kernel_pooling import BilinearPooling, CompactBilinearPooling, KernelPooling, estimate_gamma  # noqa: F401
from finegrain_tf.layers.anchor_soft_vote import AnchorSoftVote, kmeans_anchors  # noqa: F401
from finegrain_tf.layers.normalization import CaffeNormalize, L2Normalize, Rescale  # noqa: F401
from finegrain_tf.layers.flip import FlipTestAugment, FlipTestAverage  # noqa: F401
# Registered so that `import finegrain_tf.layers` is all a classifier `.keras` file needs to load.
from finegrain_tf.models.initializers import PriorBias  # noqa: F401
