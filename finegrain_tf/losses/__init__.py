"""finegrain_tf.losses."""
from finegrain_tf.losses.class_balanced import (ClassBalancedLoss, class_balanced_loss, class_balanced_weights,
                                                count_labels, effective_number)
from finegrain_tf.losses.long_tail import (BalancedSoftmaxLoss, DeferredReweighting, LDAMLoss,
                                           LogitAdjustedLoss)
from finegrain_tf.losses.metric import (TripletLoss, pairwise_distances, triplet_loss,  # noqa: F401
                                        triplet_margin_loss)
from finegrain_tf.losses.pairwise import ContrastiveLoss, contrastive_loss  # noqa: F401
from finegrain_tf.losses.anchor_vote import (AnchorVoteLoss, CombinedObjective,  # noqa: F401
                                             anchor_vote_loss, build_anchor_vote_model,
                                             combined_objective)
