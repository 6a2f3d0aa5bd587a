"""finegrain_tf.train."""
