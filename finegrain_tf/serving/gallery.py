"""Gallery I/O for the `lookup` signature: image folders, `.npz` files, and the model fingerprint.

A gallery is `embeddings [N, D]` (unit rows once loaded) + `ids [N]` (strings). Sources:
- a class-per-subfolder image folder, listed and verified by `finegrain_tf.data.loaders.scan_image_folder`
  (corrupt images are skipped and counted there); ids are `class/file`;
- a `.npz` with arrays `embeddings` and `ids`, and, when the project wrote it (`save_gallery`), a
  `model_fingerprint`: embeddings of different models are never mixed, so loading refuses a gallery
  whose fingerprint differs from the exporting model's (a `.npz` without one is accepted with a warning);
- an `(embeddings, ids)` pair.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

FINGERPRINT_KEY = "model_fingerprint"


def model_fingerprint(model) -> str:
    """sha256 over the shapes and values of the model's weights, in their order ("sha256:<hex>")."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight))
        digest.update(str((value.dtype.str, value.shape)).encode())
        digest.update(value.tobytes())
    return "sha256:" + digest.hexdigest()


def save_gallery(path: str, embeddings, ids: Sequence[str], model_fingerprint: str | None) -> str:
    """Writes a gallery `.npz` (embeddings float32 [N, D], ids [N], the embedding model's fingerprint)."""
    embeddings = np.asarray(embeddings, np.float32)
    ids = np.array([str(i) for i in ids])
    if embeddings.ndim != 2 or len(ids) != len(embeddings):
        raise ValueError(f"gallery must be embeddings [N, D] and ids [N], got {embeddings.shape} and {ids.shape}")
    arrays = {"embeddings": embeddings, "ids": ids}
    if model_fingerprint:
        arrays[FINGERPRINT_KEY] = np.array(model_fingerprint)
    np.savez(path, **arrays)
    return path


def _read_npz(path: str, expected_fingerprint: str | None) -> tuple[np.ndarray, list[str]]:
    if not os.path.exists(path):
        raise ValueError(f"gallery file not found: {path!r}")
    with np.load(path, allow_pickle=False) as data:
        if "embeddings" not in data or "ids" not in data:
            raise ValueError(f"gallery {path!r} must hold arrays 'embeddings' and 'ids', found {sorted(data.keys())}")
        embeddings = np.asarray(data["embeddings"], np.float32)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in data["ids"].reshape(-1).tolist()]
        recorded = str(data[FINGERPRINT_KEY]) if FINGERPRINT_KEY in data else None
    if recorded is None:
        logging.warning("gallery %s records no model fingerprint: cannot check that its embeddings come from "
                        "the exported model (write galleries with finegrain_tf.serving.gallery.save_gallery)",
                        path)
    elif expected_fingerprint and recorded != expected_fingerprint:
        raise ValueError(f"gallery {path!r} was embedded by another model (fingerprint {recorded[:19]}...) than "
                         f"the one being exported ({expected_fingerprint[:19]}...); re-embed the gallery "
                         "with this model")
    return embeddings, ids


def _read_folder(folder: str, embed: Callable, batch_size: int) -> tuple[np.ndarray, list[str]]:
    from finegrain_tf.data.loaders import scan_image_folder

    info = scan_image_folder(folder)  # skips and counts corrupt images
    ids = [os.path.relpath(path, folder).replace(os.sep, "/") for path in info.files]
    chunks = []
    for start in range(0, len(info.files), batch_size):
        encoded = [tf.io.read_file(path) for path in info.files[start:start + batch_size]]
        chunks.append(np.asarray(embed(tf.stack(encoded)), np.float32))
    return np.concatenate(chunks, 0), ids


def load_gallery(source, embed: Callable | None = None, model_fingerprint: str | None = None,
                 batch_size: int = 64) -> tuple[np.ndarray, list[str]]:
    """Gallery (embeddings [N, D] unit rows float32, ids) from a folder, a `.npz` or a pair.

    Args:
      source: image folder, `.npz` path or `(embeddings, ids)`.
      embed: encoded images (string [B]) -> embeddings [B, D]; needed for a folder.
      model_fingerprint: the exporting model's; a `.npz` recording another one is refused.
    """
    if isinstance(source, (tuple, list)) and len(source) == 2:
        embeddings, ids = np.asarray(source[0], np.float32), [str(i) for i in source[1]]
    elif isinstance(source, (str, os.PathLike)) and str(source).endswith(".npz"):
        embeddings, ids = _read_npz(str(source), model_fingerprint)
    elif isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        if embed is None:
            raise ValueError("a gallery image folder needs a model with a layer named 'embedding'")
        embeddings, ids = _read_folder(str(source), embed, batch_size)
    else:
        raise ValueError(f"gallery must be an image folder, a .npz file or an (embeddings, ids) pair, "
                         f"got {source!r}")
    if embeddings.ndim != 2:
        raise ValueError(f"gallery embeddings must be [N, D], got shape {embeddings.shape}")
    if len(ids) != embeddings.shape[0]:
        raise ValueError(f"gallery has {embeddings.shape[0]} embeddings but {len(ids)} ids")
    if embeddings.shape[0] == 0:
        raise ValueError("gallery is empty")
    if not np.all(np.isfinite(embeddings)):
        bad = int(np.argwhere(~np.isfinite(embeddings))[0, 0])
        raise ValueError(f"gallery embeddings must be finite; row {bad} (id {ids[bad]!r}) is not")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32), ids
