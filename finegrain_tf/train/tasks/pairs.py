"""The pairs task: Siamese / double-Siamese embeddings learnt from geo-tagged photos (seed 004).

    finegrain-train --config configs/geo_p30_2000.yaml --model_dir runs/geo

Data (config section `pairs`): the embedded synthetic geo set or a manifest of the user's photos
(`finegrain_tf.data.geo`); photos below the entropy threshold and duplicates are dropped; photos are
split into train / eval by 1 km map cells (pairs never straddle the split); each side gets a
balanced pair set of §5.1.1 (`finegrain_tf.sampling.geo.sample_geo_pairs`) and the counts after
every filter are logged and kept in the eval report. In mode "blend" the pairs are labeled ones
instead, from rated triplets (a file, or rated by the synthetic set's ground truth).

Model: a shared-weight tower (`finegrain_tf.models.siamese`) applied to both images; the contrastive
loss of eq 4.1.3 on the pair embeddings; each replica's gradient is clipped to `pairs.clip_norm`
(1 in the thesis). The run's model.keras is the single tower, ending in the layer "embedding", so
`finegrain-export` serves it with `embed` / `lookup` like any other embedding model.

Evaluation: contrastive loss and pair accuracy on the held-out pairs, the fuzziness statistics of
Table 5.7 on them, rated-triplet accuracy (synthetic data), and in mode "blend" with `pairs.kfold`
the k-fold cross-validation of B that the thesis uses on its small labeled set.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.analysis.fuzziness import photo_embeddings, plot_histograms, ranking_violations
from finegrain_tf.data import entropy, geo, rated_triplets, synthetic_geo
from finegrain_tf.losses.pairwise import ContrastiveLoss
from finegrain_tf.metrics.retrieval import triplet_accuracy
from finegrain_tf.models import siamese
from finegrain_tf.sampling.geo import TimeWindow, sample_geo_pairs
from finegrain_tf.train.task import Task, register_task

CELL_M = 1000.0  # side of the map cells that split photos into train / eval


@dataclasses.dataclass
class PairDataInfo:
    """What the loop logs about the data: the two pair labels and their train counts."""
    class_names: list
    train_class_counts: np.ndarray
    counts: dict  # counts after every filter, per split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclasses.dataclass
class PairSplit:
    """Pairs of indices into `photos` with labels; `anchors` of positives and negatives shared."""
    left: np.ndarray
    right: np.ndarray
    labels: np.ndarray


def _ints(text: str) -> tuple:
    return tuple(int(p) for p in text.split(",") if p.strip())


def load_photos(pairs_cfg, image_size: int):
    """(GeoPhotos, SyntheticGeo or None) of the config's photo source."""
    if pairs_cfg.source == "manifest":
        return geo.load_manifest(pairs_cfg.manifest), None
    data = synthetic_geo.generate_geo(num_places=pairs_cfg.num_places,
                                      photos_per_place=pairs_cfg.photos_per_place,
                                      image_size=image_size, seed=pairs_cfg.synthetic_seed,
                                      fuzzy_share=pairs_cfg.fuzzy_share)
    return data.photos, data


def eval_mask(photos: geo.GeoPhotos, share: float, seed: int) -> np.ndarray:
    """Photos held out for evaluation: those in a random `share` of the 1 km map cells."""
    lat0 = float(np.mean(photos.latitudes))
    north = photos.latitudes * 111_195.0
    east = photos.longitudes * 111_195.0 * math.cos(math.radians(lat0))
    cells = np.stack([np.floor(north / CELL_M), np.floor(east / CELL_M)], axis=1)
    unique, cell_of = np.unique(cells, axis=0, return_inverse=True)
    draw = np.random.default_rng(seed).random(len(unique))
    held = draw < share
    if not held.any():
        held[np.argmin(draw)] = True
    if held.all():
        held[np.argmax(draw)] = False
    return held[cell_of.reshape(-1)]


