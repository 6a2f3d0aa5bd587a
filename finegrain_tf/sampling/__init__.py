"""finegrain_tf.sampling."""
