"""finegrain_tf.losses."""
