"""tfds loaders (offline, tfds.testing.mock_data) and image-folder loading with corrupt files."""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from finegrain_tf.data import decode, loaders

from .image_bytes import png_bytes

NUM_CLASSES = {"caltech_birds2011": 200, "cars196": 196, "oxford_flowers102": 102, "stanford_dogs": 120,
               "food101": 101, "i_naturalist2017": 5089, "cifar10": 10, "cifar100": 100}


def test_supported_names_cover_the_issue():
    assert set(loaders.SUPPORTED_TFDS) == set(NUM_CLASSES)


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_mock_tfds(name):
    with tfds.testing.mock_data(num_examples=4):
        ds, class_names = loaders.load_tfds(name, "train")
        assert ds.element_spec[0] == tf.TensorSpec([None, None, 3], tf.uint8)
        assert ds.element_spec[1] == tf.TensorSpec([], tf.int64)
        items = [(x.numpy(), int(y)) for x, y in ds]
        labels = loaders.read_tfds_labels(name, "train", progress=False)
    assert len(class_names) == NUM_CLASSES[name] and len(set(class_names)) == NUM_CLASSES[name]
    assert len(items) == 4
    for image, label in items:
        assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8
        assert 0 <= label < NUM_CLASSES[name]
    # The label-only pass sees the same labels in the same order as the image pass.
    np.testing.assert_array_equal(labels, [y for _, y in items])
    assert labels.dtype == np.int64


def test_unknown_tfds_name():
    with pytest.raises(ValueError, match=r"'imagenet_v9'.*caltech_birds2011.*cifar100"):
        loaders.load_tfds("imagenet_v9", "train")


def _write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def folder(tmp_path):
    """Two classes with good images of several formats, a truncated JPEG and a text file named .jpg."""
    rng = np.random.default_rng(0)
    root = str(tmp_path / "images")
    image = lambda h, w, c=3: rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
    good_jpeg = tf.io.encode_jpeg(image(20, 30)).numpy()
    _write(f"{root}/b_cat/1.jpg", good_jpeg)
    _write(f"{root}/b_cat/2.PNG", tf.io.encode_png(image(9, 5, 1)).numpy())  # grayscale
    _write(f"{root}/b_cat/nested/3.png", tf.io.encode_png(image(8, 8, 4)).numpy())  # RGBA, subfolder
    _write(f"{root}/a_dog/4.jpeg", tf.io.encode_jpeg(image(16, 16)).numpy())
    _write(f"{root}/a_dog/truncated.jpg", good_jpeg[: len(good_jpeg) // 3])
    _write(f"{root}/a_dog/notes.jpg", b"this is not an image\n")
    _write(f"{root}/a_dog/readme.txt", b"ignored: not an image extension\n")
    os.makedirs(f"{root}/c_empty")
    return root


def test_image_folder_skips_and_counts_corrupt_files(folder, caplog):
    with caplog.at_level(logging.WARNING):
        ds, info = loaders.load_image_folder(folder, with_info=True)
    assert info.class_names == ["a_dog", "b_cat", "c_empty"]
    assert info.num_skipped == 2
    assert sorted(os.path.basename(f) for f in info.skipped_files) == ["notes.jpg", "truncated.jpg"]
    assert "skipped 2 images (2 corrupt or unreadable, 0 over the decode limits" in caplog.text
    got = [(x.numpy(), int(y)) for x, y in ds]  # iterating never raises
    assert sorted(y for _, y in got) == [0, 1, 1, 1]
    assert sorted(x.shape for x, _ in got) == [(8, 8, 3), (9, 5, 3), (16, 16, 3), (20, 30, 3)]
    np.testing.assert_array_equal(info.class_counts(), [1, 3, 0])
    # The plain form returns the class names.
    _, names = loaders.load_image_folder(folder)
    assert names == ["a_dog", "b_cat", "c_empty"]


def test_image_folder_safety_net_without_verification(folder):
    ds, info = loaders.load_image_folder(folder, verify=False, with_info=True)
    assert info.num_skipped == 0 and info.num_files == 6
    assert len(list(ds)) == 4  # ignore_errors drops the two corrupt files instead of crashing


def test_image_folder_errors(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        loaders.load_image_folder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        loaders.load_image_folder(str(empty))
    (empty / "cls").mkdir()
    (empty / "cls" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        loaders.load_image_folder(str(empty))
    (empty / "cls" / "b.jpg").write_text("x")
    with pytest.raises(ValueError, match="all 1 images are corrupt, unreadable or over the decode limits"):
        loaders.load_image_folder(str(empty))


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"'cifar10' is not prepared.*tfds build"):
        loaders.load_tfds("cifar10", "train", data_dir=str(tmp_path))


def test_symlink_loop_counts_each_real_file_once_and_names_the_loop(tmp_path, caplog):
    """Issue 11 repro: `ln -s . data/a/loop` made class a count 41 times ([164, 4] instead of [4, 4])."""
    root = tmp_path / "data"
    for cls in ("a", "b"):
        for i in range(4):
            _write(str(root / cls / f"{i}.png"), png_bytes(4, 4))
    os.symlink(".", root / "a" / "loop")
    os.symlink(str(root / "a"), root / "a" / "back_to_a")  # an absolute link to the same folder
    os.symlink(str(root / "a" / "0.png"), root / "a" / "same_file.png")  # a second name of one file
    with caplog.at_level(logging.WARNING):
        info = loaders.scan_image_folder(str(root))
    np.testing.assert_array_equal(info.class_counts(), [4, 4])
    assert sorted(os.path.basename(p) for p in info.link_loops) == ["back_to_a", "loop"]
    assert "2 symbolic link(s) lead back to a folder already visited" in caplog.text
    assert str(root / "a" / "back_to_a") in caplog.text


def test_a_link_to_a_folder_elsewhere_is_followed(tmp_path):
    outside = tmp_path / "outside"
    for i in range(3):
        _write(str(outside / f"{i}.png"), png_bytes(4, 4))
    root = tmp_path / "data"
    _write(str(root / "a" / "x.png"), png_bytes(4, 4))
    os.symlink(str(outside), root / "a" / "more")
    info = loaders.scan_image_folder(str(root))
    np.testing.assert_array_equal(info.class_counts(), [4])
    assert info.link_loops == []


def test_oversized_images_are_skipped_and_counted_without_decoding(tmp_path, caplog):
    root = tmp_path / "data"
    _write(str(root / "a" / "ok.png"), png_bytes(6, 5))
    _write(str(root / "a" / "wide.png"), png_bytes(120000, 1))  # the 429-byte PNG of issue 11
    _write(str(root / "b" / "big.png"), png_bytes(6000, 6000, pixels=False))  # header only
    _write(str(root / "b" / "ok.png"), png_bytes(5, 5))
    limits = decode.DecodeLimits(max_pixels=1_000_000)
    with caplog.at_level(logging.WARNING):
        ds, info = loaders.load_image_folder(str(root), with_info=True, limits=limits)
    assert sorted(os.path.basename(p) for p in info.too_large_files) == ["big.png", "wide.png"]
    assert info.num_skipped == 2
    assert "skipped 2 images (0 corrupt or unreadable, 2 over the decode limits: at most 1000000 pixels" \
        in caplog.text
    np.testing.assert_array_equal(info.class_counts(), [1, 1])
    assert sorted(tuple(x.shape) for x, _ in ds) == [(5, 5, 3), (5, 6, 3)]
