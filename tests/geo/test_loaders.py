"""Geo manifest, synthetic geo set, rated triplets and Middlebury loaders; pair datasets; augmentation."""

import datetime
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.data import geo, middlebury, rated_triplets
from finegrain_tf.data.synthetic_geo import SEASONS, generate_geo
from finegrain_tf.sampling.geo import haversine_m


@pytest.fixture(scope="module")
def small_geo():
    return generate_geo(num_places=12, photos_per_place=4, image_size=24, seed=7, timelapse_photos=6,
                        duplicate_share=0.1)


def _write_images(photos, folder):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, image in enumerate(photos.images):
        path = os.path.join(folder, f"{i:04d}.png")
        with open(path, "wb") as f:
            f.write(tf.io.encode_png(image).numpy())
        paths.append(os.path.basename(path))
    return paths


def test_synthetic_geo_is_deterministic_and_has_its_nuisances(small_geo):
    again = generate_geo(num_places=12, photos_per_place=4, image_size=24, seed=7, timelapse_photos=6,
                         duplicate_share=0.1)
    np.testing.assert_array_equal(small_geo.photos.images, again.photos.images)
    np.testing.assert_array_equal(small_geo.photos.latitudes, again.photos.latitudes)
    other = generate_geo(num_places=12, photos_per_place=4, image_size=24, seed=8)
    assert not np.array_equal(other.photos.images[:10], small_geo.photos.images[:10])
    g = small_geo
    n = len(g.photos)
    assert g.photos.images.shape == (n, 24, 24, 3)
    # GPS noise of a few metres around each place.
    d = haversine_m(g.photos.latitudes, g.photos.longitudes, g.place_latitudes[g.place],
                    g.place_longitudes[g.place])
    assert 0 < np.median(d) < 10 and d.max() < 25
    assert (g.timelapse & (g.duplicate_of < 0)).sum() == 6 and len(set(g.photos.users[g.timelapse])) == 1
    copies = np.flatnonzero(g.duplicate_of >= 0)
    assert copies.size > 0
    for c in copies:
        np.testing.assert_array_equal(g.photos.images[c], g.photos.images[g.duplicate_of[c]])
    # Season follows the timestamp's month.
    months = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc).month for t in g.photos.timestamps]
    expected = [{12: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2, 8: 2}.get(m, 3) for m in months]
    np.testing.assert_array_equal(g.season, expected)


def test_restricted_seasons_and_hours():
    g = generate_geo(num_places=5, photos_per_place=3, image_size=16, seed=1, seasons=(2,),
                     hours=(10, 11), timelapse_users=0)
    assert set(g.season) == {SEASONS.index("summer")} and set(g.hour) <= {10, 11}


def test_manifest_round_trip_csv_and_jsonl(small_geo, tmp_path):
    names = _write_images(small_geo.photos, str(tmp_path / "photos"))
    for ext in ("csv", "jsonl"):
        path = str(tmp_path / f"manifest.{ext}")
        geo.write_manifest(small_geo.photos, path, [os.path.join("photos", p) for p in names])
        photos = geo.load_manifest(path)
        assert len(photos) == len(small_geo.photos)
        np.testing.assert_allclose(photos.latitudes, small_geo.photos.latitudes, rtol=0, atol=1e-12)
        np.testing.assert_allclose(photos.timestamps, small_geo.photos.timestamps, atol=1e-3)
        np.testing.assert_array_equal(photos.users, small_geo.photos.users)
        first = next(iter(photos.image_dataset()))
        np.testing.assert_array_equal(first.numpy(), small_geo.photos.images[0])


