"""The chapter-4 recipe of seed 000 sec. 4.4.1 as configs/inat2017_inceptionv3.yaml states it, and the
12-crop evaluation option end to end."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from finegrain_tf.data import pipeline, preprocessing
from finegrain_tf.train.config import build_config
from finegrain_tf.train.evaluation import predict_logits
from finegrain_tf.train.optim import build_schedule

from .image_bytes import pil_bytes

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "inat2017_inceptionv3.yaml")


def test_config_is_the_recipe_of_section_4_4_1():
    cfg = build_config([CONFIG])
    assert cfg.data.batch_size == 32 and cfg.data.image_size == 299
    assert cfg.data.augment.crop == "random_resized" and cfg.data.augment.horizontal_flip
    assert (cfg.data.augment.scale_min, cfg.data.augment.aspect_min, cfg.data.augment.aspect_max) == \
        (0.08, 0.75, 4 / 3)
    assert cfg.data.eval_crops == 1 and cfg.data.resize_size == 0  # centre crop of the 342 resize
    assert preprocessing.default_resize_size(299) == 342
    assert cfg.optimizer.name == "rmsprop" and cfg.optimizer.momentum == 0.9
    assert cfg.loss.label_smoothing > 0
    # 0.045, x0.94 every 2 epochs of 579,184 images at batch 32, as a staircase
    steps_per_epoch = 579184 / 32
    assert cfg.optimizer.decay_steps == round(2 * steps_per_epoch)
    schedule = build_schedule(cfg.optimizer, cfg.train.steps)
    for step, want in [(0, 0.045), (36198, 0.045), (36199, 0.045 * 0.94), (72397, 0.045 * 0.94),
                       (72398, 0.045 * 0.94 ** 2), (10 * 36199 + 5, 0.045 * 0.94 ** 10)]:
        np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-6, err_msg=str(step))


def test_fine_tuning_overrides_of_the_header_comment():
    cfg = build_config([CONFIG], ["optimizer.learning_rate=0.0045", "optimizer.decay_steps=4000"])
    schedule = build_schedule(cfg.optimizer, cfg.train.steps)
    np.testing.assert_allclose(float(schedule(3999)), 0.0045, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(4000)), 0.0045 * 0.94, rtol=1e-6)


def test_twelve_crop_evaluation_averages_probabilities_over_the_views(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(tmp_path / "data" / f"c{c}")
        for i in range(3):
            (tmp_path / "data" / f"c{c}" / f"{i}.png").write_bytes(
                pil_bytes(rng.integers(0, 255, (14 + i, 11 + 2 * i, 3), dtype=np.uint8), "PNG"))
    cfg = build_config([CONFIG], ["data.name=folder", f"data.data_dir={tmp_path / 'data'}", "data.image_size=8",
                                  "data.batch_size=4", "data.eval_crops=12"]).data
    _, eval_ds, info = pipeline.build_datasets(cfg)
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inp)))
    logits, labels = predict_logits(model, eval_ds)
    assert logits.shape == (6, 2) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    # naive reference: decode each file, take the 12 views, average the softmax over them in float64
    files = sorted(str(p) for p in (tmp_path / "data").rglob("*.png"))
    for row, path in enumerate(files):
        views = preprocessing.multi_crop(preprocessing.decode_image(tf.io.read_file(path)), 8)
        z = model(views).numpy().astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(logits[row], np.log(p.mean(0) + 1e-12), atol=1e-5)
    centre = dataclasses.replace(cfg, eval_crops=1)
    _, eval_centre, _ = pipeline.build_datasets(centre)
    assert next(iter(eval_centre))[0].shape == (4, 8, 8, 3)
