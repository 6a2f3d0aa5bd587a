"""finegrain_tf.analysis."""
