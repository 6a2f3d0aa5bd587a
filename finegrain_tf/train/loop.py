"""The training loop of `finegrain-train`: works under every tf.distribute strategy.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so this loop is
written with `strategy.run` and `tf.nn.compute_average_loss`. It checkpoints every N steps and at the
end, resumes from the latest checkpoint, writes TensorBoard scalars, shows a progress bar on the chief
and ends with an evaluation report. The project's layers and losses still work in a user's own
`model.fit`; this loop is only what the binary uses.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass

import keras
import tensorflow as tf
from absl import logging

from finegrain_tf.data.pipeline import build_datasets
from finegrain_tf.models.heads import (adapt_kernel_pooling_gamma, init_anchors_by_kmeans,
                                       init_classifier_by_logistic_regression)
from finegrain_tf.models.initializers import configure_weight_decay
from finegrain_tf.train import evaluation
from finegrain_tf.train.config import ExperimentConfig, save_params
from finegrain_tf.train.factory import build_loss, build_model, build_triplet_loss
from finegrain_tf.train.optim import build_optimizer
from finegrain_tf.train.strategy import is_chief, make_strategy


@dataclass
class TrainResult:
    model_dir: str
    step: int
    resumed_from: int
    seconds: float
    report: dict


def _worker_dir(model_dir: str, strategy) -> str:
    """Non-chief workers of a multi-worker run write their (identical) checkpoints to a temp dir."""
    if is_chief(strategy):
        return model_dir
    task_id = strategy.cluster_resolver.task_id
    return os.path.join(tempfile.gettempdir(), f"finegrain_worker_{task_id}_{os.getpid()}")


def _set_precision(cfg: ExperimentConfig) -> None:
    if cfg.train.mixed_precision:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    else:
        policy = "float32"
    keras.mixed_precision.set_global_policy(policy)


def train(cfg: ExperimentConfig, strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Trains `cfg` to `cfg.train.steps` (resuming if checkpoints exist), then evaluates and saves.

    Writes into `cfg.train.model_dir`: params.yaml, checkpoints/, logs/ (TensorBoard), model.keras,
    backbone.weights.h5, class_names.txt, class_counts.json, eval_report.json.
    """
    start_time = time.time()
    strategy = strategy or make_strategy(cfg.train.strategy, cfg.train.tpu)
    chief = is_chief(strategy)
    model_dir = cfg.train.model_dir
    write_dir = _worker_dir(model_dir, strategy)
    if chief:
        save_params(cfg, model_dir)
    keras.utils.set_random_seed(cfg.train.seed)
    _set_precision(cfg)

    global_batch = cfg.data.batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(f"data.batch_size={global_batch} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    train_ds, eval_ds, info = build_datasets(cfg.data)
    train_dist = strategy.distribute_datasets_from_function(
        lambda ctx: build_datasets(cfg.data, global_batch_size=global_batch, input_context=ctx)[0])

    with strategy.scope():
        model = build_model(cfg, info.num_classes)
        optimizer = build_optimizer(cfg.optimizer, cfg.train.steps)
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            # float16 gradients need loss scaling; model.fit wraps this itself, a custom loop must.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        if cfg.optimizer.weight_decay:
            configure_weight_decay(optimizer, model, cfg.optimizer.decay_bias,
                                   cfg.optimizer.decay_batchnorm)
        optimizer.build(model.trainable_variables)
        loss_fn = build_loss(cfg, info.train_class_counts)
        triplet_fn = build_triplet_loss(cfg)
        # Eq 2.5: omega * triplet(embedding) + (1 - omega) * classification.
        omega = cfg.loss.triplet_weight
        net = keras.Model(model.input, [model.output, model.get_layer("embedding").output]) \
            if triplet_fn else model
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        train_loss = keras.metrics.Mean("train_loss")
        train_acc = keras.metrics.SparseCategoricalAccuracy("train_accuracy")

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "checkpoints"),
                                         max_to_keep=cfg.train.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).expect_partial()
        logging.info("resumed from %s at step %d", manager.latest_checkpoint, int(step.numpy()))
    resumed_from = int(step.numpy())
    if resumed_from == 0:
        # §3.3: kernel gamma = 1 / mean <x, y> of backbone features (layers configured with gamma 0),
        # then optionally (§3.3.1) the classifier from a logistic regression on the pooled features
        # of the frozen backbone; both on augmented train batches.
        gammas = adapt_kernel_pooling_gamma(model, train_ds, steps=cfg.model.init_batches)
        if gammas:
            logging.info("kernel pooling gamma estimated: %s", gammas)
        if cfg.model.head == "anchor_vote":
            used = init_anchors_by_kmeans(model, train_ds, steps=cfg.model.init_batches)
            logging.info("anchors initialised by k-means on %d embeddings", used)
        if cfg.model.logistic_init:
            fit = init_classifier_by_logistic_regression(model, train_ds,
                                                         steps=cfg.model.init_batches)
            logging.info("classifier initialised by logistic regression: %s", fit)

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            if triplet_fn:
                logits, embedding = net(images, training=True)
                embedding = tf.math.l2_normalize(tf.cast(embedding, tf.float32), axis=-1)
                per_example = (1.0 - omega) * loss_fn(labels, tf.cast(logits, tf.float32)) + \
                    omega * triplet_fn(labels, embedding)
            else:
                logits = model(images, training=True)
                per_example = loss_fn(labels, tf.cast(logits, tf.float32))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        scaled = optimizer.scale_loss(loss)  # the loss-scale factor under mixed_float16
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        train_loss.update_state(loss * strategy.num_replicas_in_sync)
        train_acc.update_state(labels, logits)

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)
        strategy.run(step_fn, args=(images, labels))

    writer = tf.summary.create_file_writer(os.path.join(write_dir, "logs", "train"))
    progbar = keras.utils.Progbar(cfg.train.steps, stateful_metrics=["loss", "acc", "lr"],
                                  verbose=1 if chief else 0)
    iterator = iter(train_dist)
    set_loss_step = getattr(loss_fn, "set_step", None)  # LDAM's deferred re-weighting switch
    while int(step.numpy()) < cfg.train.steps:
        if set_loss_step:
            set_loss_step(int(step.numpy()))
        train_step(iterator)
        current = int(step.assign_add(1).numpy())
        if current % cfg.train.log_every == 0 or current == cfg.train.steps:
            lr = float(optimizer.learning_rate.numpy()) if hasattr(optimizer.learning_rate,
                                                                   "numpy") else 0.0
            values = [("loss", float(train_loss.result())), ("acc", float(train_acc.result())),
                      ("lr", lr)]
            progbar.update(current, values)
            with writer.as_default(step=current):
                for name, value in values:
                    tf.summary.scalar(name, value)
            train_loss.reset_state()
            train_acc.reset_state()
        if current % cfg.train.checkpoint_every == 0 or current == cfg.train.steps:
            manager.save(checkpoint_number=current)
    writer.flush()

    report = evaluation.evaluate(model, eval_ds, info.train_class_counts, cfg.train.eval_batches,
                                 cfg.train.many_threshold, cfg.train.few_threshold)
    report["train_steps"] = int(step.numpy())
    if chief:
        _save_artifacts(cfg, model, info, report, model_dir)
        with tf.summary.create_file_writer(os.path.join(model_dir, "logs", "eval")).as_default(
                step=int(step.numpy())):
            for name in ("top1", "top5", "balanced_accuracy"):
                tf.summary.scalar(name, report[name])
    return TrainResult(model_dir, int(step.numpy()), resumed_from, time.time() - start_time, report)


def _save_artifacts(cfg, model, info, report, model_dir) -> None:
    """model.keras (a strategy-free copy), backbone weights, class names/counts, eval report."""
    plain = build_model(cfg, info.num_classes)
    plain.set_weights(model.get_weights())
    plain.save(os.path.join(model_dir, "model.keras"))
    # The backbone alone, for a second stage (`model.weights=<model_dir>/backbone.weights.h5`),
    # e.g. a kernel-pooling head fine-tuned on a trained backbone as in seed 000 §3.3.1.
    backbone = next(layer for layer in plain.layers if isinstance(layer, keras.Model))
    backbone.save_weights(os.path.join(model_dir, "backbone.weights.h5"))
    with open(os.path.join(model_dir, "class_names.txt"), "w") as f:
        f.write("\n".join(info.class_names) + "\n")
    with open(os.path.join(model_dir, "class_counts.json"), "w") as f:
        json.dump([int(c) for c in info.train_class_counts], f)
    with open(os.path.join(model_dir, "eval_report.json"), "w") as f:
        json.dump(report, f, indent=2)
