"""finegrain_tf.models."""
