"""Shared fixtures for the serving tests: a tiny training-run model dir and one export of it."""

import os

import pytest

from serving_utils import CLASS_NAMES, build_tiny_model, random_images, write_model_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    return write_model_dir(path, build_tiny_model())


@pytest.fixture(scope="session")
def gallery_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    images = random_images(6, seed=7, fmt="mixed")
    for i, data in enumerate(images):
        d = root / CLASS_NAMES[i % 3]
        d.mkdir(exist_ok=True)
        (d / f"img{i}.{'png' if i % 2 else 'jpg'}").write_bytes(data)
    (root / CLASS_NAMES[0] / "broken.jpg").write_bytes(b"not an image")
    return str(root)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, model_dir, gallery_folder):
    """(export_dir, base_path, keras model) of the tiny model with a 6-image gallery."""
    import keras

    from finegrain_tf.serving import export

    base = str(tmp_path_factory.mktemp("models"))
    export_dir = export.export_from_model_dir(model_dir, base, gallery=gallery_folder)
    model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
    return export_dir, base, model
