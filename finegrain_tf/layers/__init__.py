"""finegrain_tf.layers."""
