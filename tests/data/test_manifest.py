"""data.name=manifest: CSV/JSONL (path, label[, split]) rows read by the training pipeline."""

import json
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from finegrain_tf.data import manifest, pipeline
from finegrain_tf.train.config import DataConfig

from .image_bytes import png_bytes


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(9):
        path = folder / f"{i}.png"
        path.write_bytes(png_bytes(5 + i, 6))
        paths.append(str(path))
    return tmp_path, paths


def _csv(path, rows, header=("path", "label", "split")):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(row) + "\n")
    return str(path)


def _cfg(path, **kw):
    return DataConfig(**{"name": "manifest", "data_dir": path, "image_size": 8, "batch_size": 2, **kw})


def test_csv_with_split_column_relative_paths_and_class_names(images):
    root, paths = images
    rows = [(f"imgs/{i}.png", ["owl", "crow", "wren"][i % 3], "train" if i < 6 else "test") for i in range(9)]
    path = _csv(root / "set.csv", rows)
    train_ds, eval_ds, info = pipeline.build_datasets(_cfg(path))
    assert info.name == "manifest" and info.class_names == ["crow", "owl", "wren"]
    np.testing.assert_array_equal(info.train_class_counts, [2, 2, 2])
    np.testing.assert_array_equal(info.eval_class_counts, [1, 1, 1])
    eval_labels = np.concatenate([y.numpy() for _, y in eval_ds])
    np.testing.assert_array_equal(eval_labels, [1, 0, 2])  # rows 6, 7, 8 in file order: owl, crow, wren
    x, _ = next(iter(train_ds))
    assert x.shape == (2, 8, 8, 3)


def test_jsonl_with_integer_labels_and_a_separate_eval_manifest(images):
    root, paths = images
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps({"image_path": p, "class": i % 2 * 2}) + "\n" for i, p in enumerate(paths[:6])))
    test = root / "test.jsonl"
    test.write_text("".join(json.dumps({"path": p, "label": "1"}) + "\n" for p in paths[6:]))
    _, eval_ds, info = pipeline.build_datasets(_cfg(str(train), eval_manifest=str(test)))
    assert info.class_names == ["0", "1", "2"]  # integer labels keep their ids
    np.testing.assert_array_equal(info.train_class_counts, [3, 0, 3])
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in eval_ds]), [1, 1, 1])


def test_missing_corrupt_oversized_and_duplicate_rows_are_skipped_and_counted(images, caplog):
    root, paths = images
    (root / "bad.png").write_bytes(b"not a png")
    (root / "wide.png").write_bytes(png_bytes(120000, 1))
    rows = [(p, "a" if i < 4 else "b", "train") for i, p in enumerate(paths)]
    rows += [(str(root / "gone.png"), "a", "train"), (str(root / "bad.png"), "a", "train"),
             (str(root / "wide.png"), "b", "train"), (paths[0], "a", "train"), (paths[0], "a", "test")]
    path = _csv(root / "set.csv", rows)
    with caplog.at_level(logging.WARNING):
        _, _, info = pipeline.build_datasets(_cfg(path))
    np.testing.assert_array_equal(info.train_class_counts, [4, 5])  # paths[0] listed twice counts once
    assert sorted(os.path.basename(f) for f in info.skipped_files) == ["bad.png", "gone.png", "wide.png"]
    assert [os.path.basename(f) for f in info.too_large_files] == ["wide.png"]
    assert "1 rows repeat an image already listed for the same class" in caplog.text
    assert "skipped 3 images (2 missing, corrupt or unreadable, 1 over the decode limits" in caplog.text


def test_no_split_column_trains_and_evaluates_on_all_rows(images, caplog):
    root, paths = images
    path = _csv(root / "set.csv", [(p, "x" if i % 2 else "y") for i, p in enumerate(paths)], header=("file", "label"))
    with caplog.at_level(logging.WARNING):
        _, _, info = pipeline.build_datasets(_cfg(path))
    assert info.num_train == info.num_eval == 9
    assert "no split column" in caplog.text


@pytest.mark.parametrize("content,message", [
    ("path,label,split\na.png,x,train\n", r"has no row with split 'test' \(splits: \['train'\]\)"),
    ("path,label\n", r"has no rows"),
    ("path,label\na.png,\n", r"set.csv:2: a row needs a path .* and a label"),
    ("path,label,split\na.png,x,train\nb.png,y,\n", r"1 of 2 rows have no split"),
    ("image,kind\na.png,x\n", r"set.csv:2: a row needs a path"),
])
def test_bad_manifests_name_the_problem(tmp_path, content, message):
    path = tmp_path / "set.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        pipeline.build_datasets(_cfg(str(path)))


def test_bad_jsonl_and_missing_files(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"path": "a.png", "label": "x"}\n{broken\n')
    with pytest.raises(ValueError, match=r"set.jsonl:2: not valid JSON"):
        manifest.read_manifest(str(path))
    path.write_text('["a.png", "x"]\n')
    with pytest.raises(ValueError, match=r"set.jsonl:1: expected a JSON object"):
        manifest.read_manifest(str(path))
    with pytest.raises(ValueError, match=r"file not found: '.*nowhere.csv'"):
        pipeline.build_datasets(_cfg(str(tmp_path / "nowhere.csv")))
    with pytest.raises(ValueError, match=r"data.name='manifest' needs data.data_dir"):
        pipeline.build_datasets(_cfg(""))


def test_eval_classes_must_be_known(images):
    root, paths = images
    path = _csv(root / "set.csv", [(paths[0], "a", "train"), (paths[1], "b", "test")])
    with pytest.raises(ValueError, match=r"\(eval\): label 'b' is not one of the 1 classes"):
        pipeline.build_datasets(_cfg(path))
