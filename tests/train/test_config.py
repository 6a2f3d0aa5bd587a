"""Strict config loading: unknown keys, wrong types and bad overrides are errors naming the value."""

import glob
import os

import pytest

from finegrain_tf.train import config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_every_shipped_config_loads(path):
    cfg = config.build_config([path])
    assert isinstance(cfg, config.ExperimentConfig)


def test_files_apply_in_order_then_overrides(tmp_path):
    a = _write(tmp_path, "train:\n  steps: 10\noptimizer:\n  learning_rate: 0.5\n", "a.yaml")
    b = _write(tmp_path, "train:\n  steps: 20\n", "b.yaml")
    cfg = config.build_config([a, b], ["optimizer.learning_rate=0.25", "model.flip_test=true"])
    assert cfg.train.steps == 20
    assert cfg.optimizer.learning_rate == 0.25
    assert cfg.model.flip_test is True


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "train:\n  stepz: 10\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*train\.stepz"):
        config.build_config([path])


def test_wrong_type_names_key_and_value(tmp_path):
    path = _write(tmp_path, "train:\n  steps: ten\n")
    with pytest.raises(ValueError, match=r"train\.steps.*'ten'"):
        config.build_config([path])


def test_bool_is_not_an_int(tmp_path):
    path = _write(tmp_path, "train:\n  steps: true\n")
    with pytest.raises(ValueError, match="train.steps"):
        config.build_config([path])


def test_int_widens_to_float(tmp_path):
    cfg = config.build_config([_write(tmp_path, "optimizer:\n  learning_rate: 1\n")])
    assert cfg.optimizer.learning_rate == 1.0 and isinstance(cfg.optimizer.learning_rate, float)


def test_section_must_be_mapping(tmp_path):
    with pytest.raises(ValueError, match="'data' must be a mapping"):
        config.build_config([_write(tmp_path, "data: 3\n")])


def test_missing_file():
    with pytest.raises(ValueError, match="no_such.yaml"):
        config.build_config(["no_such.yaml"])


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "train.nope"),
    ("nope.steps=1", "'nope'"),
    ("train.steps=1.5", "'1.5'"),
    ("model.flip_test=maybe", "'maybe'"),
    ("train=3", "section"),
    ("train.steps", "section.key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ValueError, match=message):
        config.build_config([], [override])


@pytest.mark.parametrize("override, message", [
    ("model.pooling=max", "model.pooling.*'max'"),
    ("loss.beta=1.0", "loss.beta"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.resize_size=10", "resize_size=10"),
    ("train.strategy=horovod", "horovod"),
])
def test_validation(override, message):
    with pytest.raises(ValueError, match=message):
        config.build_config([], [override])


def test_params_round_trip(tmp_path):
    cfg = config.build_config([], ["train.steps=7", "data.name=cars196", "loss.gamma=0.5"])
    config.save_params(cfg, str(tmp_path))
    assert config.load_params(str(tmp_path)) == cfg


def test_load_params_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="params.yaml"):
        config.load_params(str(tmp_path / "nothing"))
