"""The seeds' preprocessing: shorter-side resize, random crop + flip, centre crop, decoding."""

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.data import preprocessing as pp


def _random_image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


def test_default_resize_size():
    assert [pp.default_resize_size(s) for s in (224, 299, 448, 64)] == [256, 342, 512, 73]


@pytest.mark.parametrize("h,w", [(1, 1), (5, 17), (40, 3), (13, 9), (47, 19)])
def test_tiny_random_sized_inputs(h, w):
    image = _random_image(h, w, seed=h * w)
    train = pp.preprocess_train(image, 32, seed=tf.constant([1, 2]))
    evaluated = pp.preprocess_eval(image, 32)
    for out in (train, evaluated):
        assert out.shape == (32, 32, 3) and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0


@pytest.mark.parametrize("size", [224, 299, 448])
def test_network_input_sizes(size):
    image = _random_image(50, 80)
    assert pp.preprocess_train(image, size).shape == (size, size, 3)
    assert pp.preprocess_eval(image, size).shape == (size, size, 3)


def test_resize_shorter_side_shapes():
    assert pp.resize_shorter_side(_random_image(30, 60), 73).shape == (73, 146, 3)
    assert pp.resize_shorter_side(_random_image(400, 100), 50).shape == (200, 50, 3)
    assert pp.resize_shorter_side(_random_image(3, 2), 10).shape == (15, 10, 3)


def test_eval_centre_crop_matches_numpy():
    # Shorter side already equal to resize_size: the resize is the identity and the eval output is
    # exactly the numpy centre window at ((H - S) // 2, (W - S) // 2).
    image = _random_image(73, 100, seed=5)
    out = pp.preprocess_eval(image, 64, resize_size=73).numpy()
    top, left = (73 - 64) // 2, (100 - 64) // 2
    np.testing.assert_allclose(out, image[top:top + 64, left:left + 64].astype(np.float32), atol=1e-3)
    portrait = np.transpose(image, (1, 0, 2))
    out = pp.preprocess_eval(portrait, 64, resize_size=73).numpy()
    np.testing.assert_allclose(out, portrait[left:left + 64, top:top + 64].astype(np.float32), atol=1e-3)


def test_eval_is_deterministic_and_centred_after_resize():
    image = _random_image(37, 91, seed=7)
    a = pp.preprocess_eval(image, 48, resize_size=56).numpy()
    b = pp.preprocess_eval(image, 48, resize_size=56).numpy()
    np.testing.assert_array_equal(a, b)
    # Centred: cropping a mirrored image gives the mirrored crop (resized width - 48 is even here).
    resized = pp.resize_shorter_side(image, 56)
    assert (int(resized.shape[1]) - 48) % 2 == 0 and (int(resized.shape[0]) - 48) % 2 == 0
    mirrored = pp.preprocess_eval(image[:, ::-1], 48, resize_size=56).numpy()
    np.testing.assert_allclose(mirrored, a[:, ::-1], atol=1e-2)


def test_train_crop_and_flip_come_from_the_resized_image():
    image = _random_image(20, 20, seed=3)
    seen_flip, seen_plain = False, False
    for i in range(12):
        out = pp.preprocess_train(image, 20, resize_size=20, seed=tf.constant([0, i])).numpy()
        # Crop covers the whole (identity-resized) image: output is the image or its mirror.
        if np.allclose(out, image, atol=1e-3):
            seen_plain = True
        else:
            np.testing.assert_allclose(out, image[:, ::-1], atol=1e-3)
            seen_flip = True
    assert seen_flip and seen_plain


def test_train_stateless_seed_reproducible():
    image = _random_image(60, 90, seed=1)
    a = pp.preprocess_train(image, 32, seed=tf.constant([4, 2])).numpy()
    b = pp.preprocess_train(image, 32, seed=tf.constant([4, 2])).numpy()
    np.testing.assert_array_equal(a, b)
    outs = {pp.preprocess_train(image, 32, seed=tf.constant([4, i])).numpy().tobytes() for i in range(6)}
    assert len(outs) > 1


def test_bad_sizes():
    with pytest.raises(ValueError, match="resize_size=30"):
        pp.preprocess_eval(_random_image(4, 4), 32, resize_size=30)
    with pytest.raises(ValueError, match="image_size"):
        pp.preprocess_train(_random_image(4, 4), 0)


def _png(image):
    return tf.io.encode_png(image).numpy()


def test_decode_image_formats():
    rgb = _random_image(6, 5)
    gray = _random_image(6, 5, c=1)
    rgba = _random_image(6, 5, c=4)
    np.testing.assert_array_equal(pp.decode_image(_png(rgb)).numpy(), rgb)
    np.testing.assert_array_equal(pp.decode_image(_png(gray)).numpy(), np.repeat(gray, 3, axis=-1))
    np.testing.assert_array_equal(pp.decode_image(_png(rgba)).numpy(), rgba[..., :3])
    jpeg = pp.decode_image(tf.io.encode_jpeg(rgb).numpy())
    assert jpeg.shape == (6, 5, 3) and jpeg.dtype == tf.uint8
    PIL = pytest.importorskip("PIL.Image")
    frames = [PIL.fromarray(_random_image(6, 5, seed=s)) for s in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    gif = pp.decode_image(buf.getvalue())
    assert gif.shape == (6, 5, 3)  # first frame only


def test_graph_mode_batch_of_encoded_images():
    """As inside an exported serving signature: decode + eval preprocessing under tf.map_fn."""
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(encoded):
        return tf.map_fn(lambda e: pp.preprocess_eval(pp.decode_image(e), 24), encoded,
                         fn_output_signature=tf.TensorSpec([24, 24, 3], tf.float32))

    batch = tf.constant([_png(_random_image(10, 30)), _png(_random_image(31, 7, c=1))])
    out = serve(batch)
    assert out.shape == (2, 24, 24, 3)
    np.testing.assert_allclose(out[0].numpy(), pp.preprocess_eval(_random_image(10, 30), 24).numpy(),
                               atol=1e-4)