def test_manifest_skips_and_counts_corrupt_images(small_geo, tmp_path):
    names = _write_images(small_geo.photos.subset(np.arange(4)), str(tmp_path))
    with open(tmp_path / names[1], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really a png")
    path = str(tmp_path / "m.csv")
    geo.write_manifest(small_geo.photos.subset(np.arange(4)), path, names)
    photos = geo.load_manifest(path)
    assert len(photos) == 3 and len(photos.skipped) == 1 and photos.skipped[0].endswith(names[1])


def test_timestamps_iso_and_epoch():
    assert geo.parse_timestamp("2015-06-01T12:00:00", "x") == 1433160000.0
    assert geo.parse_timestamp("2015-06-01T14:00:00+02:00", "x") == 1433160000.0
    assert geo.parse_timestamp("1433160000", "x") == 1433160000.0
    assert geo.parse_timestamp(1433160000, "x") == 1433160000.0


def test_duplicate_keys(small_geo):
    keys = geo.duplicate_keys(small_geo.photos, "bytes")
    copies = np.flatnonzero(small_geo.duplicate_of >= 0)
    for c in copies:
        assert keys[c] == keys[small_geo.duplicate_of[c]]
    assert len(set(keys)) == len(keys) - copies.size
    phash = geo.duplicate_keys(small_geo.photos, "phash")
    assert all(len(k) == 16 for k in phash)
    for c in copies:
        assert phash[c] == phash[small_geo.duplicate_of[c]]
    assert geo.duplicate_keys(small_geo.photos, "none") is None


def test_pair_dataset_and_preprocessing(small_geo):
    ds = geo.pair_dataset(small_geo.photos, [0, 1], [2, 3], [1, 0], image_size=20, mean_pixel=[10, 20, 30])
    (x, y), = list(ds.take(1))
    assert x["image_a"].shape == (20, 20, 3) and int(y) == 1
    want = tf.image.resize(tf.cast(small_geo.photos.images[0], tf.float32), (20, 20), antialias=True)
    np.testing.assert_allclose(x["image_a"].numpy(), np.clip(want.numpy(), 0, 255) - [10, 20, 30], atol=1e-4)
    mean = geo.dataset_mean_pixel(small_geo.photos.image_dataset(), 24)
    np.testing.assert_allclose(mean, small_geo.photos.images.reshape(-1, 3).mean(0), rtol=1e-4)
    aug = geo.pair_dataset(small_geo.photos, [0], [1], [1], image_size=24, training=True, augment=True)
    (xa, _), = list(aug)
    assert xa["image_a"].shape == (24, 24, 3)


def test_augmentation_is_geometric_only():
    layers = geo.augmentation(seed=0)
    kinds = [type(layer).__name__ for layer in layers.layers]
    assert kinds == ["RandomFlip", "RandomRotation", "RandomZoom"]
    assert layers.layers[0].mode == "horizontal_and_vertical"
    # A constant-colour image stays that colour: no colour augmentation.
    image = np.full((1, 16, 16, 3), [200.0, 30.0, 90.0], np.float32)
    out = layers(image, training=True).numpy()
    np.testing.assert_allclose(out, image, atol=1e-3)


def test_rated_triplets_round_trip_and_accuracy(small_geo, tmp_path):
    rated = rated_triplets.generate_rated_triplets(small_geo, 40, seed=0)
    assert set(rated.counts()) == set(rated_triplets.RATINGS) and len(rated) == 40
    place = small_geo.place
    for q, a, b, r in zip(rated.query, rated.a, rated.b, rated.ratings):
        if r == 2:
            assert place[q] == place[a] != place[b]
        elif r == 3:
            assert place[q] == place[b] != place[a]
    names = [f"img{i}.png" for i in range(len(small_geo.photos))]
    as_paths = rated_triplets.RatedTriplets([names[i] for i in rated.query], [names[i] for i in rated.a],
                                            [names[i] for i in rated.b], rated.ratings)
    for ext in ("csv", "jsonl"):
        path = str(tmp_path / f"rated.{ext}")
        rated_triplets.write_rated_triplets(as_paths, path)
        back = rated_triplets.load_rated_triplets(path)
        np.testing.assert_array_equal(back.ratings, rated.ratings)
        assert back.query[0] == os.path.join(str(tmp_path), names[rated.query[0]])
    # Thesis numbering 1-4 is accepted too.
    path = tmp_path / "numbers.csv"
    path.write_text("query,a,b,rating\nq.png,a.png,b.png,3\nq.png,a.png,b.png,4\nq.png,a.png,b.png,1\n")
    back = rated_triplets.load_rated_triplets(str(path))
    np.testing.assert_array_equal(back.ratings, [2, 3, 0])
    np.testing.assert_array_equal(back.closer, [0, 1])


def _middlebury_tree(root, scenes, with_extras):
    rng = np.random.default_rng(0)
    for s in range(scenes):
        folder = os.path.join(root, f"Scene{s}-perfect")
        os.makedirs(folder)
        views = ["im0.png", "im1.png"] + (["im1E.png", "im1L.png"] if with_extras and s % 2 == 0 else [])
        for name in views:
            image = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(tf.io.encode_png(image).numpy())
    os.makedirs(os.path.join(root, "not_a_scene"))


def test_middlebury_pairs(small_geo, tmp_path):
    root = str(tmp_path / "middlebury")
    _middlebury_tree(root, 4, with_extras=True)
    scenes = middlebury.scan_scenes(root)
    assert sorted(scenes) == [f"Scene{s}-perfect" for s in range(4)]
    assert len(middlebury.positive_pairs(scenes, "lr")) == 4
    assert len(middlebury.positive_pairs(scenes, "exposure")) == 2
    assert len(middlebury.positive_pairs(scenes, "all")) == 2 * 6 + 2 * 1
    names = _write_images(small_geo.photos, str(tmp_path / "geo"))
    manifest = str(tmp_path / "geo.csv")
    geo.write_manifest(small_geo.photos, manifest, [os.path.join("geo", n) for n in names])
    photos = geo.load_manifest(manifest)
    for rule in ("same", "different"):
        pairs = middlebury.middlebury_pairs(root, photos, "lr", negative_user=rule, seed=0)
        assert pairs.labels.tolist() == [1] * 4 + [0] * 4
        index = {p: i for i, p in enumerate(photos.paths)}
        for a, b in zip(pairs.left[4:], pairs.right[4:]):
            i, j = index[a], index[b]
            assert (photos.users[i] == photos.users[j]) == (rule == "same")
            assert haversine_m(photos.latitudes[i], photos.longitudes[i], photos.latitudes[j],
                               photos.longitudes[j]) <= 10
        assert pairs.left[0].endswith("im0.png") and pairs.right[0].endswith("im1.png")
