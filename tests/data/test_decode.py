import struct

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.data import decode
from .image_bytes import animated_gif_bytes, pil_bytes, png_bytes

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 255, (7, 9, 3), dtype=np.uint8)


def _shape(encoded):
    return tuple(decode.image_shape(tf.constant(encoded)).numpy().tolist())


def test_the_429_byte_png_of_issue_11_is_refused_before_decoding():
    encoded = png_bytes(120000, 1)
    assert len(encoded) == 429
    assert _shape(encoded) == (1, 1, 120000)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image of 120000x1 pixels \(width x height\) exceeds the decode limits: "
                             r"at most 40000000 pixels and an aspect ratio of 1:50"):
        decode.decode_image(encoded)


def test_6000_square_png_header_against_the_limits():
    encoded = png_bytes(6000, 6000, pixels=False)  # header only: a real decode fails on the pixel data
    assert _shape(encoded) == (1, 6000, 6000)
    # 36 MP is within the default 40 MP: the decoder runs (and fails on the empty pixel data)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        decode.decode_image(encoded)
    assert "exceeds the decode limits" not in str(err.value)
    # a 30 MP limit refuses it by the header, before the decoder is reached
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image of 6000x6000 pixels \(width x height\) "
                                                            r"exceeds the decode limits: at most 30000000"):
        decode.decode_image(encoded, decode.DecodeLimits(max_pixels=30_000_000))


@pytest.mark.parametrize("fmt,kwargs", [("JPEG", {"quality": 95}), ("PNG", {}), ("GIF", {}), ("BMP", {})])
def test_header_size_matches_decoder_for_each_format(fmt, kwargs):
    encoded = pil_bytes(PIXELS, fmt, **kwargs)
    assert _shape(encoded) == (1, 7, 9)
    image = decode.decode_image(encoded)
    assert image.dtype == tf.uint8 and tuple(image.shape) == (7, 9, 3)
    np.testing.assert_array_equal(image.numpy(), tf.io.decode_image(encoded, channels=3,
                                                                     expand_animations=False).numpy())


def test_grayscale_png_gives_three_channels():
    encoded = pil_bytes(PIXELS[..., 0], "PNG")
    image = decode.decode_image(encoded).numpy()
    assert image.shape == (7, 9, 3)
    np.testing.assert_array_equal(image[..., 2], PIXELS[..., 0])


def test_top_down_bmp_negative_height():
    encoded = bytearray(pil_bytes(PIXELS, "BMP"))
    encoded[22:26] = struct.pack("<i", -7)
    assert _shape(bytes(encoded)) == (1, 7, 9)
    np.testing.assert_array_equal(decode.decode_image(bytes(encoded)).numpy(), PIXELS[::-1])


def test_gif_size_comes_from_frames_not_the_logical_screen():
    encoded = pil_bytes(PIXELS, "GIF")
    lying = encoded[:6] + struct.pack("<HH", 60000, 60000) + encoded[10:]  # screen says 60000^2
    assert _shape(lying) == (1, 7, 9)
    assert tuple(decode.decode_image(lying).shape) == (7, 9, 3)  # as TF's decoder sees it


def test_animated_gif_counts_every_frame_against_the_pixel_limit():
    encoded = animated_gif_bytes(frames=5, height=50, width=60)
    assert _shape(encoded) == (5, 50, 60)
    assert tuple(decode.decode_image(encoded).shape) == (50, 60, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image of 60x50 pixels \(width x height\) "
                                                            r"x 5 frames exceeds the decode limits"):
        decode.decode_image(encoded, decode.DecodeLimits(max_pixels=10_000))
    assert bool(decode.within_limits([5, 50, 60], decode.DecodeLimits(max_pixels=15_000)))
    assert not bool(decode.within_limits([5, 50, 60], decode.DecodeLimits(max_pixels=14_999)))


@pytest.mark.parametrize("encoded", [
    b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", b"GIF89a\x10\x00", b"BM\x00\x00",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"plain text, not an image"],
    ids=["empty", "png_cut", "gif_cut", "bmp_cut", "webp", "text"])
def test_unknown_or_truncated_headers_are_refused(encoded):
    assert _shape(encoded) == (-1, -1, -1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not a decodable JPEG/PNG/GIF/BMP image"):
        decode.decode_image(encoded)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not a decodable"):
        decode.decode_or_flag(encoded)  # broken bytes are errors, not size refusals


def test_truncated_jpeg_header_raises_invalid_argument():
    encoded = pil_bytes(PIXELS, "JPEG")[:20]
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode.image_shape(encoded)


@pytest.mark.parametrize("height,width,ok", [(1, 50, True), (1, 51, False), (50, 1, True), (60, 1, False),
                                             (2, 100, True), (0, 5, False)])
def test_aspect_ratio_limit(height, width, ok):
    assert bool(decode.within_limits([1, height, width])) is ok


def test_limits_validate_and_are_configurable():
    with pytest.raises(ValueError, match=r"max_pixels must be a positive int, got 0"):
        decode.DecodeLimits(max_pixels=0)
    with pytest.raises(ValueError, match=r"max_aspect_ratio must be in \[1\.0, inf\), got 0\.5"):
        decode.DecodeLimits(max_aspect_ratio=0.5)
    encoded = png_bytes(100, 100)
    assert tuple(decode.decode_image(encoded).shape) == (100, 100, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"100x100 pixels.*at most 5000 pixels"):
        decode.decode_image(encoded, decode.DecodeLimits(max_pixels=5000))


def test_decode_or_flag_in_tf_data_skips_oversized():
    files = [pil_bytes(PIXELS, "PNG"), png_bytes(120000, 1), b"broken", pil_bytes(PIXELS, "JPEG")]
    ds = tf.data.Dataset.from_tensor_slices(files).map(decode.decode_or_flag).ignore_errors()
    got = [(tuple(image.shape), bool(ok)) for image, ok in ds]
    assert got == [((7, 9, 3), True), ((1, 1, 3), False), ((7, 9, 3), True)]


def test_served_graph_refuses_with_invalid_argument_after_savedmodel_round_trip(tmp_path):
    class Decoder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def sizes(self, encoded):
            images = tf.map_fn(lambda e: tf.image.resize(decode.decode_image(e), [4, 4]), encoded,
                               fn_output_signature=tf.TensorSpec([4, 4, 3], tf.float32))
            return {"images": images}

    path = str(tmp_path / "decoder")
    module = Decoder()
    tf.saved_model.save(module, path, signatures={"serving_default": module.sizes})
    good = tf.constant([pil_bytes(PIXELS, "PNG")])
    bad = tf.constant([pil_bytes(PIXELS, "PNG"), png_bytes(120000, 1)])
    # TF1 session loader: the path TF Serving's C++ server takes
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta.signature_def["serving_default"]
        feed, fetch = sig.inputs["encoded"].name, sig.outputs["images"].name
        assert sess.run(fetch, {feed: good.numpy()}).shape == (1, 4, 4, 3)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image of 120000x1 pixels"):
            sess.run(fetch, {feed: bad.numpy()})
