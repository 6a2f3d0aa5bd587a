"""finegrain_tf.serving."""