def sample_pairs_for_config(pairs_cfg, photos: geo.GeoPhotos, keep: np.ndarray, seed: int):
    """The §5.1.1 pair set of `pairs_cfg` over the photos where `keep` is True (global indices)."""
    index = np.flatnonzero(keep)
    window = TimeWindow(years=_ints(pairs_cfg.years), months=_ints(pairs_cfg.months),
                        start=pairs_cfg.start_date, end=pairs_cfg.end_date)
    keys = geo.duplicate_keys(photos.subset(index), pairs_cfg.duplicates) \
        if pairs_cfg.duplicates != "none" else None
    result = sample_geo_pairs(
        photos.latitudes[index], photos.longitudes[index], timestamps=photos.timestamps[index],
        users=photos.users[index], duplicate_keys=keys,
        positive_radius_m=pairs_cfg.positive_radius_m, location_error_m=pairs_cfg.location_error_m,
        negatives=pairs_cfg.negatives, negative_min_m=pairs_cfg.negative_min_m,
        ring_m=(pairs_cfg.ring_min_m, pairs_cfg.ring_max_m), positive_user=pairs_cfg.positive_user,
        negative_user=pairs_cfg.negative_user, max_time_gap_s=pairs_cfg.max_time_gap_hours * 3600,
        timelapse_min_gap_s=pairs_cfg.timelapse_min_gap_hours * 3600, window=window,
        max_positives=pairs_cfg.max_positives, seed=seed)
    return PairSplit(index[result.left], index[result.right], result.labels), result.counts


def triplets_to_pairs(triplets: rated_triplets.RatedTriplets) -> PairSplit:
    """Labeled pairs from rated triplets: (Q, A) and (Q, B), similar where the raters said so."""
    q, a, b = (np.asarray(v, np.int64) for v in (triplets.query, triplets.a, triplets.b))
    r = triplets.ratings
    label_a = ((r == 0) | (r == 2)).astype(np.int64)
    label_b = ((r == 0) | (r == 3)).astype(np.int64)
    return PairSplit(np.concatenate([q, q]), np.concatenate([a, b]), np.concatenate([label_a, label_b]))


