"""The classification task's hard-negative baselines (seed 000 §2.4.3) and its single eq 2.5 loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.losses import CombinedObjective
from finegrain_tf.train import config
from finegrain_tf.train.task import get_task

from train_utils import TINY  # noqa: E402 (same test folder)


@pytest.mark.parametrize("mode, extra", [("hns", 1), ("hnm", 4)])
def test_hard_negative_softmax_mixes_negatives_and_exports_real_classes(mode, extra, tmp_path):
    cfg = config.build_config([], TINY + [f"loss.name={mode}", "data.hard_negatives=simulated",
                                          f"train.model_dir={tmp_path}"])
    task = get_task(cfg)
    train_ds = task.build_inputs(training=True)
    labels = np.concatenate([y.numpy() for _, y in train_ds.take(30)])
    assert labels.max() >= 4  # hard negatives (labels C.. of HNS / HNM) are in the stream
    assert labels.max() < 4 + extra and labels.min() >= 0
    keras.backend.clear_session()
    model = task.build_model()
    assert model.output.shape[-1] == 4 + extra
    exported = task.export_model(model)
    assert exported.output.shape[-1] == 4
    images = next(iter(train_ds))[0][:3]
    np.testing.assert_allclose(exported(images, training=False).numpy(),
                               model(images, training=False).numpy()[:, :4], rtol=1e-5, atol=1e-5)
    report = task.evaluate(model, task.build_inputs(training=False))
    assert report["num_examples"] == 16 and 0.0 <= report["top1"] <= 1.0


def test_triplet_term_is_one_combined_objective_usable_in_fit(tmp_path):
    cfg = config.build_config([], TINY + ["loss.triplet_weight=0.3", "model.embedding_dim=8",
                                          f"train.model_dir={tmp_path}"])
    task = get_task(cfg)
    train_ds = task.build_inputs(training=True)
    keras.backend.clear_session()
    model = task.build_model()
    objective = task.build_losses()
    assert isinstance(objective, CombinedObjective) and objective.omega == pytest.approx(0.3)
    images, labels = next(iter(train_ds))
    logits, embedding = model(images), model.get_layer("embedding").output
    unit = tf.math.l2_normalize(
        keras.Model(model.input, model.get_layer("embedding").output)(images), axis=-1)
    per_example = objective(labels, {"logits": logits, "embedding": unit})
    expected = 0.7 * objective.classification.call(labels, logits) + \
        0.3 * objective.triplet.call(labels, unit)
    np.testing.assert_allclose(per_example.numpy(), expected.numpy(), rtol=1e-6)
    # The same object trains a two-output model in plain model.fit.
    two = keras.Model(model.input, {"logits": model.output, "embedding": embedding})
    two.compile("sgd", loss=objective.losses, loss_weights=objective.loss_weights)
    history = two.fit(images, {"logits": labels, "embedding": labels}, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_hard_negatives_get_the_configured_augmentation(tmp_path, monkeypatch):
    """data.augment applies to the mixed-in hard negatives as to the train images (no flips here)."""
    from finegrain_tf.data import preprocessing

    calls = []
    original = preprocessing.preprocess_train

    def recording(image, *args, **kwargs):
        calls.append(kwargs)
        return original(image, *args, **kwargs)

    monkeypatch.setattr(preprocessing, "preprocess_train", recording)
    cfg = config.build_config([], TINY + ["loss.name=hns", "data.hard_negatives=simulated",
                                          "data.augment.horizontal_flip=false",
                                          f"train.model_dir={tmp_path}"])
    get_task(cfg).build_inputs(training=True)  # traces both map functions
    assert len(calls) >= 2  # the train images' map and the hard negatives' map
    assert all(call.get("horizontal_flip") is False for call in calls), calls
