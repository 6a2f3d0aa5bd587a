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


# ------------------------------------------------------------------------------------------------
# Configurable augmentation (issue 14) and the chapter-4 crops (issue 15)


def _outputs(image, n=24, **augment):
    return [pp.preprocess_train(image, image.shape[0], image.shape[0], seed=tf.constant([7, i]),
                                **augment).numpy() for i in range(n)]


def test_flips_follow_the_switches():
    # square image with resize_size = image_size: the crop is the whole image, only flips can change it
    image = _random_image(12, 12, seed=3).astype(np.float32)
    hflip, vflip = image[:, ::-1], image[::-1]

    def kinds(outs):
        found = set()
        for out in outs:
            for name, ref in (("same", image), ("h", hflip), ("v", vflip), ("hv", image[::-1, ::-1])):
                if np.array_equal(out, ref):
                    found.add(name)
        return found

    assert kinds(_outputs(image, horizontal_flip=False)) == {"same"}
    assert kinds(_outputs(image)) == {"same", "h"}  # the default flips horizontally only
    assert kinds(_outputs(image, horizontal_flip=False, vertical_flip=True)) == {"same", "v"}
    assert kinds(_outputs(image, horizontal_flip=True, vertical_flip=True)) == {"same", "h", "v", "hv"}


def test_rotate_and_zoom_closed_forms():
    image = np.arange(5 * 5 * 3, dtype=np.float32).reshape(5, 5, 3)
    np.testing.assert_allclose(pp.rotate_and_zoom(image, 0.0, 1.0).numpy(), image, atol=1e-5)
    np.testing.assert_allclose(pp.rotate_and_zoom(image, 90.0, 1.0).numpy(), np.rot90(image, 3), atol=1e-4)
    np.testing.assert_allclose(pp.rotate_and_zoom(image, 180.0, 1.0).numpy(), image[::-1, ::-1], atol=1e-4)
    # zoom 2 on a horizontal ramp I(x) = x: bilinear sampling is exact, output(x) = c + (x - c) / 2
    ramp = np.tile(np.arange(9, dtype=np.float32)[None, :, None], (9, 1, 3))
    out = pp.rotate_and_zoom(ramp, 0.0, 2.0).numpy()
    np.testing.assert_allclose(out[4, :, 0], 4.0 + (np.arange(9) - 4.0) / 2.0, atol=1e-5)


def test_rotation_and_zoom_ranges_in_the_pipeline_function():
    image = _random_image(16, 16, seed=4).astype(np.float32)
    unchanged = _outputs(image, n=4, horizontal_flip=False, rotation=0.0, zoom=0.0)
    assert all(np.array_equal(o, image) for o in unchanged)
    rotated = _outputs(image, n=4, horizontal_flip=False, rotation=30.0)
    assert not any(np.array_equal(o, image) for o in rotated)
    assert all(o.shape == (16, 16, 3) and o.min() >= 0 and o.max() <= 255 for o in rotated)


def test_random_resized_crop_scale_and_aspect():
    # a ramp whose value is the column index: the output's value span shows the crop's width
    ramp = np.tile(np.arange(40, dtype=np.float32)[None, :, None], (40, 1, 3))
    whole = pp.random_resized_crop(ramp, 20, tf.constant([1, 2]), scale=(1.0, 1.0), aspect=(1.0, 1.0))
    expect = tf.image.resize(ramp, [20, 20], method="bilinear", antialias=True).numpy()
    np.testing.assert_allclose(whole.numpy(), expect, atol=1e-4)
    for i in range(5):  # a quarter of the area at aspect 1: a 20 x 20 window
        out = pp.random_resized_crop(ramp, 20, tf.constant([3, i]), scale=(0.25, 0.25), aspect=(1.0, 1.0))
        assert out.shape == (20, 20, 3)
        span = float(out[..., 0].numpy().max() - out[..., 0].numpy().min())
        assert 18.0 <= span <= 20.0, span
    out = pp.preprocess_train(_random_image(30, 50), 24, seed=tf.constant([0, 1]), crop="random_resized")
    assert out.shape == (24, 24, 3)


def test_multi_crop_are_the_four_corners_centre_whole_and_their_flips():
    image = _random_image(20, 31, seed=9)
    views = pp.multi_crop(image, 16, resize_size=20).numpy()  # shorter side already 20: resize = identity
    assert views.shape == (12, 16, 16, 3)
    img = image.astype(np.float32)
    expect = [img[:16, :16], img[:16, 15:], img[4:, :16], img[4:, 15:], img[2:18, 7:23],
              tf.image.resize(img, [16, 16], method="bilinear", antialias=True).numpy()]
    for i, ref in enumerate(expect):
        np.testing.assert_allclose(views[i], ref, atol=1e-3, err_msg=f"view {i}")
        np.testing.assert_allclose(views[6 + i], ref[:, ::-1], atol=1e-3, err_msg=f"flipped view {i}")
    # the centre view is the ordinary evaluation crop
    np.testing.assert_allclose(views[4], pp.preprocess_eval(image, 16, 20).numpy(), atol=1e-5)


@pytest.mark.parametrize("augment,message", [
    ({"crop": "circle"}, r"crop must be one of \['square', 'random_resized'\], got 'circle'"),
    ({"scale_min": 0.0}, r"scale_min must be in \(0\.0, 1\.0\], got 0\.0"),
    ({"scale_min": 0.5, "scale_max": 0.4}, r"scale_max must be in \[0\.5, 1\.0\], got 0\.4"),
    ({"aspect_max": 0.5}, r"aspect_max must be in \[0\.75, inf\), got 0\.5"),
    ({"rotation": -5.0}, r"rotation must be in \[0\.0, 180\.0\], got -5\.0"),
    ({"zoom": 1.0}, r"zoom must be in \[0\.0, 1\.0\), got 1\.0"),
    ({"horizontal_flip": "yes"}, r"horizontal_flip must be a bool, got 'yes'"),
    ({"shear": 0.1}, r"unknown augmentation option\(s\) \['shear'\]"),
])
def test_bad_augment_options(augment, message):
    with pytest.raises(ValueError, match=message):
        pp.preprocess_train(_random_image(8, 8), 8, **augment)
