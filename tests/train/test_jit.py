"""Every registered task's train step compiles with XLA (`train.jit_compile=true`) at toy size."""

import keras
import numpy as np
import pytest

from finegrain_tf.train import config, loop
from finegrain_tf.train.strategy import make_strategy
from finegrain_tf.train.task import task_names

from test_configs import CONFIGS, toy_overrides  # noqa: E402 (same test folder)


def _first_config(task):
    """The first shipped config of `task` on the small CNN (a toy-size step)."""
    for path in CONFIGS:
        cfg = config.build_config([path])
        if cfg.task.name == task and cfg.model.backbone == "small_cnn":
            return path
    return None


@pytest.mark.parametrize("task", task_names())
def test_train_step_compiles_with_xla(task, tmp_path):
    path = _first_config(task)
    assert path is not None, f"every task ships a small-CNN config in configs/; none for {task!r}"
    shipped = config.build_config([path])
    cfg = config.build_config([path], toy_overrides(shipped, str(tmp_path / "run")) +
                              ["train.jit_compile=true", "train.strategy=default"])
    keras.backend.clear_session()
    trainer = loop.build_trainer(cfg, make_strategy("default"))
    trainer.task.initialize(trainer.model, trainer.init_dataset)
    assert trainer.run_step() == 1
    assert trainer.run_step() == 2
    assert np.isfinite(float(trainer.metrics["loss"].result()))
