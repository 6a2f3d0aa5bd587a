"""finegrain_tf.sampling."""
from finegrain_tf.sampling.batches import PKBatchSampler, sample_pairs  # noqa: F401
from finegrain_tf.sampling.triplets import (HardNegatives, QuasiOnlineTripletSampler,  # noqa: F401
                                            TripletSet, load_hard_negatives, local_positive_neighbours,
                                            sample_triplets)
