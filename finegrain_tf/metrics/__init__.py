"""finegrain_tf.metrics."""
from finegrain_tf.metrics.long_tail import (BalancedAccuracy, HeadTailAccuracy, balanced_accuracy,
                                            head_tail_report, per_class_accuracy)
from finegrain_tf.metrics.retrieval import (cluster_scores, map_at_r, nearest_neighbours,  # noqa: F401
                                            precision_at_k, r_precision, ranking_scores, recall_at_k,
                                            retrieval_report, soft_vote_accuracy, soft_vote_scores,
                                            squared_distances, triplet_accuracy)
