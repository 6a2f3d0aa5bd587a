"""Issue 11's battery, data area: every bad input gives a clear error naming the value, or a counted skip."""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.data import decode, loaders, long_tail, manifest, pipeline, preprocessing
from finegrain_tf.train.config import AugmentConfig, DataConfig

from .image_bytes import png_bytes


def _folder(root, counts=(3, 3)):
    for c, n in enumerate(counts):
        os.makedirs(root / f"c{c}", exist_ok=True)
        for i in range(n):
            (root / f"c{c}" / f"{i}.png").write_bytes(png_bytes(5, 4))
    return str(root)


def _write(path, text):
    path.write_text(text)
    return str(path)


ERRORS = [
    # (id, callable(tmp_path), exception type, message regex)
    ("png_1x120000", lambda t: decode.decode_image(png_bytes(120000, 1)), tf.errors.InvalidArgumentError,
     r"image of 120000x1 pixels \(width x height\) exceeds the decode limits"),
    ("png_header_cut", lambda t: decode.decode_image(png_bytes(4, 4)[:20]), tf.errors.InvalidArgumentError,
     r"not a decodable JPEG/PNG/GIF/BMP image"),
    ("text_as_image", lambda t: decode.decode_image(b"hello"), tf.errors.InvalidArgumentError,
     r"not a decodable JPEG/PNG/GIF/BMP image"),
    ("limits_pixels_0", lambda t: decode.DecodeLimits(max_pixels=0), ValueError,
     r"max_pixels must be a positive int, got 0"),
    ("limits_aspect_nan", lambda t: decode.DecodeLimits(max_aspect_ratio=float("nan")), ValueError,
     r"max_aspect_ratio must be a finite number, got nan"),
    ("folder_missing", lambda t: loaders.load_image_folder(str(t / "nowhere")), ValueError,
     r"image folder '.*nowhere' does not exist"),
    ("folder_no_classes", lambda t: loaders.load_image_folder(str(t)), ValueError, r"has no class subfolders"),
    ("manifest_row_without_label", lambda t: manifest.read_manifest(_write(t / "m.csv", "path,label\na.png,\n")),
     ValueError, r"m.csv:2: a row needs a path .* and a label"),
    ("manifest_bad_json", lambda t: manifest.read_manifest(_write(t / "m.jsonl", "{oops\n")), ValueError,
     r"m.jsonl:1: not valid JSON"),
    ("manifest_unknown_class", lambda t: manifest.encode_labels(["owl"], ["crow"], "m.csv"), ValueError,
     r"m.csv: label 'owl' is not one of the 1 classes"),
    ("config_unknown_source", lambda t: DataConfig(name="imagenet"), ValueError,
     r"data.name must be one of \['synthetic', 'folder', 'manifest'.*got 'imagenet'"),
    ("config_inherited_subsampling", lambda t: DataConfig(name="folder", data_dir="x", imbalance_factor=10.0),
     ValueError, r"data.imbalance_factor=10.0 would subsample your own images"),
    ("config_eval_crops", lambda t: DataConfig(eval_crops=6), ValueError,
     r"data.eval_crops must be one of \[1, 12\], got 6"),
    ("config_zoom", lambda t: AugmentConfig(zoom=1.5), ValueError, r"data.augment.zoom must be in \[0\.0, 1\.0\), got 1\.5"),
    ("config_aspect_limit", lambda t: DataConfig(max_aspect_ratio=0.5), ValueError,
     r"data.max_aspect_ratio must be >= 1, got 0.5"),
    ("config_max_pixels", lambda t: DataConfig(max_image_pixels=0), ValueError, r"data.max_image_pixels must be > 0, got 0"),
    ("resize_below_crop", lambda t: preprocessing.preprocess_eval(np.zeros((8, 8, 3), np.uint8), 32, 16), ValueError,
     r"resize_size=16 is smaller than image_size=32"),
    ("image_size_bool", lambda t: preprocessing.preprocess_eval(np.zeros((8, 8, 3), np.uint8), True), ValueError,
     r"image_size must be a positive int, got True"),
    ("imbalance_nan", lambda t: long_tail.make_long_tailed([0, 1], float("nan")), ValueError,
     r"imbalance_factor must be a finite number, got nan"),
    ("cap_zero", lambda t: long_tail.balanced_subset([0, 1], 0), ValueError, r"cap must be a positive int, got 0"),
    ("negative_labels", lambda t: long_tail.balanced_subset([0, -3], 2), ValueError, r"labels contains -3"),
    ("class_filter_unknown", lambda t: pipeline.read_class_filter(_write(t / "keep.txt", "owl\n"), ["crow"]),
     ValueError, r"keep.txt:1: 'owl' is neither a class id nor a class name"),
]


@pytest.mark.parametrize("case,exc,message", [(c[1], c[2], c[3]) for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_clear_error(tmp_path, case, exc, message):
    with pytest.raises(exc, match=message):
        case(tmp_path)


def test_skip_corrupt_and_oversized_files_counted(tmp_path, caplog):
    root = _folder(tmp_path / "d")
    (tmp_path / "d" / "c0" / "bad.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "d" / "c1" / "wide.png").write_bytes(png_bytes(120000, 1))
    with caplog.at_level(logging.WARNING):
        info = loaders.scan_image_folder(root)
    assert info.num_skipped == 2 and [os.path.basename(p) for p in info.too_large_files] == ["wide.png"]
    np.testing.assert_array_equal(info.class_counts(), [3, 3])
    assert "skipped 2 images (1 corrupt or unreadable, 1 over the decode limits" in caplog.text


def test_skip_symlink_loop_counted_once(tmp_path, caplog):
    root = _folder(tmp_path / "d", (4, 4))
    os.symlink(".", os.path.join(root, "c0", "loop"))
    with caplog.at_level(logging.WARNING):
        info = loaders.scan_image_folder(root)
    np.testing.assert_array_equal(info.class_counts(), [4, 4])
    assert "lead back to a folder already visited" in caplog.text and "loop" in caplog.text


def test_skip_file_removed_after_indexing_is_counted(tmp_path):
    root = _folder(tmp_path / "d", (2, 2))
    _, eval_ds, info = pipeline.build_datasets(DataConfig(name="folder", data_dir=root, image_size=4, batch_size=2))
    info.skip_counter.reset()
    os.remove(os.path.join(root, "c1", "1.png"))
    assert sum(int(y.shape[0]) for _, y in eval_ds) == 3
    assert info.skip_counter.counts() == {"unreadable": 1, "too_large": 0, "total": 1}
