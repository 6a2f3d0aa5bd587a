"""finegrain_tf.metrics."""
