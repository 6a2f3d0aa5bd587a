"""finegrain_tf.ops: pure tensor maths shared by the layers (no Keras layers, no models, no data)."""
