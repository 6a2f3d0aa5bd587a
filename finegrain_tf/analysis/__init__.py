"""finegrain_tf.analysis: dataset analysis on features (seed 000 sec. 4.3 and ch.6), never on the trainer.

  emd_similarity      emd_distance, domain_similarity (eqs. 4.2-4.3), select_source_classes
  dataset_granularity granularity (RankM, RSM, ... of sec. 6.2)
  features            extract_features, class_means (+ .npz save / load)
  kernel_approx       kernel_approximation_error, approximation_error_sweep (Fig 3.6)
  main                the finegrain-analyze binary

Module names differ from the functions exported here, so `finegrain_tf.analysis.granularity` is the
function and every module stays importable by its own name.
"""

import importlib

# Imported on first use: `finegrain-analyze --help` and `import finegrain_tf.analysis.main` then do
# not pay for TensorFlow / POT.
_EXPORTS = {
    "granularity": "dataset_granularity",
    "SourceSelection": "emd_similarity", "domain_similarity": "emd_similarity",
    "emd_distance": "emd_similarity", "select_source_classes": "emd_similarity",
    "union_source_classes": "emd_similarity", "write_class_list": "emd_similarity",
    "class_means": "features", "extract_features": "features",
    "approximation_error_sweep": "kernel_approx", "kernel_approximation_error": "kernel_approx",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
