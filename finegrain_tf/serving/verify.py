"""Export verification through the TF1 session loader (the path TF Serving uses).

`verify_export` loads an export with `SessionServable`, checks that its graph holds only ops stock TF
Serving can run, runs every signature on sample images and compares the outputs with a float64
reference computed eagerly from the Keras model (`reference_outputs`), then replays the warmup file.
Non-finite weights or outputs fail verification.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.serving import layout
from finegrain_tf.serving.export_module import (EXAMPLE_SIGNATURES, TENSOR_SIGNATURES, ImagePreprocessing,
                                                embedding_model, normalized_embedding, preprocessing_of)
from finegrain_tf.serving.servable import SessionServable, unservable_ops
from finegrain_tf.serving.warmup import image_example, sample_images


class ExportVerificationError(RuntimeError):
    """An export whose session-loader outputs differ from the in-memory model (or are not finite)."""


def read_gallery(export_dir: str) -> tuple[np.ndarray, list[str]]:
    """The gallery baked into an export (embeddings [N, D] in gallery order, ids), from its variables.

    Relies on the `finegrain_tf.retrieval` index layout: `ids` in gallery order, `embeddings` rows in
    gallery order or, when the index stores `positions`, in that order (IVF sorts items by list).
    """
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    keys = reader.get_variable_to_shape_map()

    def find(name):
        return next((k for k in keys if k.startswith(f"index/{name}/")), None)

    emb_key, ids_key, pos_key = find("embeddings"), find("ids"), find("positions")
    if emb_key is None or ids_key is None:
        raise ValueError(f"export {export_dir!r} has no gallery index")
    ids = [i.decode() for i in reader.get_tensor(ids_key).tolist()]
    stored = reader.get_tensor(emb_key)
    if pos_key is None:
        return stored, ids
    embeddings = np.empty_like(stored)
    embeddings[reader.get_tensor(pos_key)] = stored
    return embeddings, ids


def reference_outputs(model, signature: str, images, preprocess: ImagePreprocessing, top_k: int,
                      class_names: Sequence[str], gallery=None, dual=None) -> dict:
    """What a signature should return, computed eagerly (float64 softmax / distances) from the Keras model.

    `images`: encoded bytes, or decoded [H, W, 3] arrays for the classify_tensor signatures. `gallery`
    (embeddings, ids) is needed for "lookup" (exact nearest neighbours); `dual` is an optional cached
    `embedding_model(model)`.
    """
    to_pixels = preprocess.from_pixels if signature in TENSOR_SIGNATURES else preprocess.from_bytes
    pixels = tf.stack([to_pixels(tf.constant(image)) for image in images])
    if signature in ("embed", "lookup"):
        _, emb = (dual or embedding_model(model))(pixels, training=False)
        emb = normalized_embedding(emb).numpy().astype(np.float64)
        if signature == "embed":
            return {"embeddings": emb}
        return reference_lookup(emb, gallery, top_k)
    logits = tf.cast(model(pixels, training=False), tf.float64).numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :min(top_k, p.shape[1])]
    names = np.array([[str(class_names[j]).encode() for j in row] for row in order], dtype=object)
    if signature in EXAMPLE_SIGNATURES:
        return {"classes": names, "scores": np.take_along_axis(p, order, 1)}
    return {"classes": order, "scores": np.take_along_axis(p, order, 1), "class_names": names}


def reference_lookup(queries: np.ndarray, gallery, top_k: int) -> dict:
    """Exact nearest neighbours (float64 squared L2, ties to the smaller gallery position)."""
    g_emb, g_ids = gallery
    q, g = np.asarray(queries, np.float64), np.asarray(g_emb, np.float64)
    d = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :min(top_k, len(g_ids))]
    return {"ids": np.array([[g_ids[j].encode() for j in row] for row in order], dtype=object),
            "distances": np.take_along_axis(d, order, 1)}


def _compare(name: str, got: dict, want: dict, atol: float) -> float:
    worst = 0.0
    for key, ref in want.items():
        if key not in got:
            raise ExportVerificationError(f"{name}: output {key!r} missing (got {sorted(got)})")
        value = np.asarray(got[key])
        if value.shape != ref.shape:
            raise ExportVerificationError(f"{name}/{key}: shape {value.shape} != in-memory {ref.shape}")
        if ref.dtype == object or key == "classes":
            continue  # compared below via scores / distances (ties may reorder equal-score entries)
        if not np.all(np.isfinite(value)):
            raise ExportVerificationError(f"{name}/{key}: served outputs are not finite ({value.ravel()[:4]})")
        diff = float(np.max(np.abs(value.astype(np.float64) - ref))) if ref.size else 0.0
        worst = max(worst, diff)
        if diff > atol:
            raise ExportVerificationError(f"{name}/{key}: max |served - in-memory| = {diff:.3g} > {atol}")
    for key in ("classes", "class_names", "ids"):
        if key in want:
            mismatch = np.asarray(got[key]) != np.asarray(want[key])
            score_key = "distances" if key == "ids" else "scores"
            if mismatch.any():  # only a tie (equal scores / distances within atol) may swap entries
                gaps = np.abs(np.diff(want[score_key], axis=1)) if want[score_key].shape[1] > 1 else None
                if gaps is None or np.min(gaps) > atol:
                    raise ExportVerificationError(f"{name}/{key}: served {np.asarray(got[key])[mismatch][:3]} "
                                                  f"!= in-memory {np.asarray(want[key])[mismatch][:3]}")
    return worst


def check_finite_weights(model):
    """Raises ExportVerificationError naming the first weight holding NaN or Inf."""
    for weight in model.weights:
        if not np.all(np.isfinite(np.asarray(weight))):
            raise ExportVerificationError(f"weight {weight.path!r} of model {model.name!r} holds NaN or Inf; "
                                          "the model cannot be exported")


def _signature_inputs(name: str, images: list, tensors: list, info: dict) -> tuple[dict, list]:
    """(request inputs, the images the reference sees) for one signature."""
    if name in TENSOR_SIGNATURES:
        size = info["image_size"]
        if len({t.shape for t in tensors}) != 1:  # one batch needs one size
            tensors = [t[:size, :size] for t in tensors]
        batch = np.stack(tensors).astype(np.uint8 if name == "classify_tensor_uint8" else np.float32)
        return {"images": batch}, list(batch)
    if name in EXAMPLE_SIGNATURES:
        examples = np.array([image_example(b).SerializeToString() for b in images], dtype=object)
        return {"inputs": examples}, images
    inputs = {"images": np.array(images, dtype=object)}
    if name == "lookup":  # search every list: an IVF index then answers exactly
        inputs["nprobe"] = np.int32(info.get("index", {}).get("nlist", 1))
    return inputs, images


def verify_export(export_dir: str, model, images: Sequence[bytes] | None = None, atol: float = 1e-4) -> dict:
    """Loads `export_dir` through the TF1 session loader (TF Serving's path) and checks every signature.

    `model` is the Keras model. Each signature's outputs on `images` (default: deterministic sample
    JPEG/PNG images of the export's input size) must equal the in-memory model's within `atol`
    (float64 reference; class / id order may differ only on ties). Also checks that the graph uses
    stock ops only (no Python callbacks, no custom kernels) and replays the warmup file. Returns
    {signature: max abs difference}; raises ExportVerificationError on a mismatch.
    """
    check_finite_weights(model)
    info = layout.read_export_info(export_dir)
    preprocess = preprocessing_of(info)
    class_names = layout.read_class_names(export_dir)
    images = list(images) if images is not None else sample_images(info["image_size"], 3)
    tensors = [tf.io.decode_image(b, channels=3, expand_animations=False).numpy() for b in images]
    servable = SessionServable(export_dir)
    try:
        bad_ops = unservable_ops(servable.meta_graph)
        if bad_ops:
            raise ExportVerificationError(f"{export_dir}: ops {bad_ops} cannot run in stock TF Serving "
                                          "(Python callbacks or custom kernels)")
        missing = sorted(set(info["signatures"]) - set(servable.signatures))
        if missing:
            raise ExportVerificationError(f"{export_dir}: signatures {missing} missing after loading")
        gallery = read_gallery(export_dir) if "lookup" in info["signatures"] else None
        dual = embedding_model(model) if "embed" in info["signatures"] else None
        report = {}
        for name in info["signatures"]:
            inputs, seen = _signature_inputs(name, images, tensors, info)
            got = servable.run(name, inputs)
            kind = ("classify" if "classify" in info["signatures"] else "embed") \
                if name == "serving_default" else name
            want = reference_outputs(model, kind, seen, preprocess, info["top_k"], class_names, gallery, dual)
            report[name] = _compare(name, got, want, atol)
        replayed = servable.warmup()
        if replayed and replayed != len(info["signatures"]):
            raise ExportVerificationError(f"warmup file holds {replayed} requests for "
                                          f"{len(info['signatures'])} signatures")
    finally:
        servable.close()
    logging.info("verified %s through the session loader: %s", export_dir,
                 {k: float(f"{v:.3g}") for k, v in report.items()})
    return report


def verify_gallery_update(export_dir: str, source_dir: str, images: Sequence[bytes] | None = None,
                          atol: float = 1e-5) -> dict:
    """Checks a gallery update (`export_gallery_update`) through the session loader: every signature
    but `lookup` answers as the source version does (same model), and `lookup` (all lists probed)
    returns the exact nearest neighbours of the served embeddings among the new gallery."""
    info = layout.read_export_info(export_dir)
    images = list(images) if images is not None else sample_images(info["image_size"], 3)
    tensors = [tf.io.decode_image(b, channels=3, expand_animations=False).numpy() for b in images]
    new, old = SessionServable(export_dir), SessionServable(source_dir)
    report = {}
    try:
        for name in info["signatures"]:
            inputs, _ = _signature_inputs(name, images, tensors, info)
            got = new.run(name, inputs)
            if name == "lookup":
                emb = new.run("embed", {"images": inputs["images"]})["embeddings"]
                want = reference_lookup(emb, read_gallery(export_dir), info["top_k"])
            else:
                want = {k: (v if v.dtype == object or k == "classes" else v.astype(np.float64))
                        for k, v in old.run(name, inputs).items()}
            report[name] = _compare(name, got, want, atol)
        new.warmup()
    finally:
        new.close()
        old.close()
    logging.info("verified gallery update %s against %s: %s", export_dir, source_dir, report)
    return report
