"""finegrain_tf.utils: small helpers every layer of the package may import (they import nothing of it).

Import the module you need (this package imports none of them, so `--help` of a binary stays fast):

  checks    argument validation: positive_int, non_negative_int, finite_float, in_range, one_of
            (ValueError naming the argument and quoting the bad value)
  labels    label normalisation: to_int_labels (ints / one-hot / scores / tensors), int_labels_tensor
            (graph-safe), labels_from_dataset, count_labels
  progress  the package's one progress bar (ProgressBar, track): tqdm on a terminal, log lines otherwise
  cli       running an absl binary as a console script (`--help` lists its flags)
"""
