"""Bad inputs of the geo area: each gives a ValueError naming the offending value (or is skipped and
counted)."""

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.analysis.fuzziness import fuzziness_statistics
from finegrain_tf.data import geo, middlebury, rated_triplets
from finegrain_tf.data.entropy import entropy_keep_mask, laplacian_entropy
from finegrain_tf.data.synthetic_geo import generate_geo
from finegrain_tf.models import siamese
from finegrain_tf.sampling.geo import TimeWindow, geo_pairs, sample_geo_pairs
from finegrain_tf.train import config

LAT, LON = np.array([40.7, 40.7001, 40.8]), np.array([-74.0, -74.0, -73.9])


@pytest.mark.parametrize("call,message", [
    (lambda: geo_pairs([91.0, 0.0], [0.0, 0.0], 10), "latitude at index 0 is 91.0"),
    (lambda: geo_pairs([0.0, np.nan], [0.0, 0.0], 10), "latitude at index 1 is nan"),
    (lambda: geo_pairs([0.0, 0.0], [0.0, 181.0], 10), "longitude at index 1 is 181.0"),
    (lambda: geo_pairs([0.0], [0.0, 1.0], 10), "latitudes (1) and longitudes (2) differ in length"),
    (lambda: geo_pairs(LAT, LON, -1.0), "radius_m must be in [0.0, inf), got -1.0"),
    (lambda: sample_geo_pairs(LAT, LON, negatives="nearby"), "negatives must be one of"),
    (lambda: sample_geo_pairs(LAT, LON, positive_user="same"), "users are required"),
    (lambda: sample_geo_pairs(LAT, LON, window=TimeWindow(months=(6,))), "timestamps are required"),
    (lambda: sample_geo_pairs(LAT, LON, negatives="ring", ring_m=(100, 30)), "ring_m must be (a, b)"),
    (lambda: sample_geo_pairs(LAT, LON, negatives="near"), "needs a user rule"),
    (lambda: sample_geo_pairs(LAT, LON, users=["a", "b"]), "users must have one entry per photo (3)"),
    (lambda: sample_geo_pairs(LAT, LON, timestamps=[0, 1, np.inf]), "timestamp at index 2 is inf"),
    (lambda: TimeWindow(months=(13,)), "TimeWindow month must be in [1, 12], got 13"),
    (lambda: TimeWindow(start="June 2015"), "TimeWindow start='June 2015' is not an ISO date"),
])
def test_sampling(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def _manifest(tmp_path, text, name="m.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


HEADER = "path,latitude,longitude,timestamp,user_id\n"


@pytest.mark.parametrize("text,name,message", [
    (HEADER + "a.png,40.7,-74.0,2015-06-01,alice\nb.png,95,-74.0,2015-06-01,bob\n", "m.csv",
     "m.csv:3: latitude '95' is outside [-90, 90]"),
    (HEADER + "a.png,40.7,east,2015-06-01,alice\n", "m.csv", "m.csv:2: longitude 'east' is not a number"),
    (HEADER + "a.png,40.7,-74.0,yesterday,alice\n", "m.csv",
     "m.csv:2: timestamp 'yesterday' is neither an ISO 8601"),
    (HEADER + "a.png,40.7,-74.0,2015-06-01,\n", "m.csv", "m.csv:2: missing ['user_id']"),
    ("path,latitude,longitude\na.png,40.7,-74.0\n", "m.csv", "missing ['timestamp', 'user_id']"),
    (HEADER, "m.csv", "has no photos"),
    ('{"path": "a.png", "latitude": 1, "longitude": 2, "timestamp": 0, "user_id": "u", "camera": "x"}\n',
     "m.jsonl", "m.jsonl:1: unknown fields ['camera']"),
    ('{"path": "a.png",\n', "m.jsonl", "m.jsonl:1: not valid JSON"),
])
def test_manifest_rows_are_named(tmp_path, text, name, message):
    with pytest.raises(ValueError) as error:
        geo.load_manifest(_manifest(tmp_path, text, name), verify_images=False)
    assert message in str(error.value)


def test_manifest_missing_file_and_corrupt_images(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        geo.load_manifest(str(tmp_path / "nope.csv"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    path = _manifest(tmp_path, HEADER + "bad.png,40.7,-74.0,2015-06-01,alice\n")
    with pytest.raises(ValueError, match="all 1 images are unreadable or corrupt"):
        geo.load_manifest(path)


@pytest.mark.parametrize("call,message", [
    (lambda: generate_geo(num_places=0), "num_places must be a positive int, got 0"),
    (lambda: generate_geo(image_size=8), "image_size must be >= 16, got 8"),
    (lambda: generate_geo(fuzzy_share=1.5), "fuzzy_share must be in [0.0, 1.0], got 1.5"),
    (lambda: generate_geo(seasons=(4,)), "season must be one of [0, 1, 2, 3], got 4"),
    (lambda: geo.square_resize(np.zeros((4, 4, 3)), 0), "size must be a positive int, got 0"),
    (lambda: geo.square_resize(np.zeros((4, 4, 3)), 8, mean_pixel=[1, 2]), "mean_pixel must have 3 values"),
    (lambda: geo.augmentation(rotation_deg=200), "rotation_deg must be in [0, 180], got 200"),
    (lambda: geo.duplicate_keys(None, "md5"), "duplicate mode 'md5' is not one of"),
    (lambda: geo.parse_timestamp("nan", "row 3"), "row 3: timestamp 'nan' is not finite"),
    (lambda: laplacian_entropy(np.zeros((4, 4)), "luma"), "expected an RGB image [H, W, 3]"),
    (lambda: laplacian_entropy(np.zeros((4, 4, 3)), "hue"), "channels must be one of ['chroma', 'luma']"),
    (lambda: entropy_keep_mask(tf.data.Dataset.from_tensor_slices(np.zeros((1, 4, 4, 3))), -1.0),
     "entropy threshold must be a finite number >= 0, got -1.0"),
])
def test_data(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def test_pair_dataset_indices(tmp_path):
    photos = generate_geo(num_places=2, photos_per_place=2, image_size=16, timelapse_users=0).photos
    with pytest.raises(ValueError, match=f"right index 99 is outside the {len(photos)} photos"):
        geo.pair_dataset(photos, [0], [99], [1])
    with pytest.raises(ValueError, match="must be \\[P\\] arrays of one length"):
        geo.pair_dataset(photos, [0, 1], [1], [1])


@pytest.mark.parametrize("text,message", [
    ("query,a,b,rating\nq.png,a.png,b.png,maybe\n", "r.csv:2: rating 'maybe' is not one of"),
    ("query,a,b,rating\nq.png,a.png,,3\n", "r.csv:2: missing ['b']"),
    ("query,a,b,rating\n", "has no triplets"),
    ("query,a,b,rating\nq.png,a.png,b.png,5\n", "rating '5' is not one of"),
])
def test_rated_triplet_rows(tmp_path, text, message):
    with pytest.raises(ValueError) as error:
        rated_triplets.load_rated_triplets(_manifest(tmp_path, text, "r.csv"))
    assert message in str(error.value)


def test_middlebury_layout(tmp_path):
    (tmp_path / "scene").mkdir()
    (tmp_path / "scene" / "im0.png").write_bytes(b"x")  # no im1.png: not a scene
    with pytest.raises(ValueError, match="has no scene folder with im0.png and im1.png"):
        middlebury.scan_scenes(str(tmp_path))
    with pytest.raises(ValueError, match="kind must be one of"):
        middlebury.positive_pairs({"s": {"left": "a", "right": "b"}}, "stereo")


@pytest.mark.parametrize("call,message", [
    (lambda: fuzziness_statistics(np.zeros((3, 2)), [0], [1], [2]), "labels must be 0 (negative) or 1"),
    (lambda: fuzziness_statistics(np.zeros((3, 2)), [0, 0], [1, 2], [1, 1]),
     "need both positive and negative pairs, got 2 positives and 0 negatives"),
    (lambda: fuzziness_statistics(np.zeros((3, 2)), [0, 0], [1, 7], [1, 0]), "right index 7 is outside the 3"),
    (lambda: fuzziness_statistics(np.zeros((3, 2)), [0], [1], [1], metric="cosine"), "metric must be one of"),
    (lambda: siamese.build_tower("small_cnn", 0, 32), "embedding_dim must be a positive int, got 0"),
    (lambda: siamese.build_double_tower("fuse", 32), "mode must be one of"),
    (lambda: siamese.build_double_tower("blend", 32, residual="all"), "residual must be one of"),
    (lambda: siamese.build_double_tower("blend", 32, blend_units=(8, 8, 8)), "at most 2 hidden layers"),
])
def test_models_and_analysis(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


@pytest.mark.parametrize("override,message", [
    ("pairs.negatives=nearby", "pairs.negatives must be one of"),
    ("pairs.months=13", "pairs.months must be months 1-12, got '13'"),
    ("pairs.blend_units=8,8,8", "pairs.blend_units must have at most two layers"),
    ("pairs.kfold=1", "pairs.kfold must be 0 (off) or >= 2, got 1"),
    ("pairs.source=manifest", "pairs.source='manifest' needs pairs.manifest"),
    ("pairs.mode=blend", "pairs.mode='blend' needs pairs.architecture='double'"),
    ("pairs.ring_max_m=10", "pairs.ring_max_m must be > ring_min_m=30.0, got 10.0"),
    ("pairs.eval_share=1.0", "pairs.eval_share must be in (0, 1), got 1.0"),
])
def test_pairs_config(override, message):
    with pytest.raises(ValueError) as error:
        config.build_config([], ["task.name=pairs", override])
    assert message in str(error.value)
