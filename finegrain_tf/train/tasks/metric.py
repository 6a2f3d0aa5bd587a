"""The metric-learning task (seed 000 §2.3–2.4, Tables 2.1 / 2.3): triplets from the quasi-online sampler.

Batch composition (§2.4.1): a step takes `data.batch_size` triplets (anchor, positive, negative), i.e.
3 x batch_size images, from a list the sampler re-draws every `sampler.refresh_every` steps from the
embeddings of the whole training set under the current model (`QuasiOnlineTripletSampler`: local
positives, violating / hardest / random negatives; with `data.hard_negatives`, human hard negatives
mixed 1:1 into every batch, §2.4.3).

Objective: eq 2.5, omega * L_triplet (eq 2.1 on the L2-normalised embedding) + (1 - omega) * L_cls
(eq 2.4 on the anchor images' soft votes), omega = `loss.triplet_weight`. The model is the classifier
with the anchor-vote head (eq 2.3), so every Table 2.1 method classifies by soft voting:
- omega < 1 (Triplet-A): anchors start from per-class k-means and are learned with the network;
- omega = 1 (Triplet-Naive / HN / M): nothing trains the anchors, so before every evaluation (and thus
  in the saved model) they are placed by k-means on the training embeddings, "after metric learning"
  as §2.3.4 describes.

How the sampler reaches tf.data: each refresh writes the next `refresh_every` global batches of pool
indices into a variable that the input pipeline reads (so the input iterator stays checkpointable);
the pipeline gathers, decodes and augments the images. A batch or two prefetched just before a
refresh still comes from the previous list, as in any quasi-online scheme.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf import losses
from finegrain_tf.data import pipeline, preprocessing
from finegrain_tf.layers.anchor_soft_vote import kmeans_anchors
from finegrain_tf.sampling import hard_negatives as hn_files
from finegrain_tf.sampling.triplets import QuasiOnlineTripletSampler
from finegrain_tf.train import initialization
from finegrain_tf.train.task import register_task
from finegrain_tf.train.tasks.classification import ClassificationTask


class _Pool:
    """The images the sampler indexes: training items 0..n-1, then human hard negatives n..n+H-1.

    Either every image is in memory (uint8 [n + H, s, s, 3]) or every image is a file path."""

    def __init__(self, data_cfg, class_names):
        index = pipeline.build_index(data_cfg)
        payload = index.train_payload
        if payload is None:
            raise ValueError(f"task.name='metric' needs an indexable training set (data.name "
                             f"'synthetic', 'folder' or 'manifest'), not {data_cfg.name!r}")
        train = np.asarray(payload)[index.train.positions]
        self.labels = np.asarray(index.train.labels, np.int64)
        self.in_memory = train.dtype == np.uint8
        self.hard_negative_classes = None
        extra = []
        if data_cfg.hard_negatives:
            found, sources = hn_files.resolve_hard_negatives(data_cfg, class_names)
            self.hard_negative_classes = found.classes
            extra = [self._as_pool_item(src, train) for src in sources]
        self.items = np.concatenate([train, np.stack(extra)]) if extra else train
        self.num_train = len(self.labels)

    def _as_pool_item(self, source, train):
        if not self.in_memory:
            if not isinstance(source, str):
                raise ValueError("hard negatives given as synthetic image ids need data.name='synthetic'")
            return source
        image = source if not isinstance(source, str) else \
            preprocessing.decode_image(tf.io.read_file(source)).numpy()
        if image.shape != train.shape[1:]:  # in-memory pools share one size
            image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
                tf.cast(image, tf.float32), train.shape[1:3], antialias=True)), 0, 255), tf.uint8).numpy()
        return image

    def __len__(self) -> int:
        return len(self.items)

    def load_fn(self):
        """pool index (int64 scalar) -> uint8 image [h, w, 3]."""
        items = tf.constant(self.items)
        if self.in_memory:
            return lambda j: tf.gather(items, j)
        return lambda j: preprocessing.decode_image(tf.io.read_file(tf.gather(items, j)))


def _all_layers(model):
    """Every layer of `model`, nested models included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


