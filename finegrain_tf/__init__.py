"""finegrain_tf: fine-grained and long-tailed image recognition for TensorFlow 2 / Keras 3.

Subpackages (import what you use; nothing heavy is imported here):
  layers    KernelPooling, CompactBilinearPooling, BilinearPooling, AnchorSoftVote, L2Normalize
  losses    class-balanced, long-tail, triplet and contrastive losses
  metrics   per-class, head/tail and retrieval metrics
  data      embedded synthetic dataset, tfds and image-folder loaders, preprocessing
  sampling  triplet and pair samplers
  models    backbones and classifier / embedding heads
  analysis  EMD domain similarity, dataset granularity, kernel approximation error
  serving   SavedModel export for TF Serving, gRPC client, dev server
  train     config dataclasses, training loop, the finegrain-train binary
"""

__version__ = "0.1.0"
