"""TF Serving warmup: `assets.extra/tf_serving_warmup_requests`, a TFRecord of `PredictionLog`s that the
server replays before marking a version AVAILABLE (`--enable_model_warmup`), so the first user request
does not pay for graph optimisation. One realistic request per signature (TF Serving reads at most 1000).
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import tensorflow as tf

from finegrain_tf.serving.export_module import EXAMPLE_SIGNATURES, IMAGE_FEATURE, TENSOR_SIGNATURES
from finegrain_tf.serving.layout import WARMUP_FILE


def sample_images(image_size: int, count: int = 2, seed: int = 0) -> list[bytes]:
    """Deterministic photo-like inputs: alternating PNG / JPEG gradients with noise, near `image_size`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = image_size + 7 * (i + 1), image_size + 3 * i + 5
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255.0 / w, yy * 255.0 / h, np.full_like(xx, 40.0 * (i + 1), dtype=float)], -1)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        enc = tf.io.encode_png(img) if i % 2 == 0 else tf.io.encode_jpeg(img, quality=90)
        out.append(enc.numpy())
    return out


def image_example(encoded: bytes) -> tf.train.Example:
    """The tf.Example the `classify_examples` signature parses: feature `image/encoded`."""
    return tf.train.Example(features=tf.train.Features(feature={
        IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}))


def _warmup_log(model_name: str, signature: str, image_size: int):
    from tensorflow_serving.apis import (classification_pb2, input_pb2, model_pb2, predict_pb2,
                                         prediction_log_pb2)

    spec = model_pb2.ModelSpec(name=model_name, signature_name=signature)
    encoded = sample_images(image_size, 1)
    if signature in EXAMPLE_SIGNATURES:
        request = classification_pb2.ClassificationRequest(model_spec=spec, input=input_pb2.Input(
            example_list=input_pb2.ExampleList(examples=[image_example(encoded[0])])))
        return prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
    request = predict_pb2.PredictRequest(model_spec=spec)
    if signature in TENSOR_SIGNATURES:
        pixels = tf.io.decode_image(encoded[0], channels=3, expand_animations=False).numpy()[None]
        value = pixels.astype(np.uint8 if signature == "classify_tensor_uint8" else np.float32)
    else:
        value = np.array(encoded, dtype=object)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def write_warmup(export_dir: str, model_name: str, signatures: Iterable[str], image_size: int) -> str:
    """Writes one warmup request per signature (a ClassifyLog for the Classify signature)."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for name in signatures:
            writer.write(_warmup_log(model_name, name, image_size).SerializeToString())
    return path


def read_warmup_requests(export_dir: str) -> list:
    """The requests of `assets.extra/tf_serving_warmup_requests`: PredictRequest / ClassificationRequest
    protos in file order (empty if there is no file)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        kind = log.WhichOneof("log_type")
        if kind not in ("predict_log", "classify_log"):
            raise ValueError(f"{path}: only predict_log and classify_log warmup records are supported, got {kind!r}")
        requests.append(getattr(log, kind).request)
    return requests