@register_task("pairs")
class PairsTask(Task):
    """Siamese training on weak geo pairs (or labeled pairs for the blending network)."""

    input_sections = ("data", "pairs")
    best_metrics = {"loss": False, "pair_accuracy": True}

    def __init__(self, cfg):
        super().__init__(cfg)
        self._photos = None  # the geo-tagged photos
        self._pair_photos = None  # the photos pair indices refer to (rated images in mode "blend")
        self._synthetic = None
        self._splits = {}
        self._mean_pixel = None
        self._loss = None

    # -- data ---------------------------------------------------------------------------------------

    def _prepare(self):
        if self._photos is not None:
            return
        pc, size = self.cfg.pairs, self.cfg.data.image_size
        photos, synthetic = load_photos(pc, size)
        counts = {"photos_loaded": len(photos), "unreadable_skipped": len(photos.skipped)}
        usable = np.ones(len(photos), bool)
        if pc.entropy_threshold > 0:
            usable, _ = entropy.entropy_keep_mask(photos.image_dataset(), pc.entropy_threshold,
                                                  pc.entropy_channels)
            counts["entropy_dropped"] = int((~usable).sum())
        held_out = eval_mask(photos, pc.eval_share, self.cfg.data.seed)
        if pc.mode == "blend":
            self._splits, split_counts = self._labeled_pairs(pc, photos, synthetic, usable, held_out)
        else:
            self._splits, split_counts = {}, {}
            for name, mask in (("train", usable & ~held_out), ("eval", usable & held_out)):
                self._splits[name], split_counts[name] = sample_pairs_for_config(
                    pc, photos, mask, self.cfg.data.seed + (name == "eval"))
        for name, split in self._splits.items():
            if split.labels.size == 0 or split.labels.min() == split.labels.max():
                raise ValueError(f"the {name} split has {int(split.labels.sum())} positive and "
                                 f"{int((split.labels == 0).sum())} negative pairs; loosen the pairs "
                                 f"filters or use more photos (counts: {split_counts.get(name)})")
        counts.update(split_counts)
        if pc.mean_subtraction:
            self._mean_pixel = geo.dataset_mean_pixel(photos.image_dataset(), size)
            counts["mean_pixel"] = [float(v) for v in self._mean_pixel]
        self._photos, self._synthetic = photos, synthetic
        if self._pair_photos is None:
            self._pair_photos = photos
        train_labels = self._splits["train"].labels
        self.data_info = PairDataInfo(["negative", "positive"],
                                      np.bincount(train_labels, minlength=2).astype(np.int64), counts)
        logging.info("pairs data: %s", counts)

    def _labeled_pairs(self, pc, photos, synthetic, usable, held_out):
        """Labeled pairs of mode "blend": rated triplets turned into pairs, split train / eval."""
        if pc.labeled == "synthetic":
            if synthetic is None:
                raise ValueError("pairs.labeled='synthetic' needs pairs.source='synthetic'; give a "
                                 "rated-triplet file for a manifest")
            rated = rated_triplets.generate_rated_triplets(synthetic, pc.labeled_triplets,
                                                           seed=self.cfg.data.seed)
            q = np.asarray(rated.query)
            in_eval = held_out[q]
            parts = {"train": ~in_eval, "eval": in_eval}
        else:
            rated = rated_triplets.load_rated_triplets(pc.labeled)
            paths = sorted(set(rated.query) | set(rated.a) | set(rated.b))
            index = {p: i for i, p in enumerate(paths)}
            rated = rated_triplets.RatedTriplets([index[p] for p in rated.query], [index[p] for p in rated.a],
                                                 [index[p] for p in rated.b], rated.ratings)
            photos = geo.GeoPhotos.from_paths(paths, source="rated")
            order = np.random.default_rng(self.cfg.data.seed).permutation(len(rated))
            cut = max(1, int(round(len(rated) * pc.eval_share)))
            in_eval = np.zeros(len(rated), bool)
            in_eval[order[:cut]] = True
            parts = {"train": ~in_eval, "eval": in_eval}
            self._pair_photos = photos
        splits, counts = {}, {}
        for name, mask in parts.items():
            chosen = rated_triplets.RatedTriplets(list(np.asarray(rated.query)[mask]),
                                                  list(np.asarray(rated.a)[mask]),
                                                  list(np.asarray(rated.b)[mask]), rated.ratings[mask])
            splits[name] = triplets_to_pairs(chosen)
            counts[name] = {"rated_triplets": int(mask.sum()), **chosen.counts(),
                            "pairs": int(splits[name].labels.size)}
        return splits, counts

    @property
    def photos(self) -> geo.GeoPhotos:
        """The photos that the pair indices refer to."""
        self._prepare()
        return self._pair_photos

    def split(self, name: str) -> PairSplit:
        self._prepare()
        return self._splits[name]

    def build_inputs(self, training, input_context=None, split=None):
        self._prepare()
        data = self.cfg.data
        which = "train" if training else "eval"
        if split not in (None, "", data.eval_split, "eval", "train"):
            raise ValueError(f"the pairs task has the splits 'train' and 'eval', got {split!r}")
        if split == "train":
            which = "train"
        pairs = self._splits[which]
        ds = geo.pair_dataset(self.photos, pairs.left, pairs.right, pairs.labels, data.image_size,
                              training=training, augment=training and self.cfg.pairs.augment,
                              mean_pixel=self._mean_pixel, seed=data.seed,
                              shuffle_buffer=data.shuffle_buffer)
        if not training:
            return ds.batch(data.batch_size).prefetch(tf.data.AUTOTUNE)
        batch = data.batch_size
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id) \
                if input_context.num_input_pipelines > 1 else ds
            batch = input_context.get_per_replica_batch_size(data.batch_size)
        return ds.repeat().batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    # -- model and loss -----------------------------------------------------------------------------

    def build_tower(self) -> keras.Model:
        pc, model, size = self.cfg.pairs, self.cfg.model, self.cfg.data.image_size
        if pc.architecture == "siamese":
            return siamese.build_tower(model.backbone, pc.embedding_dim, size, model.weights or None,
                                       hidden_units=_ints(pc.hidden_units), activation=pc.activation,
                                       dropout=pc.dropout if pc.hidden_units else 0.0,
                                       normalize=pc.normalize)
        return siamese.build_double_tower(
            pc.mode, size, invariant_backbone=pc.invariant_backbone,
            invariant_weights=pc.invariant_weights or None, variant_backbone=model.backbone,
            variant_weights=model.weights or None, variant_dim=pc.variant_dim,
            blend_units=_ints(pc.blend_units), embedding_dim=pc.embedding_dim, dropout=pc.dropout,
            residual=pc.residual, activation=pc.activation, normalize=pc.normalize)

    def build_model(self):
        tower = self.build_tower()
        if self.cfg.pairs.init_from:
            from finegrain_tf.train.run_dir import RunDir
            source = RunDir(self.cfg.pairs.init_from).load_model()
            copied = siamese.transfer_weights(source, tower)
            if not copied:
                raise ValueError(f"pairs.init_from={self.cfg.pairs.init_from!r}: its model shares no "
                                 f"sub-model ({list(siamese.SUBMODELS)}) with this one")
            logging.info("initialised %s from %s", copied, self.cfg.pairs.init_from)
        self._tower_name = tower.name
        return siamese.build_siamese(tower)

    def tower(self, model: keras.Model) -> keras.Model:
        return model.get_layer(self._tower_name)

    def build_losses(self):
        self._loss = ContrastiveLoss(self.cfg.pairs.margin, self.cfg.pairs.formulation, reduction=None)
        return self._loss

    def build_metrics(self):
        return {**super().build_metrics(), "accuracy": keras.metrics.BinaryAccuracy("accuracy")}

    # -- training -----------------------------------------------------------------------------------

    def _similar_score(self, pair: tf.Tensor) -> tf.Tensor:
        """1 where a pair is predicted similar: its distance below half the margin, in the units the
        loss compares with the margin (squared distance for "thesis", distance for "hadsell")."""
        sq = tf.reduce_sum(tf.square(pair[:, 0] - pair[:, 1]), axis=-1)
        d = sq if self.cfg.pairs.formulation == "thesis" else tf.sqrt(sq + 1e-12)
        return tf.cast(d < self.cfg.pairs.margin / 2.0, tf.float32)

    def train_step(self, inputs, model, optimizer, metrics):
        images, labels = inputs
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            pair = tf.cast(model(images, training=True), tf.float32)
            loss = self.average_loss(self._loss(labels, pair), model)
        self.apply_gradients(tape, loss, model, optimizer, metrics)
        metrics["loss"].update_state(loss * replicas)
        metrics["accuracy"].update_state(tf.cast(labels, tf.float32), self._similar_score(pair))

    def apply_gradients(self, tape, loss, model, optimizer, metrics):
        """The base update, with the gradient's global norm clipped at `pairs.clip_norm` (§4.1.3:
        "we clip the norms of our weight gradients at 1") by the optimizer itself."""
        if self.cfg.pairs.clip_norm > 0:
            optimizer.global_clipnorm = self.cfg.pairs.clip_norm  # read by Keras' apply()
        super().apply_gradients(tape, loss, model, optimizer, metrics)

    # -- evaluation and artifacts -------------------------------------------------------------------

    def evaluate(self, model, dataset):
        forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        pairs, labels = [], []
        for i, (images, batch_labels) in enumerate(dataset):
            if self.cfg.train.eval_batches and i >= self.cfg.train.eval_batches:
                break
            pairs.append(np.asarray(forward(images), np.float32))
            labels.append(np.asarray(batch_labels, np.int64))
        pair, y = np.concatenate(pairs), np.concatenate(labels)
        anchors = self._splits["eval"].left[:len(y)]
        loss = float(np.mean(self._loss(y, pair)))
        accuracy = float(np.mean(np.asarray(self._similar_score(tf.constant(pair))) == y))
        d = np.sqrt(((pair[:, 0].astype(np.float64) - pair[:, 1]) ** 2).sum(axis=1))
        violations, triplets = ranking_violations(anchors[y == 1], d[y == 1], anchors[y == 0], d[y == 0])
        report = {
                "loss": loss, "pair_accuracy": accuracy, "num_eval_pairs": int(len(y)),
                "median_positive_distance": float(np.median(d[y == 1])) if (y == 1).any() else None,
                "median_negative_distance": float(np.median(d[y == 0])) if (y == 0).any() else None,
                "mean_positive_distance": float(d[y == 1].mean()) if (y == 1).any() else None,
                "mean_negative_distance": float(d[y == 0].mean()) if (y == 0).any() else None,
                "ranking_violations_percent": 100.0 * violations / triplets if triplets else None,
        }
        if self._synthetic is not None:
            report["rated_triplet_accuracy"] = self._rated_triplet_accuracy(model)
        if self.cfg.pairs.mode == "blend" and self.cfg.pairs.kfold > 1:
            report["kfold"] = self.cross_validate_blend(model)
        report["pair_counts"] = self.data_info.counts
        return report

    def _rated_triplet_accuracy(self, model) -> float:
        """Accuracy on decisive rated triplets of held-out synthetic photos (ground-truth ratings)."""
        rated = rated_triplets.generate_rated_triplets(self._synthetic, 200, seed=self.cfg.data.seed + 1)
        held = eval_mask(self._photos, self.cfg.pairs.eval_share, self.cfg.data.seed)
        keep = held[np.asarray(rated.query)] & rated.decisive
        if not keep.any():
            return float("nan")
        q, a, b = (np.asarray(v)[keep] for v in (rated.query, rated.a, rated.b))
        index = np.unique(np.concatenate([q, a, b]))
        emb = photo_embeddings(self.tower(model), self._photos, self.cfg.data.image_size, index,
                           mean_pixel=self._mean_pixel)
        position = {int(i): k for k, i in enumerate(index)}
        take = lambda ids: emb[[position[int(i)] for i in ids]]  # noqa: E731
        closer = (rated.ratings[keep] == 3).astype(np.int64)
        return triplet_accuracy(take(q), take(a), take(b), closer)

    def cross_validate_blend(self, model) -> dict:
        """k-fold cross-validation of B (§4.1.3) on the labeled train pairs over frozen I and V
        features: a fresh B per fold, trained `pairs.kfold_epochs` epochs (batches of 32, the
        thesis's optimizer) with the contrastive loss; folds group pairs by their query so no query
        is on both sides. B is tiny, so the features are computed once and B trains eagerly."""
        from sklearn.model_selection import GroupKFold

        pc, tower = self.cfg.pairs, self.tower(model)
        pairs = self._splits["train"]
        index = np.unique(np.concatenate([pairs.left, pairs.right]))
        invariant, variant = tower.get_layer("invariant"), tower.get_layer("variant")
        batches = self.photos.subset(index).image_dataset().map(
            lambda image: geo.square_resize(image, self.cfg.data.image_size, self._mean_pixel)).batch(64)
        inv = np.concatenate([np.asarray(invariant(x, training=False)) for x in batches])
        var = np.concatenate([np.asarray(variant(x, training=False)) for x in batches])
        a, b = np.searchsorted(index, pairs.left), np.searchsorted(index, pairs.right)
        folds = GroupKFold(n_splits=min(pc.kfold, len(np.unique(pairs.left))))
        rng = np.random.default_rng(self.cfg.train.seed)
        losses, accuracies = [], []
        for fold, (train_rows, val_rows) in enumerate(folds.split(pairs.labels, groups=pairs.left)):
            keras.utils.set_random_seed(self.cfg.train.seed + fold)
            blend = siamese.build_blend_network(inv.shape[1], var.shape[1], _ints(pc.blend_units),
                                                pc.embedding_dim, pc.dropout, pc.residual, pc.activation)
            optimizer = siamese.thesis_optimizer()

            def embed_pairs(rows, training):
                out = [blend([inv[ends[rows]], var[ends[rows]]], training=training) for ends in (a, b)]
                if pc.normalize:
                    out = [tf.math.l2_normalize(o, axis=-1) for o in out]
                return tf.stack(out, axis=1)

            for _ in range(pc.kfold_epochs):
                order = rng.permutation(train_rows)
                for start in range(0, len(order), 32):
                    rows = order[start:start + 32]
                    with tf.GradientTape() as tape:
                        loss = tf.reduce_mean(self._loss(pairs.labels[rows], embed_pairs(rows, True)))
                    grads = tape.gradient(loss, blend.trainable_weights)
                    optimizer.apply_gradients(zip(grads, blend.trainable_weights))
            out = embed_pairs(val_rows, False)
            losses.append(float(np.mean(self._loss(pairs.labels[val_rows], out))))
            accuracies.append(float(np.mean(np.asarray(self._similar_score(out)) == pairs.labels[val_rows])))
        return {"folds": len(losses), "val_loss_mean": float(np.mean(losses)),
                "val_loss_std": float(np.std(losses)), "val_pair_accuracy_mean": float(np.mean(accuracies)),
                "val_pair_accuracy_std": float(np.std(accuracies))}

    def export_model(self, model) -> keras.Model:
        """A strategy-free copy of the tower (image -> "embedding"): the run's model.keras."""
        tower = self.tower(model)
        plain = self.build_tower()
        plain.set_weights(tower.get_weights())
        return plain

    def save_artifacts(self, run_dir, model, report):
        run_dir.save_model(self.export_model(model))
        run_dir.save_class_names([])  # an embedding model has no classes: export serves embed / lookup
        run_dir.save_eval_report(report)
        if self.cfg.train.plots:
            import os
            os.makedirs(run_dir.plot_path(""), exist_ok=True)
            pairs = self._splits["eval"]
            index = np.unique(np.concatenate([pairs.left, pairs.right]))
            emb = photo_embeddings(self.tower(model), self.photos, self.cfg.data.image_size, index,
                               mean_pixel=self._mean_pixel)
            plot_histograms(run_dir.plot_path("pair_distances.png"), emb, np.searchsorted(index, pairs.left),
                            np.searchsorted(index, pairs.right), pairs.labels,
                            title=f"held-out pair distances ({len(pairs.labels)} pairs)")
