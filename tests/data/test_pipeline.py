"""build_datasets: synthetic / folder / tfds-mock sources, class filter, long tail, sharding."""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from finegrain_tf.data import loaders, pipeline, preprocessing, synthetic
from finegrain_tf.train.config import DataConfig, SyntheticConfig

SYN = SyntheticConfig(num_classes=6, num_superclasses=2, train_per_class=8, val_per_class=2,
                      test_per_class=3, image_size=24)


def _cfg(**kw) -> DataConfig:
    base = dict(image_size=16, resize_size=0, batch_size=4, synthetic=dataclasses.replace(SYN))
    base.update(kw)
    return DataConfig(**base)


def _labels(ds):
    return np.concatenate([y.numpy() for _, y in ds])


def _first_epoch_labels(train_ds, info, batch):
    assert info.num_train % batch == 0
    return np.concatenate([y.numpy() for _, y in train_ds.take(info.num_train // batch)])


def test_synthetic_shapes_counts_and_eval():
    train_ds, eval_ds, info = pipeline.build_datasets(_cfg())
    data = synthetic.generate_from_config(SYN)
    assert info.num_classes == 6 and info.class_names == data.class_names
    np.testing.assert_array_equal(info.superclass_of, [0, 0, 0, 1, 1, 1])
    assert info.num_train == 48 and info.num_eval == 18
    np.testing.assert_array_equal(info.train_class_counts, [8] * 6)
    assert info.train_class_counts.dtype == np.int64
    images, labels = next(iter(train_ds))
    assert images.shape == (4, 16, 16, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int64
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    # Train is repeated: one epoch (48 / 4 batches) covers every example once.
    np.testing.assert_array_equal(np.bincount(_first_epoch_labels(train_ds, info, 4)), [8] * 6)
    assert len(list(train_ds.take(30))) == 30
    # Eval: the test split in order, centre crops of the stored images, remainder batch kept.
    batches = list(eval_ds)
    assert [int(b[0].shape[0]) for b in batches] == [4, 4, 4, 4, 2]
    np.testing.assert_array_equal(_labels(eval_ds), data.labels["test"])
    expected = preprocessing.preprocess_eval(data.images["test"][5], 16).numpy()
    np.testing.assert_allclose(batches[1][0][1].numpy(), expected, atol=1e-4)


def test_synthetic_deterministic_under_seed():
    a = [x.numpy() for x, _ in pipeline.build_datasets(_cfg())[0].take(3)]
    b = [x.numpy() for x, _ in pipeline.build_datasets(_cfg())[0].take(3)]
    c = [x.numpy() for x, _ in pipeline.build_datasets(_cfg(seed=1))[0].take(3)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_class_filter_remaps_in_file_order(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("# chosen classes\n4\n\n1\n")
    train_ds, eval_ds, info = pipeline.build_datasets(_cfg(class_filter=str(path)))
    names = synthetic.generate_from_config(SYN).class_names
    assert info.num_classes == 2 and info.class_names == [names[4], names[1]]
    superclass_of = synthetic.generate_from_config(SYN).superclass_of
    np.testing.assert_array_equal(info.superclass_of, superclass_of[[4, 1]])
    assert info.num_train == 16 and info.num_eval == 6
    np.testing.assert_array_equal(info.eval_class_counts, [3, 3])
    # Eval: original test order (class 1 before class 4) with new ids.
    np.testing.assert_array_equal(_labels(eval_ds), [1, 1, 1, 0, 0, 0])
    data = synthetic.generate_from_config(SYN)
    first_eval = next(iter(eval_ds))[0][0].numpy()
    np.testing.assert_allclose(first_eval, preprocessing.preprocess_eval(
        data.images["test"][data.labels["test"] == 1][0], 16).numpy(), atol=1e-4)
    assert set(_first_epoch_labels(train_ds, info, 4)) == {0, 1}
    # Class names work too; bad entries are errors naming them.
    path.write_text(f"{names[2]}\n")
    assert pipeline.build_datasets(_cfg(class_filter=str(path)))[2].class_names == [names[2]]
    path.write_text("2\n9\n")
    with pytest.raises(ValueError, match="class id 9"):
        pipeline.build_datasets(_cfg(class_filter=str(path)))
    with pytest.raises(ValueError, match="nope.txt"):
        pipeline.build_datasets(_cfg(class_filter=str(tmp_path / "nope.txt")))


def test_long_tail_and_cap_counts_over_whole_split():
    from finegrain_tf.data import long_tail

    train_ds, _, info = pipeline.build_datasets(_cfg(imbalance_factor=4.0, batch_size=1))
    expected = long_tail.long_tailed_counts(8, 6, 4.0)
    np.testing.assert_array_equal(info.train_class_counts, expected)
    assert info.num_train == expected.sum() and info.num_eval == 18
    # Counted over the whole split: one epoch of the train stream has exactly these counts.
    np.testing.assert_array_equal(np.bincount(_first_epoch_labels(train_ds, info, 1), minlength=6), expected)
    # Same indices as calling make_long_tailed on the full label array.
    labels = synthetic.generate_from_config(SYN).labels["train"]
    kept = long_tail.make_long_tailed(labels, 4.0, seed=0, num_classes=6)
    np.testing.assert_array_equal(pipeline.build_index(_cfg(imbalance_factor=4.0)).train.positions, kept)

    _, _, capped = pipeline.build_datasets(_cfg(imbalance_factor=4.0, balanced_cap=3))
    np.testing.assert_array_equal(capped.train_class_counts, np.minimum(expected, 3))


def test_input_context_shards_and_batches_per_replica():
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    train_ds, eval_ds, info = pipeline.build_datasets(_cfg(), global_batch_size=8, input_context=ctx)
    assert next(iter(train_ds))[0].shape == (4, 16, 16, 3)
    assert sum(int(y.shape[0]) for _, y in eval_ds) == 9  # half of the 18 eval images
    assert info.num_train == 48  # info describes the whole dataset


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match=r"data.name must be one of \['synthetic', 'folder', 'manifest', .*"
                                         r"'cars196'.*got 'imagenet_v9'"):
        _cfg(name="imagenet_v9")
    with pytest.raises(ValueError, match="'validation'"):
        pipeline.build_datasets(_cfg(eval_split="validation"))
    with pytest.raises(ValueError, match="nowhere"):
        pipeline.build_datasets(_cfg(name="folder", data_dir="/nowhere/at/all"))


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    data = synthetic.generate(num_classes=3, num_superclasses=1, train_per_class=4, val_per_class=1,
                              test_per_class=2, image_size=20, seed=1)
    root = synthetic.write_image_folder(data, str(tmp_path_factory.mktemp("folder")), splits=("train", "test"))
    with open(os.path.join(root, "train", data.class_names[0], "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    return root, data


def test_folder_with_split_subfolders(image_root):
    root, data = image_root
    train_ds, eval_ds, info = pipeline.build_datasets(_cfg(name="folder", data_dir=root))
    assert info.class_names == sorted(data.class_names)
    assert info.num_train == 12 and info.num_eval == 6
    assert info.num_skipped == 1 and info.skipped_files[0].endswith("broken.jpg")
    np.testing.assert_array_equal(info.train_class_counts, [4, 4, 4])
    np.testing.assert_array_equal(np.sort(_labels(eval_ds)), [0, 0, 1, 1, 2, 2])
    x, y = next(iter(train_ds))
    assert x.shape == (4, 16, 16, 3) and y.dtype == tf.int64


def test_folder_without_split_subfolders_uses_root_for_both(image_root):
    root, _ = image_root
    _, eval_ds, info = pipeline.build_datasets(_cfg(name="folder", data_dir=os.path.join(root, "test")))
    assert info.num_train == info.num_eval == 6


def test_tfds_mock_with_class_filter(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("7\n2\n5\n")
    cfg = _cfg(name="cifar10", data_dir="", class_filter=str(path), batch_size=2)
    with tfds.testing.mock_data(num_examples=40):
        original = loaders.read_tfds_labels("cifar10", "train", progress=False)
        train_ds, eval_ds, info = pipeline.build_datasets(cfg)
        eval_labels = _labels(eval_ds)
        names = loaders.tfds_class_names(loaders.tfds_builder("cifar10"))
        expected = np.array([np.sum(original == c) for c in (7, 2, 5)])
        assert info.class_names == [names[7], names[2], names[5]]
        np.testing.assert_array_equal(info.train_class_counts, expected)
        # Eval: the kept examples in file order, remapped to 0..2 in file-list order.
        remap = {7: 0, 2: 1, 5: 2}
        test_original = loaders.read_tfds_labels("cifar10", "test", progress=False)
        np.testing.assert_array_equal(eval_labels, [remap[c] for c in test_original if c in remap])
        if info.num_train % 2 == 0:
            epoch = _first_epoch_labels(train_ds, info, 2)
            np.testing.assert_array_equal(np.bincount(epoch, minlength=3), expected)
        x, _ = next(iter(train_ds))
        assert x.shape == (2, 16, 16, 3)


@pytest.mark.parametrize("name", ["caltech_birds2011", "oxford_flowers102"])
def test_tfds_mock_long_tailed(name):
    with tfds.testing.mock_data(num_examples=6):
        train_ds, eval_ds, info = pipeline.build_datasets(_cfg(name=name, balanced_cap=1))
        assert info.num_classes == len(info.class_names) == {"caltech_birds2011": 200,
                                                             "oxford_flowers102": 102}[name]
        assert info.train_class_counts.max() == 1
        assert info.num_train == int(info.train_class_counts.sum()) and info.num_eval == 6
        assert sum(int(y.shape[0]) for _, y in eval_ds) == 6
        x, y = next(iter(train_ds))
        assert x.shape == (4, 16, 16, 3)
        assert all(info.train_class_counts[int(c)] == 1 for c in y.numpy())
