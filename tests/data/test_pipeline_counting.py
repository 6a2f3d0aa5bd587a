"""Honest counts in the input pipeline (issue 11 item 5, issue 14 item 1): files that fail while
training reads them, oversized images, symlink loops, explicit subsampling of a user's data."""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.data import pipeline
from finegrain_tf.train.config import AugmentConfig, DataConfig

from .image_bytes import png_bytes


def _folder(root, counts, size=(6, 5)):
    for c, n in enumerate(counts):
        os.makedirs(root / f"class_{c}", exist_ok=True)
        for i in range(n):
            (root / f"class_{c}" / f"{i:03d}.png").write_bytes(png_bytes(*size))
    return str(root)


def _cfg(root, **kw):
    return DataConfig(**{"name": "folder", "data_dir": root, "image_size": 8, "batch_size": 2, **kw})


def test_files_removed_during_training_are_skipped_counted_and_warned_once(tmp_path, caplog):
    root = _folder(tmp_path / "data", [4, 4])
    train_ds, eval_ds, info = pipeline.build_datasets(_cfg(root))
    counter = info.skip_counter
    counter.reset()
    assert info.num_train == 8 and counter.counts() == {"unreadable": 0, "too_large": 0, "total": 0}
    os.remove(os.path.join(root, "class_0", "001.png"))  # gone after indexing
    os.remove(os.path.join(root, "class_1", "003.png"))
    seen = sum(int(y.shape[0]) for _, y in eval_ds)
    assert seen == 6
    assert counter.counts()["unreadable"] == 2  # one of them is the last file: the sentinel counts it
    for _ in train_ds.take(6):  # 12 training examples: more than one epoch of 8 - 2 readable files
        pass
    assert counter.counts()["unreadable"] >= 2 + 2
    with caplog.at_level(logging.WARNING):
        first = counter.warn_if_new("epoch 1")
        counter.warn_if_new("epoch 1")  # nothing new: no second warning
    assert caplog.text.count("images while reading the data so far") == 1
    assert f"epoch 1: skipped {first['total']} images" in caplog.text


def test_oversized_images_in_a_folder_are_listed_and_never_decoded(tmp_path):
    root = tmp_path / "data"
    _folder(root, [3, 3])
    (root / "class_1" / "wide.png").write_bytes(png_bytes(120000, 1))
    _, _, info = pipeline.build_datasets(_cfg(str(root)))
    assert [os.path.basename(f) for f in info.too_large_files] == ["wide.png"]
    np.testing.assert_array_equal(info.train_class_counts, [3, 3])
    _, _, loose = pipeline.build_datasets(_cfg(str(root), max_image_pixels=200_000, max_aspect_ratio=120_000.0))
    assert loose.num_train == 7 and loose.too_large_files == []
    with pytest.raises(ValueError, match=r"all 7 images are corrupt, unreadable or over the decode limits"):
        pipeline.build_datasets(_cfg(str(root), max_image_pixels=29))


def test_symlink_loop_does_not_inflate_class_counts(tmp_path):
    root = _folder(tmp_path / "data", [4, 4])
    os.symlink(".", os.path.join(root, "class_0", "loop"))
    _, _, info = pipeline.build_datasets(_cfg(root))
    np.testing.assert_array_equal(info.train_class_counts, [4, 4])  # not [164, 4]
    assert [os.path.basename(p) for p in info.link_loops] == ["loop"]


def test_subsampling_own_data_is_never_inherited(tmp_path):
    root = _folder(tmp_path / "data", [6, 5])
    with pytest.raises(ValueError, match=r"data.imbalance_factor=10.0 would subsample your own images "
                                         r"\(data.name='folder'\).*data.subsample_own_data=true"):
        _cfg(root, imbalance_factor=10.0)
    _, _, info = pipeline.build_datasets(_cfg(root))
    np.testing.assert_array_equal(info.train_class_counts, [6, 5])
    assert not info.dropped_per_class.any()


def test_explicit_subsampling_of_a_long_tailed_folder_logs_drops_per_class(tmp_path, caplog):
    # already long-tailed, with an empty class: the old code crashed here
    root = _folder(tmp_path / "data", [12, 2, 7, 0, 1])
    with caplog.at_level(logging.WARNING):
        _, _, info = pipeline.build_datasets(_cfg(root, imbalance_factor=4.0, subsample_own_data=True))
    # classes by size: 12 (head), 7, 2, 1, 0; targets floor(12 * 4^(-i/4)) = 12, 8, 6, 4, 3, kept
    # up to what each class has
    np.testing.assert_array_equal(info.train_class_counts, [12, 2, 7, 0, 1])
    _, _, info = pipeline.build_datasets(_cfg(root, imbalance_factor=12.0, subsample_own_data=True))
    # targets 12, 6, 3, 1, 1 for classes 0, 2, 1, 4, 3
    np.testing.assert_array_equal(info.train_class_counts, [12, 2, 6, 0, 1])
    np.testing.assert_array_equal(info.dropped_per_class, [0, 0, 1, 0, 0])
    assert "dropped 1 of 22 training images; dropped per class: class_2: -1" in caplog.text


def test_twelve_crop_evaluation_batches_and_augment_config(tmp_path):
    root = _folder(tmp_path / "data", [2, 2], size=(12, 10))
    augment = AugmentConfig(crop="random_resized", horizontal_flip=False, vertical_flip=True, rotation=10.0)
    train_ds, eval_ds, info = pipeline.build_datasets(_cfg(root, eval_crops=12, augment=augment))
    x, y = next(iter(eval_ds))
    assert x.shape == (2, 12, 8, 8, 3) and info.eval_crops == 12
    assert next(iter(train_ds))[0].shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match=r"data.eval_crops must be one of \[1, 12\], got 6"):
        _cfg(root, eval_crops=6)
    with pytest.raises(ValueError, match=r"data.augment.rotation must be in \[0\.0, 180\.0\], got 200\.0"):
        AugmentConfig(rotation=200.0)


def test_counting_pipeline_iterator_checkpoints_and_resumes_exactly(tmp_path):
    root = _folder(tmp_path / "data", [3, 3])
    train_ds, _, _ = pipeline.build_datasets(_cfg(root, image_size=4))
    it = iter(train_ds)
    for _ in range(2):
        next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.save(str(tmp_path / "ckpt" / "c"))
    after = [next(it)[0].numpy() for _ in range(3)]
    ckpt.restore(path)
    again = [next(it)[0].numpy() for _ in range(3)]
    for a, b in zip(after, again):
        np.testing.assert_array_equal(a, b)
