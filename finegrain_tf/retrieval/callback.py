"""Keras callback: retrieval metrics of a validation set every N epochs (or steps), logged and returned
in the epoch logs so History, TensorBoard, EarlyStopping and ModelCheckpoint can use them."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from absl import logging

from finegrain_tf.metrics.retrieval import retrieval_report
from finegrain_tf.utils import checks
from finegrain_tf.utils.labels import to_int_labels


class RetrievalEvaluation(keras.callbacks.Callback):
    """Leave-one-out Recall@k, precision@k, R-precision, MAP@R (and NMI / AMI) on validation data.

    Args:
      validation_data: (images, labels) arrays, or a tf.data.Dataset of (images, labels) batches.
      every_n_epochs: evaluate at the end of every n-th epoch (0 = never at epoch ends).
      every_n_steps: also evaluate every n training steps (None = no); results go to the log and to
        `self.history`, not to the epoch logs.
      embedding_layer: name of the layer whose output is the embedding (default "embedding"); when the
        model has no such layer, its (last) output is used. `embedding_model` overrides both.
      ks, distance, average, clustering: passed to `finegrain_tf.metrics.retrieval_report`.
      prefix: prepended to each metric name in the logs ("val_recall@1", "val_map_at_r", ...).

    `self.history` is a list of (epoch or None, global step, report dict).
    """

    def __init__(self, validation_data, every_n_epochs: int = 1, every_n_steps: int | None = None,
                 embedding_layer: str = "embedding", embedding_model=None, ks: Sequence[int] = (1, 2, 4, 8),
                 distance: str = "euclidean", average: str = "query", clustering: bool = True,
                 batch_size: int = 64, prefix: str = "val_"):
        super().__init__()
        self.every_n_epochs = checks.non_negative_int(every_n_epochs, "every_n_epochs")
        self.every_n_steps = None if every_n_steps is None else checks.positive_int(every_n_steps, "every_n_steps")
        self.embedding_layer = embedding_layer
        self.embedding_model = embedding_model
        self.ks, self.distance, self.average, self.clustering = tuple(ks), distance, average, clustering
        self.batch_size = checks.positive_int(batch_size, "batch_size")
        self.prefix = prefix
        self.images, self.labels = self._split(validation_data)
        self.history: list[tuple] = []
        self._step = 0
        self._extractor = None

    @staticmethod
    def _split(data):
        if isinstance(data, (tuple, list)) and len(data) == 2:
            images, labels = data
        elif hasattr(data, "as_numpy_iterator"):
            xs, ys = [], []
            for element in data.as_numpy_iterator():
                if not isinstance(element, tuple) or len(element) < 2:
                    raise ValueError("validation dataset elements must be (images, labels) batches")
                xs.append(element[0])
                ys.append(element[1])
            if not xs:
                raise ValueError("validation dataset is empty")
            images, labels = np.concatenate(xs), np.concatenate(ys)
        else:
            raise ValueError(f"validation_data must be (images, labels) or a tf.data.Dataset, got "
                             f"{type(data).__name__}")
        labels = to_int_labels(labels, name="validation labels")
        if len(labels) != len(images):
            raise ValueError(f"validation data has {len(images)} images but {len(labels)} labels")
        if len(labels) < 2:
            raise ValueError(f"validation data needs at least 2 items, got {len(labels)}")
        return images, labels

    def _embedding_model(self):
        if self.embedding_model is not None:
            return self.embedding_model
        if self._extractor is None:
            names = [layer.name for layer in self.model.layers]
            output = (self.model.get_layer(self.embedding_layer).output if self.embedding_layer in names
                      else self.model.outputs[-1])
            self._extractor = keras.Model(self.model.inputs, output)
        return self._extractor

    def evaluate(self) -> dict:
        """The report on the validation data with the current weights."""
        embeddings = self._embedding_model().predict(self.images, batch_size=self.batch_size, verbose=0)
        if isinstance(embeddings, (list, tuple)):
            embeddings = embeddings[-1]
        embeddings = np.asarray(embeddings, np.float64).reshape(len(self.labels), -1)
        return retrieval_report(embeddings, self.labels, self.ks, self.distance, self.average, self.clustering)

    def _record(self, epoch, report):
        self.history.append((epoch, self._step, report))
        logging.info("retrieval (epoch %s, step %d): %s", epoch, self._step,
                     ", ".join(f"{k}={v:.4f}" for k, v in report.items()))

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_n_steps and self._step % self.every_n_steps == 0:
            self._record(None, self.evaluate())

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            report = self.evaluate()
            self._record(epoch, report)
            if logs is not None:
                logs.update({self.prefix + name: value for name, value in report.items()})
