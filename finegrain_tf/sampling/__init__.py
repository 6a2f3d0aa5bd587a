"""finegrain_tf.sampling: which examples a training step sees.

  triplets        quasi-online triplet sampling: local positives, violating / hardest negatives (§2.3)
  hard_negatives  human hard-negative files (rejected proposals of the bootstrap rounds, §2.2.2)
  pairs           Siamese same/different pairs
"""
from finegrain_tf.sampling.hard_negatives import (HardNegatives, load_hard_negatives,  # noqa: F401
                                                  write_hard_negatives)
from finegrain_tf.sampling.pairs import sample_pairs  # noqa: F401
from finegrain_tf.sampling.triplets import (QuasiOnlineTripletSampler, TripletSet,  # noqa: F401
                                            local_positive_neighbours, sample_triplets)
from finegrain_tf.sampling.geo import geo_pairs  # noqa: F401
