"""The classification task: backbone -> pooling -> head trained with a (long-tail) classification
loss, optionally with eq 2.5's triplet term on the embedding or the hard-negative softmax baselines.

* Losses (`loss.name`, registry `factory.LOSSES`): softmax, class_balanced (ch.5), logit_adjusted,
  balanced_softmax, ldam (with the DRW switch in `on_step`), and "hns" / "hnm" (seed 000 §2.4.3): the
  human hard negatives of `data.hard_negatives` are mixed into the training stream as one extra class
  (HNS) or one extra class per real class (HNM); evaluation and the saved model use only the real
  classes' scores.
* `loss.triplet_weight` = omega > 0 trains eq 2.5: omega * triplet(L2 embedding) + (1 - omega) *
  classification, one `CombinedObjective`; the triplet term mines the global batch across replicas.
* `initialize` (fresh runs): kernel pooling's gamma, k-means anchors of an anchor_vote head and the
  logistic-regression classifier init (`finegrain_tf.train.initialization`).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.data import preprocessing
from finegrain_tf.data.pipeline import build_datasets
from finegrain_tf.losses import hard_negative
from finegrain_tf.models.heads import build_classifier, classifier_kwargs_from_config
from finegrain_tf.sampling import hard_negatives as hn_files
from finegrain_tf.train import evaluation, factory, initialization
from finegrain_tf.train.task import Task, register_task


@register_task("classification")
class ClassificationTask(Task):
    """Image classification (the default task of `finegrain-train`)."""

    best_metrics = {"top1": True, "top5": True, "balanced_accuracy": True}

    def __init__(self, cfg):
        super().__init__(cfg)
        self._loss = None
        self._net = None  # (logits, embedding) view of the model when the triplet term is on
        self.last_predictions = None  # (predicted real class [N], label [N]) of the last evaluate

    # -- data ---------------------------------------------------------------------------------------

    def build_inputs(self, training, input_context=None, split=None):
        data_cfg = self.cfg.data
        if split and split != data_cfg.eval_split:
            data_cfg = dataclasses.replace(data_cfg, eval_split=split)
        train_ds, eval_ds, info = build_datasets(data_cfg, global_batch_size=data_cfg.batch_size,
                                                 input_context=input_context)
        if self.data_info is None:
            self.data_info = info
        if not training:
            return eval_ds
        if self.cfg.loss.name in hard_negative.MODES:
            return self._mix_hard_negatives(train_ds, info, input_context)
        return train_ds

    @property
    def num_classes(self) -> int:
        if self.data_info is None:
            raise ValueError("call build_inputs before building the model or the loss")
        return self.data_info.num_classes

    def _hard_negative_examples(self, info):
        """(float32 centre crops [H, S, S, 3], HNS/HNM labels [H]) of data.hard_negatives."""
        data_cfg = self.cfg.data
        found, sources = hn_files.resolve_hard_negatives(data_cfg, info.class_names)
        images = [preprocessing.preprocess_eval(
            preprocessing.decode_image(tf.io.read_file(src)) if isinstance(src, str) else src,
            data_cfg.image_size, data_cfg.resize_size).numpy() for src in sources]
        labels = hard_negative.hard_negative_labels(found.classes, info.num_classes,
                                                    self.cfg.loss.name)
        return np.stack(images), labels

    def _mix_hard_negatives(self, train_ds, info, input_context):
        """Train examples and hard negatives, drawn in proportion to their counts (§2.4.3)."""
        images, labels = self._hard_negative_examples(info)
        size, resize = self.cfg.data.image_size, self.cfg.data.resize_size
        augment = dataclasses.asdict(self.cfg.data.augment)  # the same augmentation as the train images
        seed = self.cfg.data.seed * 1009 + 7
        hn = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64)))
        if input_context is not None and input_context.num_input_pipelines > 1:
            hn = hn.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        hn = hn.shuffle(len(labels), seed=seed).repeat().enumerate().map(
            lambda i, e: (preprocessing.preprocess_train(
                e[0], size, resize, seed=tf.stack([tf.constant(seed, tf.int64), i]), **augment), e[1]))
        batch = int(train_ds.element_spec[1].shape[0])
        share = len(labels) / (len(labels) + info.num_train)
        mixed = tf.data.Dataset.sample_from_datasets([train_ds.unbatch(), hn], [1 - share, share],
                                                     seed=seed)
        logging.info("hard negatives (%s): %d images mixed into %d train images", self.cfg.loss.name,
                     len(labels), info.num_train)
        return mixed.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    # -- model and loss -----------------------------------------------------------------------------

    def build_model(self):
        model = factory.build_model(self.cfg, self.num_classes)
        if self.cfg.loss.triplet_weight > 0:
            self._net = keras.Model(model.input, [model.output, model.get_layer("embedding").output])
        return model

    def build_losses(self):
        self._loss = factory.build_objective(self.cfg, self.data_info.train_class_counts)
        return self._loss

    def build_metrics(self):
        return {**super().build_metrics(),
                "accuracy": keras.metrics.SparseCategoricalAccuracy("accuracy")}

    def initialize(self, model, dataset):
        done = {}
        steps = self.cfg.model.init_batches
        gammas = initialization.adapt_kernel_pooling_gamma(model, dataset, steps=steps)
        if gammas:
            done["kernel_gamma"] = gammas
        if self.cfg.model.head == "anchor_vote":
            done["kmeans_anchors"] = initialization.init_anchors_by_kmeans(model, dataset, steps=steps)
        if self.cfg.model.logistic_init:
            done["logistic_init"] = initialization.init_classifier_by_logistic_regression(
                model, dataset, steps=steps)
        return done

    # -- training -----------------------------------------------------------------------------------

    def on_step(self, step, model):
        classification = getattr(self._loss, "classification", self._loss)
        set_step = getattr(classification, "set_step", None)  # LDAM's deferred re-weighting switch
        if set_step:
            set_step(step)
            if step == self.cfg.loss.drw_step:
                logging.info("step %d: deferred re-weighting switched on (class-balanced weights, "
                             "beta=%g)", step, self.cfg.loss.beta)

    def train_step(self, inputs, model, optimizer, metrics):
        images, labels = inputs
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            if self._net is not None:
                logits, embedding = self._net(images, training=True)
                logits = tf.cast(logits, tf.float32)
                y_pred = {"logits": logits,
                          "embedding": tf.math.l2_normalize(tf.cast(embedding, tf.float32), axis=-1)}
            else:
                logits = tf.cast(model(images, training=True), tf.float32)
                y_pred = logits
            loss = self.average_loss(self._loss(labels, y_pred), model)
        self.apply_gradients(tape, loss, model, optimizer, metrics)
        metrics["loss"].update_state(loss * replicas)
        metrics["accuracy"].update_state(labels, logits)

    # -- evaluation and artifacts -------------------------------------------------------------------

    def evaluate(self, model, dataset):
        train = self.cfg.train
        report, predictions = evaluation.evaluate(
            model, dataset, self.data_info.train_class_counts, train.eval_batches,
            train.many_threshold, train.few_threshold, num_classes=self.num_classes)
        self.last_predictions = predictions
        return report

    def export_model(self, model):
        """A strategy-free copy of `model` with only the real classes' logits (what export serves)."""
        plain = build_classifier(self.cfg.model.backbone, num_classes=self.num_classes,
                                 input_size=self.cfg.data.image_size,
                                 **classifier_kwargs_from_config(self.cfg.model))
        weights = model.get_weights()
        if factory.num_outputs(self.cfg, self.num_classes) != self.num_classes:
            layer = model.get_layer("logits")
            kernel, bias = layer.get_weights()
            for target, value in zip(plain.get_layer("logits").weights, (kernel, bias)):
                target.assign(value[..., :self.num_classes])
            others = [w for lyr in model.layers if lyr.name != "logits" for w in lyr.weights]
            plain_others = [w for lyr in plain.layers if lyr.name != "logits" for w in lyr.weights]
            for target, source in zip(plain_others, others):
                target.assign(source)
        else:
            plain.set_weights(weights)
        return plain

    def save_artifacts(self, run_dir, model, report):
        plain = self.export_model(model)
        run_dir.save_model(plain)
        # The backbone alone, for a second stage (`model.weights=<run_dir>/backbone.weights.h5`),
        # e.g. a kernel-pooling head fine-tuned on a trained backbone as in seed 000 §3.3.1.
        backbone = next(layer for layer in plain.layers if isinstance(layer, keras.Model))
        backbone.save_weights(run_dir.backbone_weights_path)
        run_dir.save_class_names(self.data_info.class_names)
        run_dir.save_class_counts(self.data_info.train_class_counts)
        run_dir.save_eval_report(report)
        if self.cfg.train.plots and self.last_predictions is not None:
            from finegrain_tf.train import plots
            predicted, labels = self.last_predictions
            plots.per_class_accuracy(run_dir.plot_path("per_class_accuracy.png"), labels, predicted,
                                     run_dir.load_class_counts(), self.data_info.class_names)
            plots.confusion(run_dir.plot_path("confusion.png"), labels, predicted,
                            self.data_info.class_names)

