"""finegrain_tf.utils: small helpers every layer of the package may import (they import nothing of it).

  checks    argument validation: positive_int, non_negative_int, finite_float, in_range, one_of
            (ValueError naming the argument and quoting the bad value)
  labels    label normalisation: to_int_labels (ints / one-hot / scores / tensors), int_labels_tensor
            (graph-safe), labels_from_dataset, count_labels
  progress  the package's one progress bar (ProgressBar, track): tqdm on a terminal, log lines otherwise
"""

from finegrain_tf.utils.checks import finite_float, in_range, non_negative_int, one_of, positive_int
from finegrain_tf.utils.labels import count_labels, int_labels_tensor, labels_from_dataset, to_int_labels
from finegrain_tf.utils.progress import ProgressBar, track

__all__ = [
    "finite_float", "in_range", "non_negative_int", "one_of", "positive_int",
    "count_labels", "int_labels_tensor", "labels_from_dataset", "to_int_labels",
    "ProgressBar", "track",
]
