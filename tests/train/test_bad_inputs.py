"""Bad inputs to the training side (config, YAML, CLI, non-finite training): each gives a clear error
naming the offending key / value / step, and a user error never prints a traceback."""

import os
import subprocess

import pytest

from finegrain_tf.train import config

from train_utils import ENV, train_cmd  # noqa: E402 (same test folder)


@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=nan", r"optimizer\.learning_rate must be finite, got nan"),
    ("loss.beta=inf", r"loss\.beta must be finite"),
    ("model.anchor_gamma=-inf", r"model\.anchor_gamma must be finite"),
    ("train.log_every=0", r"train\.log_every must be > 0, got 0"),
    ("train.keep_checkpoints=0", r"train\.keep_checkpoints must be > 0, got 0"),
    ("train.eval_batches=-1", r"train\.eval_batches must be >= 0, got -1"),
    ("train.steps=-5", r"train\.steps must be > 0"),
    ("export.model_name=my model/1", r"export\.model_name .*'my model/1'"),
    ("export.model_name=", r"export\.model_name"),
    ("model.kernel_pooling.gamma=0", r"model\.kernel_pooling\.gamma must be > 0, got 0\.0"),
    ("model.kernel_pooling.coefficients=1,2", r"model\.kernel_pooling\.coefficients .*'1,2'"),
    ("task.name=regression", r"task\.name must be one of .*'regression'"),
    ("loss.name=arcface", r"loss\.name must be one of .*'arcface'"),
    ("loss.name=hns", r"loss\.name='hns' .*data\.hard_negatives"),
    ("train.on_nonfinite=ignore", r"train\.on_nonfinite must be one of \['stop', 'skip_step'\]"),
    ("train.early_stopping=3", r"train\.early_stopping needs train\.eval_every"),
    ("data.imbalance_factor=0.5", r"data\.imbalance_factor must be >= 1, got 0\.5"),
    ("model.dropout=1.0", r"model\.dropout must be in \[0, 1\), got 1\.0"),
    ("loss.label_smoothing=0.1", None),  # valid with the default softmax loss
    ("train.best_metric=loss", r"train\.best_metric='loss' is not reported by "
                               r"task\.name='classification'; choose one of \['top1'"),
    ("task.name=pairs;train.best_metric=top1", r"train\.best_metric='top1' is not reported by "
                                               r"task\.name='pairs'; choose one of \['loss', "
                                               r"'pair_accuracy'\]"),
    ("task.name=pairs;train.best_metric=pair_accuracy", None),
])
def test_config_values_refused_at_parse(override, message):
    overrides = override.split(";")  # "a=1;b=2": several overrides
    if message is None:
        config.build_config([], overrides)
        return
    with pytest.raises(ValueError, match=message):
        config.build_config([], overrides)


def test_jit_compile_needs_a_single_device_strategy():
    with pytest.raises(ValueError, match=r"train\.jit_compile=true needs train\.strategy"):
        config.build_config([], ["train.jit_compile=true", "train.strategy=mirrored"])


def test_skip_step_needs_a_single_replica_strategy():
    with pytest.raises(ValueError, match=r"train\.on_nonfinite='skip_step' needs train\.strategy"):
        config.build_config([], ["train.on_nonfinite=skip_step", "train.strategy=mirrored"])


def test_gamma_none_means_estimate():
    cfg = config.build_config([], ["model.kernel_pooling.gamma=0.5"])
    assert cfg.model.kernel_pooling.gamma == 0.5
    assert config.apply_override(cfg, "model.kernel_pooling.gamma=none").model.kernel_pooling.gamma is None


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  steps: 10\n  log_every: 2\n  steps: 20\n")
    with pytest.raises(ValueError, match=r"dup\.yaml:4: duplicate key 'steps' \(first at line 2\)"):
        config.build_config([str(path)])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  steps: 10\n log_every: [1\n")
    with pytest.raises(ValueError, match=r"broken\.yaml:\d+: YAML syntax error") as err:
        config.build_config([str(path)])
    assert "\n" not in str(err.value)


def test_non_finite_float_in_yaml_names_key(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("optimizer:\n  learning_rate: .nan\n")
    with pytest.raises(ValueError, match=r"optimizer\.learning_rate must be finite"):
        config.build_config([str(path)])


def test_sections_are_frozen():
    cfg = config.build_config([])
    with pytest.raises(Exception, match="cannot assign"):
        cfg.train.steps = 3  # noqa: B003 - derive copies with apply_override / replace


def _train(tmp_path, *overrides, config_file=None):
    cmd = train_cmd(tmp_path / "run", "train.plots=false", *overrides,
                    config_files=[config_file] if config_file else [])
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=nan", "optimizer.learning_rate must be finite"),
    ("train.log_every=0", "train.log_every must be > 0"),
])
def test_cli_config_errors_are_one_line_without_traceback(tmp_path, override, message):
    out = _train(tmp_path, override)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_yaml_syntax_error_without_traceback(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  steps: [3\n")
    out = _train(tmp_path, config_file=str(path))
    assert out.returncode != 0
    assert f"{path}:" in out.stderr and "YAML syntax error" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_data_error_without_traceback(tmp_path):
    out = _train(tmp_path, "data.name=folder", f"data.data_dir={tmp_path / 'nowhere'}")
    assert out.returncode != 0
    assert "nowhere" in out.stderr and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_exploding_loss_stops_naming_the_step_and_writes_no_model(tmp_path):
    out = _train(tmp_path, "optimizer.learning_rate=1e30", "train.steps=6")
    assert out.returncode != 0
    assert "non-finite loss or gradient norm" in out.stderr and "step " in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "run" / "model.keras")


def test_skip_step_keeps_training_finite(tmp_path):
    out = _train(tmp_path, "optimizer.learning_rate=1e30", "train.steps=6",
                 "train.on_nonfinite=skip_step")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "the update was skipped" in out.stderr
