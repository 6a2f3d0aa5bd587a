"""The embedded synthetic fine-grained dataset: determinism, label hierarchy, splits, image folders."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.data import loaders, synthetic
from finegrain_tf.train.config import SyntheticConfig

SMALL = dict(num_classes=6, num_superclasses=2, train_per_class=3, val_per_class=2, test_per_class=2,
             image_size=32)


@pytest.fixture(scope="module")
def data():
    return synthetic.generate(**SMALL, seed=0)


def test_shapes_and_dtypes(data):
    for split, per_class in (("train", 3), ("val", 2), ("test", 2)):
        assert data.images[split].shape == (6 * per_class, 32, 32, 3)
        assert data.images[split].dtype == np.uint8
        assert data.labels[split].dtype == np.int64
        np.testing.assert_array_equal(data.labels[split], np.repeat(np.arange(6), per_class))
    assert len(data.class_names) == 6 and data.superclass_of.dtype == np.int64
    # Images are not blank: real content in every channel.
    assert data.images["train"].std() > 20


def test_same_seed_same_bytes_and_splits_differ(data):
    again = synthetic.generate(**SMALL, seed=0)
    for split in synthetic.SPLITS:
        assert again.images[split].tobytes() == data.images[split].tobytes()
    other = synthetic.generate(**SMALL, seed=1)
    assert other.images["train"].tobytes() != data.images["train"].tobytes()
    flat = {s: data.images[s].reshape(len(data.images[s]), -1) for s in synthetic.SPLITS}
    # No image is shared between splits (or repeated inside one).
    allimgs = np.concatenate(list(flat.values()))
    assert len({row.tobytes() for row in allimgs}) == len(allimgs)


def test_long_tailed_counts_are_prefixes_of_the_balanced_split(data):
    counts = [3, 2, 2, 1, 1, 0]
    lt = synthetic.generate(**SMALL, seed=0, class_counts=counts)
    np.testing.assert_array_equal(lt.class_counts("train"), counts)
    for c, n in enumerate(counts):
        np.testing.assert_array_equal(lt.images["train"][lt.labels["train"] == c],
                                      data.images["train"][data.labels["train"] == c][:n])
    # val/test stay balanced and identical.
    assert lt.images["test"].tobytes() == data.images["test"].tobytes()


def test_label_hierarchy_default_structure():
    attrs, superclass_of, super_names, names = synthetic.class_structure(20, 4)
    np.testing.assert_array_equal(superclass_of, np.repeat(np.arange(4), 5))
    assert super_names == ["star", "poly", "flower", "ring"]
    assert names[0] == "star5_stripes2_red" and len(set(names)) == 20
    for i in range(20):
        for j in range(i + 1, 20):
            a, b = attrs[i], attrs[j]
            key = lambda t: (t["detail"], t["stripes"], t["colour"])
            if superclass_of[i] == superclass_of[j]:
                # Same coarse cue, different subtle cues.
                assert a["family"] == b["family"] and key(a) != key(b)
            else:
                assert a["family"] != b["family"]


@pytest.mark.parametrize("num_classes,num_superclasses", [(200, 4), (13, 8), (7, 7), (1, 1)])
def test_label_hierarchy_other_sizes(num_classes, num_superclasses):
    attrs, superclass_of, super_names, names = synthetic.class_structure(num_classes, num_superclasses)
    assert len(names) == len(set(names)) == num_classes
    assert len(set(super_names)) == num_superclasses
    sizes = np.bincount(superclass_of, minlength=num_superclasses)
    assert sizes.max() - sizes.min() <= 1 and sizes.min() >= 1
    # Within a super-class, every class has a distinct combination of subtle attributes.
    combos = {(a["superclass"], a["detail"], a["stripes"], a["colour"]) for a in attrs}
    assert len(combos) == num_classes


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_superclasses"):
        synthetic.generate(num_classes=3, num_superclasses=4)
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.generate(num_classes=0)
    with pytest.raises(ValueError, match="class_counts has 2 entries"):
        synthetic.generate(**SMALL, class_counts=[1, 2])
    with pytest.raises(ValueError, match="-1"):
        synthetic.generate(**SMALL, class_counts=[1, 2, 3, 4, 5, -1])
    with pytest.raises(ValueError, match="image_size"):
        synthetic.generate(num_classes=2, num_superclasses=1, image_size=4)
    with pytest.raises(ValueError, match="'valid'"):
        synthetic.make_dataset(SyntheticConfig(**SMALL), "valid")


def test_make_dataset_is_cached_and_typed():
    cfg = SyntheticConfig(**SMALL, seed=3)
    ds = synthetic.make_dataset(cfg, "val")
    assert ds.element_spec[0] == tf.TensorSpec([32, 32, 3], tf.uint8)
    assert ds.element_spec[1] == tf.TensorSpec([], tf.int64)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    expected = synthetic.generate(**SMALL, seed=3)
    np.testing.assert_array_equal(np.stack(images), expected.images["val"])
    np.testing.assert_array_equal(labels, expected.labels["val"])
    # The arrays are generated once per process and shared read-only.
    assert synthetic.generate_from_config(cfg) is synthetic.generate_from_config(SyntheticConfig(**SMALL, seed=3))
    assert not synthetic.generate_from_config(cfg).images["val"].flags.writeable


def test_image_folder_round_trip_png_exact(data, tmp_path):
    root = synthetic.write_image_folder(data, str(tmp_path / "png"), splits=("val",), format="png")
    ds, class_names = loaders.load_image_folder(os.path.join(root, "val"))
    assert class_names == sorted(data.class_names)
    got = [(x.numpy(), int(y)) for x, y in ds]
    assert len(got) == len(data.labels["val"])
    # Labels follow sorted class names; pixels are byte-identical through PNG.
    by_name = {name: i for i, name in enumerate(class_names)}
    expected = sorted((by_name[data.class_names[int(y)]], x.tobytes())
                      for x, y in zip(data.images["val"], data.labels["val"]))
    assert sorted((y, x.tobytes()) for x, y in got) == expected


def test_image_folder_round_trip_jpeg(data, tmp_path):
    root = synthetic.write_image_folder(data, str(tmp_path / "jpg"))
    for split in synthetic.SPLITS:
        files = sorted(os.listdir(os.path.join(root, split, data.class_names[0])))
        assert files and all(f.endswith(".jpg") for f in files)
    ds, info = loaders.load_image_folder(os.path.join(root, "train"), with_info=True)
    assert info.num_skipped == 0 and info.num_files == len(data.labels["train"])
    names = [info.class_names[int(y)] for _, y in ds]
    assert sorted(names) == sorted(data.class_names[int(y)] for y in data.labels["train"])
    first = next(iter(ds))[0].numpy()
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8


def test_write_image_folder_bad_arguments(data, tmp_path):
    with pytest.raises(ValueError, match="'bmp'"):
        synthetic.write_image_folder(data, str(tmp_path), format="bmp")
    with pytest.raises(ValueError, match="'holdout'"):
        synthetic.write_image_folder(data, str(tmp_path), splits=("holdout",))
