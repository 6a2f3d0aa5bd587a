"""The §4.1.1 entropy filter against a scipy.ndimage / numpy float64 reference."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from finegrain_tf.data.entropy import entropy_keep_mask, filter_by_entropy, laplacian_entropy


def _reference(image, channels):
    rgb = image.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    planes = [r - g, r + g - 2 * b] if channels == "chroma" else [(r + g + b) / 3]
    values = []
    for plane in planes:
        values.append(ndimage.laplace(plane, mode="reflect").reshape(-1))
    values = np.clip(np.concatenate(values), -255, 255)
    counts = np.zeros(511)
    for v in values:  # explicit loop: one histogram bin per integer, centred on it
        counts[int(np.floor(v + 0.5)) + 255] += 1
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("channels", ["chroma", "luma"])
def test_matches_scipy_reference(channels):
    rng = np.random.default_rng(0)
    for shape in [(9, 7, 3), (16, 16, 3), (5, 12, 3)]:
        image = rng.integers(0, 256, shape).astype(np.uint8)
        got = float(laplacian_entropy(image, channels))
        np.testing.assert_allclose(got, _reference(image, channels), rtol=1e-5, atol=1e-5)
    smooth = (np.linspace(0, 200, 16)[:, None, None] * np.ones((16, 16, 3))).astype(np.uint8)
    smooth[..., 0] = rng.integers(0, 30, (16, 16))
    np.testing.assert_allclose(float(laplacian_entropy(smooth, channels)), _reference(smooth, channels),
                               rtol=1e-5, atol=1e-5)


def test_closed_forms():
    flat = np.full((12, 12, 3), 77, np.uint8)
    assert float(laplacian_entropy(flat, "luma")) == 0.0  # every filtered value is 0
    gray = np.repeat(np.random.default_rng(1).integers(0, 256, (12, 12, 1)), 3, axis=-1).astype(np.uint8)
    assert float(laplacian_entropy(gray, "chroma")) == 0.0  # a grayscale photo has no chroma
    assert float(laplacian_entropy(gray, "luma")) > 3.0
    # A vertical step edge: filtered values 0 (half), +90 and -90 (a quarter each) -> 1.5 bits.
    step = np.zeros((4, 4, 3), np.uint8)
    step[:, 2:] = 90
    values = ndimage.laplace(step[..., 0].astype(float), mode="reflect")
    assert sorted(np.unique(values, return_counts=True)[1]) == [4, 4, 8]
    np.testing.assert_allclose(float(laplacian_entropy(step, "luma")), 1.5, atol=1e-6)


def test_keep_mask_counts_dropped_and_filter_in_tf_data():
    rng = np.random.default_rng(2)
    colour = rng.integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    gray = np.repeat(rng.integers(0, 256, (2, 16, 16, 1)), 3, axis=-1).astype(np.uint8)
    images = np.concatenate([colour[:1], gray[:1], colour[1:], gray[1:]])
    keep, scores = entropy_keep_mask(tf.data.Dataset.from_tensor_slices(images), threshold=1.0)
    np.testing.assert_array_equal(keep, [True, False, True, True, False])
    assert scores.shape == (5,)
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(5)))
    kept = [int(i) for _, i in filter_by_entropy(ds, 1.0, image_key=0)]
    assert kept == [0, 2, 3]


def test_synthetic_grayscale_photos_are_dropped():
    from finegrain_tf.data.synthetic_geo import generate_geo
    data = generate_geo(num_places=10, photos_per_place=3, image_size=24, seed=3, grayscale_share=0.3,
                        timelapse_users=0, duplicate_share=0.0)
    keep, _ = entropy_keep_mask(data.photos.image_dataset(), threshold=0.5)
    assert data.grayscale.any()
    np.testing.assert_array_equal(keep, ~data.grayscale)