@register_task("metric")
class MetricTask(ClassificationTask):
    """Triplet metric learning with anchor soft voting (Triplet-Naive / HN / M / A / A+HN)."""

    input_sections = ("data", "sampler")

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.model.head != "anchor_vote":
            raise ValueError(f"task.name='metric' classifies by anchor soft voting (eq 2.3): set "
                             f"model.head='anchor_vote', not {cfg.model.head!r}")
        if cfg.loss.name != "softmax":
            raise ValueError(f"task.name='metric' trains eq 2.5 (triplet + anchor-vote loss); "
                             f"loss.name={cfg.loss.name!r} does not apply (keep 'softmax')")
        if not cfg.loss.triplet_weight > 0:
            raise ValueError("task.name='metric' needs loss.triplet_weight (omega of eq 2.5) > 0; "
                             "without the triplet term use task.name='classification'")
        self.omega = float(cfg.loss.triplet_weight)
        self.learned_anchors = self.omega < 1.0
        self.pool = None
        self.sampler = None
        self._table = None  # [refresh_every, batch_size, 3] pool indices of the coming steps
        self._next_refresh = None
        self._embedder = None

    # -- data ---------------------------------------------------------------------------------------

    def build_inputs(self, training, input_context=None, split=None):
        if not training or self.data_info is None:
            eval_ds = super().build_inputs(False, input_context, split)  # fills data_info
            if not training:
                return eval_ds
        if self.pool is None:
            self._build_sampler()
        return self._triplet_dataset(input_context)

    def _build_sampler(self):
        cfg, s = self.cfg, self.cfg.sampler
        self.pool = _Pool(cfg.data, self.data_info.class_names)
        self.sampler = QuasiOnlineTripletSampler(
            self.pool.labels, positive_fraction=s.positive_fraction, margin=cfg.loss.margin,
            negatives=s.negatives, triplets_per_anchor=s.triplets_per_anchor,
            batch_size=cfg.data.batch_size, refresh_every=s.refresh_every,
            hard_negative_classes=self.pool.hard_negative_classes,
            filter_human_negatives=s.filter_human_negatives, seed=cfg.train.seed)
        # Until the first refresh (which needs the model) the table holds naive triplets, so batches
        # prefetched before it are still valid triplets.
        with tf.device("/cpu:0"):
            self._table = tf.Variable(self._naive_table(), trainable=False, name="triplet_table")
        logging.info("metric task: %d training images, %d human hard negatives; %d triplets per step, "
                     "refresh every %d steps", self.pool.num_train, len(self.pool) - self.pool.num_train,
                     cfg.data.batch_size, s.refresh_every)

    def _naive_table(self) -> np.ndarray:
        rng = np.random.default_rng(self.cfg.train.seed)
        labels = self.pool.labels
        classes, counts = np.unique(labels, return_counts=True)
        if len(classes) < 2 or counts.max() < 2:
            raise ValueError("the metric task needs >= 2 classes and a class with >= 2 training images")
        shape = (self.cfg.sampler.refresh_every, self.cfg.data.batch_size)
        anchors = rng.choice(np.flatnonzero(np.isin(labels, classes[counts >= 2])), size=shape)
        positives = np.array([rng.choice(np.flatnonzero((labels == labels[a]) & (np.arange(len(labels)) != a)))
                              for a in anchors.ravel()]).reshape(shape)
        negatives = np.array([rng.choice(np.flatnonzero(labels != labels[a])) for a in anchors.ravel()])
        return np.stack([anchors, positives, negatives.reshape(shape)], axis=-1).astype(np.int64)

    def _triplet_dataset(self, input_context):
        """(images [3b, S, S, 3]: anchors, positives, negatives; anchor labels [b]) per replica."""
        cfg = self.cfg
        b, pipe, per_pipe = cfg.data.batch_size, 0, 1
        if input_context is not None:
            b = input_context.get_per_replica_batch_size(cfg.data.batch_size)
            pipe = input_context.input_pipeline_id
            per_pipe = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        table, rows = self._table, cfg.sampler.refresh_every
        labels = tf.constant(np.concatenate([self.pool.labels,
                                             -np.ones(len(self.pool) - self.pool.num_train, np.int64)]))
        load = self.pool.load_fn()
        size, resize = cfg.data.image_size, cfg.data.resize_size
        augment = dataclasses.asdict(cfg.data.augment)  # the classification task's train augmentation
        seed = cfg.data.seed * 1009 + 17 + pipe

        def triplet_ids(i):
            # Element i of this pipeline: global step i // per_pipe, replica slice pipe * per_pipe + i % per_pipe.
            row = tf.math.floormod(i // per_pipe, rows)
            start = (pipe * per_pipe + i % per_pipe) * b
            return tf.reshape(tf.transpose(table[row, start:start + b]), [-1])  # anchors, positives, negatives

        def load_image(k, j):
            image = preprocessing.preprocess_train(load(j), size, resize,
                                                   seed=tf.stack([tf.constant(seed, tf.int64), k]), **augment)
            return image, tf.gather(labels, j)

        ds = tf.data.Dataset.range(2 ** 62).map(triplet_ids).unbatch().enumerate()
        ds = ds.map(load_image, num_parallel_calls=tf.data.AUTOTUNE).batch(3 * b, drop_remainder=True)
        ds = ds.map(lambda images, y: (images, y[:b]))
        options = tf.data.Options()
        # The table variable is state outside the pipeline: checkpoint the iterator position only.
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        return ds.with_options(options).prefetch(1)

    # -- model, loss, initialisation ------------------------------------------------------------------

    def build_model(self):
        model = super().build_model()
        self._net = keras.Model(model.input, [model.output, model.get_layer("embedding_l2").output])
        return model

    def build_losses(self):
        """Eq 2.5 (`losses.CombinedObjective`) with eq 2.1 on the sampled triplets ([B, 3, D]
        embeddings) and eq 2.4 on the anchors' soft votes; per triplet (the loop averages)."""
        cfg = self.cfg.loss
        self._objective = losses.CombinedObjective(
            self.omega, cfg.margin, mining="sampled", distance=cfg.distance,
            classification=losses.AnchorVoteLoss(from_logits=True), reduction=None)
        return self._objective

    def build_metrics(self):
        return {**super().build_metrics(), "active_triplets": keras.metrics.Mean("active_triplets")}

    def _embed(self, model, which: str) -> np.ndarray:
        """L2 embeddings (eval preprocessing, inference mode) of the pool's "train" items or "all"."""
        if self._embedder is None or self._embedder[0] is not model:
            self._embedder = (model, keras.Model(model.input, model.get_layer("embedding_l2").output))
        embedder = self._embedder[1]
        n = self.pool.num_train if which == "train" else len(self.pool)
        load, size, resize = self.pool.load_fn(), self.cfg.data.image_size, self.cfg.data.resize_size
        ds = tf.data.Dataset.range(n).map(lambda j: preprocessing.preprocess_eval(load(j), size, resize),
                                          num_parallel_calls=tf.data.AUTOTUNE)
        out = [np.asarray(embedder(x, training=False), np.float32)
               for x in ds.batch(self.cfg.sampler.embed_batch_size).prefetch(1)]
        return np.concatenate(out)

    def _recalibrate_batchnorm(self, model) -> int:
        """Re-estimates every batch-norm layer's moving mean / variance on up to
        `sampler.batchnorm_images` training images (eval preprocessing, chunks of embed_batch_size,
        averaged), as "precise BN" does. The small triplet batches move the moving statistics too
        slowly on a small set, and the refresh embeddings and the evaluation run in inference mode.
        Returns the number of images used."""
        layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
        n = min(self.cfg.sampler.batchnorm_images, self.pool.num_train)
        if not layers or n == 0:
            return 0
        rng = np.random.default_rng(self.cfg.train.seed + self.sampler.rounds)
        chosen = np.sort(rng.choice(self.pool.num_train, size=n, replace=False))
        load, size, resize = self.pool.load_fn(), self.cfg.data.image_size, self.cfg.data.resize_size
        ds = tf.data.Dataset.from_tensor_slices(chosen).map(
            lambda j: preprocessing.preprocess_eval(load(j), size, resize)).batch(self.cfg.sampler.embed_batch_size)
        saved = [layer.momentum for layer in layers]
        try:
            for k, images in enumerate(ds):
                for layer in layers:  # running average over the chunks: chunk k weighs 1 / (k + 1)
                    layer.momentum = k / (k + 1.0)
                model(images, training=True)
        finally:
            for layer, momentum in zip(layers, saved):
                layer.momentum = momentum
        return n

    def _fit_anchors(self, model, embeddings=None) -> None:
        """Per-class k-means anchors (§2.3.4) on the training embeddings."""
        emb = self._embed(model, "train") if embeddings is None else embeddings[:self.pool.num_train]
        head = model.get_layer("logits")
        head.set_anchors(kmeans_anchors(emb, self.pool.labels, head.anchors_per_class,
                                        num_classes=self.num_classes, seed=self.cfg.train.seed))

    def initialize(self, model, dataset):
        done = {}
        gammas = initialization.adapt_kernel_pooling_gamma(model, dataset, steps=self.cfg.model.init_batches)
        if gammas:
            done["kernel_gamma"] = gammas
        self._fit_anchors(model)
        done["kmeans_anchors"] = self.pool.num_train
        return done

    # -- training -----------------------------------------------------------------------------------

    def on_step(self, step, model):
        if self._next_refresh is not None and step < self._next_refresh:
            return
        every = self.cfg.sampler.refresh_every
        self._recalibrate_batchnorm(model)
        emb = self._embed(model, "all")
        n = self.pool.num_train
        self.sampler.refresh(emb[:n], emb[n:] if len(emb) > n else None)
        self._table.assign(np.stack([self.sampler.next_batch() for _ in range(every)]))
        self._next_refresh = (step // every + 1) * every

    def train_step(self, inputs, model, optimizer, metrics):
        images, labels = inputs
        b = tf.shape(labels)[0]
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits, unit = self._net(images, training=True)
            unit = tf.cast(unit, tf.float32)
            triplets = tf.transpose(tf.reshape(unit, [3, b, -1]), [1, 0, 2])  # [b, 3, D]
            anchor_logits = tf.cast(logits[:b], tf.float32)
            # With omega = 1 the vote term weighs 0: the anchors get a zero gradient (not a missing
            # one) and are placed by k-means before evaluation.
            per_triplet = self._objective.call(labels, {self._objective.embedding_output: triplets,
                                                        self._objective.vote_output: anchor_logits})
            loss = tf.nn.compute_average_loss(per_triplet, global_batch_size=self.cfg.data.batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        self.apply_gradients(tape, loss, model, optimizer, metrics)
        metrics["loss"].update_state(loss * replicas)
        metrics["accuracy"].update_state(labels, anchor_logits)
        triplet = self._objective.triplet.call(labels, tf.stop_gradient(triplets))
        metrics["active_triplets"].update_state(tf.cast(triplet > 0, tf.float32))

    # -- evaluation ---------------------------------------------------------------------------------

    def evaluate(self, model, dataset):
        self._recalibrate_batchnorm(model)
        if not self.learned_anchors:  # Triplet-Naive / HN / M: anchors by k-means after metric learning
            self._fit_anchors(model)
        report = super().evaluate(model, dataset)
        report["anchors"] = "learned" if self.learned_anchors else "kmeans_after_training"
        report["sampler_refreshes"] = self.sampler.rounds if self.sampler else 0
        return report
