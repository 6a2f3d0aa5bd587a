"""Every shipped config builds its task and trains one step (so a config that parses also runs).

The step is taken by the loop's own `Trainer` (task inputs, model, loss, optimizer, strategy, train
function, data-dependent initialisation); checkpointing, evaluation and artifacts are the same for
every config and are tested in test_loop.py / test_resume.py.

Only sizes are overridden: image size, batch size, class count and images per class, sketch and
pooling dimensions, one step, one evaluation batch. Nothing is downloaded: ImageNet weights become a
random init and tfds datasets become the embedded synthetic dataset (the tfds loaders are tested in
tests/data under tfds.testing.mock_data). New files in configs/ are picked up automatically.
"""

import glob
import math
import os

import keras
import pytest

import numpy as np

from finegrain_tf.train import config, loop
from finegrain_tf.train.strategy import make_strategy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
_MIN_INPUT = {"InceptionV3": 75, "InceptionResNetV2": 75}


def toy_overrides(cfg: config.ExperimentConfig, model_dir: str) -> list:
    """Size-only overrides that make `cfg` train one step in about a second."""
    size = _MIN_INPUT.get(cfg.model.backbone, 32)
    per_class = max(8, math.ceil(cfg.data.imbalance_factor))  # every class keeps >= 1 image
    overrides = [
        f"data.image_size={size}", "data.resize_size=0", "data.batch_size=4",
        "data.synthetic.num_classes=4", "data.synthetic.num_superclasses=2",
        f"data.synthetic.train_per_class={per_class}", "data.synthetic.val_per_class=2",
        "data.synthetic.test_per_class=2", f"data.synthetic.image_size={size}",
        "model.compact_dim=64", "model.kernel_pooling.dims=32", "model.init_batches=1",
        "train.steps=1", f"train.model_dir={model_dir}",
    ]
    if cfg.data.name != "synthetic":  # no download in tests
        overrides += ["data.name=synthetic", "data.data_dir=", "data.train_split=train",
                      "data.eval_split=test"]
    if cfg.model.weights == "imagenet":
        overrides.append("model.weights=")
    if cfg.pairs.invariant_weights == "imagenet":  # the double Siamese's invariant network I
        overrides.append("pairs.invariant_weights=")
    if cfg.model.embedding_dim:
        overrides.append("model.embedding_dim=8")
    if cfg.task.name == "pairs":  # fewer photos and pairs, narrow towers (the backbones stay)
        pc = cfg.pairs
        overrides += [f"pairs.num_places={min(pc.num_places, 30)}", "pairs.embedding_dim=8",
                      "pairs.variant_dim=16", f"pairs.labeled_triplets={min(pc.labeled_triplets, 20)}",
                      "pairs.kfold_epochs=1"]
        if pc.hidden_units:
            overrides.append("pairs.hidden_units=8")
        if pc.blend_units:
            overrides.append("pairs.blend_units=8")
    return overrides


def _param(path):
    """ImageNet-size backbones (ResNet50, VGG16, InceptionV3) take tens of seconds on 2 cores: slow."""
    heavy = config.build_config([path]).model.backbone != "small_cnn"
    return pytest.param(path, id=os.path.basename(path), marks=[pytest.mark.slow] if heavy else [])


@pytest.mark.parametrize("path", [_param(p) for p in CONFIGS])
def test_config_trains_one_step(path, tmp_path):
    shipped = config.build_config([path])
    cfg = config.build_config([path], toy_overrides(shipped, str(tmp_path / "run")))
    keras.backend.clear_session()
    trainer = loop.build_trainer(cfg, make_strategy(cfg.train.strategy))
    trainer.task.initialize(trainer.model, trainer.init_dataset)
    before = [w.numpy().copy() for w in trainer.model.trainable_weights]
    assert trainer.run_step() == 1
    assert np.isfinite(float(trainer.metrics["loss"].result()))
    assert float(trainer.metrics["nonfinite_steps"].result()) == 0
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, trainer.model.trainable_weights))
