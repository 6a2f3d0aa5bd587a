"""finegrain_tf.analysis: dataset analysis on features (seed 000 sec. 4.3 and ch.6), never on the trainer.

  emd_similarity      emd_distance, domain_similarity (eqs. 4.2-4.3), select_source_classes
  dataset_granularity granularity (RankM, RSM, ... of sec. 6.2)
  features            extract_features, class_means (+ .npz save / load)
  kernel_approx       kernel_approximation_error, approximation_error_sweep (Fig 3.6)
  main                the finegrain-analyze binary

Module names differ from the functions exported here, so `finegrain_tf.analysis.granularity` is the
function and every module stays importable by its own name.
"""

from finegrain_tf.analysis.dataset_granularity import granularity
from finegrain_tf.analysis.emd_similarity import (SourceSelection, domain_similarity, emd_distance,
                                                  select_source_classes, union_source_classes,
                                                  write_class_list)
from finegrain_tf.analysis.features import class_means, extract_features
from finegrain_tf.analysis.kernel_approx import approximation_error_sweep, kernel_approximation_error

__all__ = [
    "granularity", "SourceSelection", "domain_similarity", "emd_distance", "select_source_classes",
    "union_source_classes", "write_class_list", "class_means", "extract_features",
    "approximation_error_sweep", "kernel_approximation_error",
]
