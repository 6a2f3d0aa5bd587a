"""finegrain_tf.metrics."""
from finegrain_tf.metrics.long_tail import (BalancedAccuracy, HeadTailAccuracy, balanced_accuracy,
                                            head_tail_report, per_class_accuracy)
from finegrain_tf.metrics.retrieval import (recall_at_k, soft_vote_accuracy,  # noqa: F401
                                            soft_vote_scores, triplet_accuracy)
