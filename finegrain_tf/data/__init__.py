"""finegrain_tf.data."""
