"""finegrain_tf.losses."""
from finegrain_tf.losses.class_balanced import (ClassBalancedLoss, class_balanced_loss, class_balanced_weights,
                                                count_labels, effective_number)
from finegrain_tf.losses.long_tail import (BalancedSoftmaxLoss, DeferredReweighting, LDAMLoss,
                                           LogitAdjustedLoss)
