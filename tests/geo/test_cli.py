"""`finegrain-analyze fuzziness` and `rated-triplets` as a user runs them (a subprocess, files out)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.data import geo, rated_triplets
from finegrain_tf.data.synthetic_geo import generate_geo


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo_cli")
    data = generate_geo(num_places=16, photos_per_place=4, image_size=32, seed=3)
    names = []
    for i, image in enumerate(data.photos.images):
        name = f"img/{i:04d}.png"
        os.makedirs(root / "img", exist_ok=True)
        (root / name).write_bytes(tf.io.encode_png(image).numpy())
        names.append(name)
    geo.write_manifest(data.photos, str(root / "photos.csv"), names)
    rated = rated_triplets.generate_rated_triplets(data, 30, seed=0)
    as_paths = rated_triplets.RatedTriplets([names[i] for i in rated.query], [names[i] for i in rated.a],
                                            [names[i] for i in rated.b], rated.ratings)
    rated_triplets.write_rated_triplets(as_paths, str(root / "rated.csv"))
    return root, rated


def _analyze(*args):
    return subprocess.run([sys.executable, "-m", "finegrain_tf.analysis.main", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_fuzziness_and_rated_triplets_cli(photo_files):
    root, rated = photo_files
    out = _analyze("fuzziness", f"--photos={root / 'photos.csv'}", "--backbone=small_cnn", "--image_size=32",
                   "--negative_min_m=1000", f"--json={root / 'fuzz.json'}")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((root / "fuzz.json").read_text())
    assert report["positives"] == report["negatives"] > 0
    assert (root / "fuzz.png").read_bytes()[:4] == b"\x89PNG"
    out = _analyze("rated-triplets", f"--triplets={root / 'rated.csv'}", "--backbone=small_cnn",
                   "--image_size=32", f"--json={root / 'rated.json'}")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((root / "rated.json").read_text())
    assert report["decisive"] == int(np.sum(rated.decisive)) and 0 <= report["triplet_accuracy"] <= 1


def test_cli_bad_inputs_are_one_line_errors(photo_files, tmp_path):
    root, _ = photo_files
    out = _analyze("rated-triplets", f"--triplets={tmp_path / 'missing.csv'}", "--backbone=small_cnn",
                   "--image_size=32")
    assert out.returncode != 0 and "does not exist" in out.stderr and "Traceback" not in out.stderr
