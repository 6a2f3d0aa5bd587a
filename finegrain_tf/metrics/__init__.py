"""finegrain_tf.metrics."""
from finegrain_tf.metrics.long_tail import (BalancedAccuracy, HeadTailAccuracy, balanced_accuracy,
                                            head_tail_report, per_class_accuracy)
