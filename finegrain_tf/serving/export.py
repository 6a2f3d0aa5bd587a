"""SavedModel export for TF Serving: classification, embedding and exact gallery lookup.

`export_model` writes `<base_path>/<model_name>/<version>/` (the TF Serving layout) with the signatures

  serving_default, classify   images: string [None] (encoded JPEG/PNG/GIF/BMP)
                              -> classes int32 [None, k], class_names string [None, k], scores float32 [None, k]
  classify_tensor             images: float32 [None, H, W, 3] in [0, 255] (any H, W) -> same outputs
  classify_tensor_uint8       images: uint8 [None, H, W, 3] -> same outputs
  embed                       images: string [None] -> embeddings float32 [None, D] (L2-normalised)
  lookup (with a gallery)     images: string [None] -> ids string [None, k], distances float32 [None, k]
                              (squared L2 between unit vectors = 2 - 2 cos, ascending; exact search)

Decoding and the eval preprocessing (`finegrain_tf.data.preprocessing.decode_image` and
`preprocess_eval`: resize the shorter side to `resize_size`, centre crop `image_size`) run inside the
graph, so clients send encoded bytes. `scores` are softmax probabilities of the top-k classes.

It is built with `keras.export.ExportArchive` tracking the model (a raw `tf.Module` holding a Keras
model is rejected by the TF1 session loader that `tensorflow_model_server` uses), written to a hidden
temporary directory and renamed into place, so a polling server never sees a half-written version.
`assets/` holds class_names.txt, gallery_ids.txt and export_info.json (input size, preprocessing, top-k,
TF version); `assets.extra/tf_serving_warmup_requests` holds one PredictionLog per signature.

Gallery size limit: the gallery is a [N, D] float32 variable searched by brute force (one matmul and a
top-k per query, O(N * D)). `MAX_GALLERY_SIZE` (100 000 items; ~800 MB at D = 2048) is the documented
ceiling; beyond it, export without a gallery, serve `embed`, and query an external ANN index
(ScaNN, FAISS) with the returned embeddings.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

MAX_GALLERY_SIZE = 100_000
BYTES_SIGNATURES = ("serving_default", "classify", "embed", "lookup")
TENSOR_SIGNATURES = ("classify_tensor", "classify_tensor_uint8")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


class ExportVerificationError(RuntimeError):
    """An export whose session-loader outputs differ from the in-memory model."""


# ------------------------------------------------------------------------------------------------
# Preprocessing (the training pipeline's eval path, reused inside the graph)


def _preprocessing():
    from finegrain_tf.data import preprocessing

    return preprocessing.decode_image, preprocessing.preprocess_eval


def _default_resize(image_size: int) -> int:
    from finegrain_tf.data.preprocessing import default_resize_size

    return default_resize_size(image_size)


def preprocess_bytes(encoded: tf.Tensor, image_size: int, resize_size: int = 0) -> tf.Tensor:
    """One encoded image (scalar string) -> float32 [S, S, 3] in [0, 255] (the eval preprocessing)."""
    decode_image, preprocess_eval = _preprocessing()
    image = preprocess_eval(decode_image(encoded), image_size, resize_size)
    image = tf.cast(image, tf.float32)
    image.set_shape([image_size, image_size, 3])
    return image


def preprocess_tensor(image: tf.Tensor, image_size: int, resize_size: int = 0) -> tf.Tensor:
    """One decoded image [H, W, 3] (uint8 or float in [0, 255]) -> float32 [S, S, 3]."""
    _, preprocess_eval = _preprocessing()
    image = tf.cast(preprocess_eval(image, image_size, resize_size), tf.float32)
    image.set_shape([image_size, image_size, 3])
    return image


def _map_images(fn, images, image_size):
    return tf.map_fn(fn, images, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
                     parallel_iterations=16)


# ------------------------------------------------------------------------------------------------
# Model helpers


def embedding_model(model):
    """A Keras model sharing `model`'s weights: images -> [logits, embedding] (layer "embedding")."""
    import keras

    try:
        layer = model.get_layer("embedding")
    except ValueError:
        raise ValueError(f"model {model.name!r} has no layer named 'embedding' (needed for embed/lookup); "
                         f"layers: {[l.name for l in model.layers][-6:]}") from None
    return keras.Model(model.inputs, [model.outputs[0], layer.output], name=f"{model.name}_with_embedding")


def _l2_normalize(x):
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1, epsilon=1e-12)


def _flatten_embedding(e):
    e = tf.cast(e, tf.float32)
    if e.shape.rank and e.shape.rank > 2:
        e = tf.reshape(e, [tf.shape(e)[0], -1])
    return e


def load_model_dir(model_dir: str):
    """Reads a training run's model dir -> (keras model, ExperimentConfig, class names)."""
    import keras

    import finegrain_tf.layers  # noqa: F401  (registers the project's Keras serializables)
    from finegrain_tf.train.config import load_params

    params = load_params(model_dir)
    model_path = os.path.join(model_dir, "model.keras")
    if not os.path.exists(model_path):
        raise ValueError(f"no model.keras in model dir {model_dir!r}")
    names_path = os.path.join(model_dir, "class_names.txt")
    if not os.path.exists(names_path):
        raise ValueError(f"no class_names.txt in model dir {model_dir!r}")
    with open(names_path) as f:
        class_names = [line.rstrip("\n") for line in f if line.strip()]
    model = keras.models.load_model(model_path, compile=False)
    return model, params, class_names


# ------------------------------------------------------------------------------------------------
# Gallery


def _list_folder_images(folder: str) -> list[tuple[str, str]]:
    """(id, path) for every image in a class-per-subfolder tree (or a flat folder); id = 'class/file'."""
    items = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(root, name)
                items.append((os.path.relpath(path, folder).replace(os.sep, "/"), path))
    return items


def compute_embeddings(model, images: Sequence[bytes], image_size: int, resize_size: int = 0,
                       batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings of encoded images, computed in memory (same preprocessing as serving)."""
    dual = embedding_model(model)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def embed_batch(encoded):
        pixels = _map_images(lambda b: preprocess_bytes(b, image_size, resize_size), encoded, image_size)
        _, emb = dual(pixels, training=False)
        return _l2_normalize(_flatten_embedding(emb))

    out = [embed_batch(tf.constant(list(images[start:start + batch_size]))).numpy()
           for start in range(0, len(images), batch_size)]
    dim = int(np.prod(dual.outputs[1].shape[1:]))
    return np.concatenate(out, 0) if out else np.zeros([0, dim], np.float32)


def build_gallery(model, source, image_size: int, resize_size: int = 0,
                  max_size: int = MAX_GALLERY_SIZE) -> tuple[np.ndarray, list[str]]:
    """Gallery (embeddings [N, D] unit rows, ids) from an image folder, a .npz, or an (embeddings, ids) pair.

    A .npz holds `embeddings` [N, D] and `ids` [N] (strings). Folder images that cannot be decoded are
    skipped and counted (one warning with the count).
    """
    if isinstance(source, (tuple, list)) and len(source) == 2 and not isinstance(source, str):
        embeddings, ids = np.asarray(source[0], np.float32), [str(i) for i in source[1]]
    elif isinstance(source, (str, os.PathLike)) and str(source).endswith(".npz"):
        if not os.path.exists(source):
            raise ValueError(f"gallery file not found: {str(source)!r}")
        with np.load(source, allow_pickle=False) as data:
            if "embeddings" not in data or "ids" not in data:
                raise ValueError(f"gallery {str(source)!r} must hold arrays 'embeddings' and 'ids', "
                                 f"found {sorted(data.keys())}")
            embeddings = np.asarray(data["embeddings"], np.float32)
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in data["ids"].tolist()]
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isdir(source):
            raise ValueError(f"gallery must be an image folder or a .npz file, got {str(source)!r}")
        items = _list_folder_images(str(source))
        if not items:
            raise ValueError(f"gallery folder {str(source)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        if len(items) > max_size:
            raise ValueError(f"gallery folder {str(source)!r} holds {len(items)} images, above the limit "
                             f"{max_size}; use an external ANN index (see export/README.md)")
        decode_image, _ = _preprocessing()
        good, skipped = [], 0
        for item_id, path in items:
            data = tf.io.read_file(path)
            try:
                decode_image(data)
            except (tf.errors.InvalidArgumentError, ValueError):
                skipped += 1
                continue
            good.append((item_id, data.numpy()))
        if skipped:
            logging.warning("gallery %s: skipped %d undecodable image(s) of %d", source, skipped, len(items))
        ids = [i for i, _ in good]
        embeddings = compute_embeddings(model, [b for _, b in good], image_size, resize_size)
    else:
        raise ValueError(f"unsupported gallery source {source!r}")
    if embeddings.ndim != 2:
        raise ValueError(f"gallery embeddings must be [N, D], got shape {embeddings.shape}")
    if len(ids) != embeddings.shape[0]:
        raise ValueError(f"gallery has {embeddings.shape[0]} embeddings but {len(ids)} ids")
    if embeddings.shape[0] == 0:
        raise ValueError("gallery is empty")
    if embeddings.shape[0] > max_size:
        raise ValueError(f"gallery of {embeddings.shape[0]} items is above the exact-search limit {max_size}; "
                         "serve `embed` and use an external ANN index (see export/README.md)")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32), ids


# ------------------------------------------------------------------------------------------------
# Warmup


def sample_images(image_size: int, count: int = 2, seed: int = 0) -> list[bytes]:
    """Deterministic realistic inputs: alternating PNG / JPEG photos-like gradients with noise."""
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


def _warmup_inputs(signature: str, image_size: int) -> dict:
    encoded = sample_images(image_size, 1)
    if signature in TENSOR_SIGNATURES:
        pixels = tf.io.decode_image(encoded[0], channels=3, expand_animations=False).numpy()
        dtype = np.uint8 if signature == "classify_tensor_uint8" else np.float32
        return {"images": pixels[None].astype(dtype)}
    return {"images": np.array(encoded, dtype=object)}


def write_warmup(export_dir: str, model_name: str, signatures: Iterable[str], image_size: int) -> str:
    """`assets.extra/tf_serving_warmup_requests`: one PredictionLog(predict_log) per signature."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for name in signatures:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name))
            for key, value in _warmup_inputs(name, image_size).items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


# ------------------------------------------------------------------------------------------------
# Export


def next_version(model_base: str) -> int:
    """1 + the largest integer version directory under `<base>/<model_name>` (1 if none)."""
    versions = [int(d) for d in os.listdir(model_base) if d.isdigit()] if os.path.isdir(model_base) else []
    return max(versions, default=0) + 1


def export_model(model, base_path: str, model_name: str = "finegrain", version: int | None = None, *,
                 class_names: Sequence[str], image_size: int, resize_size: int = 0, top_k: int = 5,
                 gallery=None, warmup: bool = True, max_gallery_size: int = MAX_GALLERY_SIZE) -> str:
    """Exports `model` (float32 [None, S, S, 3] in [0, 255] -> logits [None, C]) for TF Serving.

    Args:
        model: the Keras classifier; a layer named "embedding" enables `embed` and `lookup`.
        base_path: TF Serving `--model_base_path` parent; the export goes to `<base_path>/<model_name>/<version>`.
        version: integer version; None = next free one. An existing version is an error.
        class_names: one name per logit.
        image_size, resize_size: the eval preprocessing (`preprocess_eval`) of the training run.
        top_k: classes (and gallery neighbours) returned per image; clipped to C (and N).
        gallery: None, an image folder, a .npz (`embeddings`, `ids`) or an (embeddings, ids) pair;
            adds the `lookup` signature (exact search; at most `max_gallery_size` items).
        warmup: write `assets.extra/tf_serving_warmup_requests`.

    Returns:
        The export directory.
    """
    import keras

    num_classes = int(model.outputs[0].shape[-1])
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {num_classes} outputs")
    in_shape = tuple(model.inputs[0].shape[1:])
    if in_shape[:2] != (image_size, image_size) and in_shape[:2] != (None, None):
        raise ValueError(f"image_size={image_size} but the model expects inputs of shape {in_shape}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not model_name or "/" in model_name or os.sep in model_name or model_name.startswith("."):
        raise ValueError(f"model_name must be a plain directory name, got {model_name!r}")
    if version is not None and (int(version) < 1):
        raise ValueError(f"version must be a positive integer, got {version!r}")
    model_base = os.path.join(base_path, model_name)
    version = int(version) if version is not None else next_version(model_base)
    export_dir = os.path.join(model_base, str(version))
    if os.path.exists(export_dir):
        raise ValueError(f"export directory {export_dir!r} already exists; pick another --version")

    has_embedding = any(l.name == "embedding" for l in model.layers)
    dual = embedding_model(model) if has_embedding else None
    k_cls = min(int(top_k), num_classes)
    names_const = tf.constant([str(n) for n in class_names])

    def _classify_pixels(pixels):
        logits = tf.cast(model(pixels, training=False), tf.float32)
        scores, classes = tf.math.top_k(tf.nn.softmax(logits, axis=-1), k=k_cls)
        return {"classes": classes, "class_names": tf.gather(names_const, classes), "scores": scores}

    def _decode(images):
        return _map_images(lambda b: preprocess_bytes(b, image_size, resize_size), images, image_size)

    def classify(images):
        return _classify_pixels(_decode(images))

    def classify_tensor(images):
        return _classify_pixels(_map_images(lambda im: preprocess_tensor(im, image_size, resize_size),
                                            images, image_size))

    def embed(images):
        _, emb = dual(_decode(images), training=False)
        return {"embeddings": _l2_normalize(_flatten_embedding(emb))}

    bytes_spec = [tf.TensorSpec([None], tf.string, name="images")]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", classify, bytes_spec)
    archive.add_endpoint("classify", classify, bytes_spec)
    archive.add_endpoint("classify_tensor", classify_tensor,
                         [tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    archive.add_endpoint("classify_tensor_uint8", classify_tensor,
                         [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    signatures = ["serving_default", "classify", "classify_tensor", "classify_tensor_uint8"]
    gallery_ids: list[str] = []
    embedding_dim = 0
    if dual is not None:
        embedding_dim = int(np.prod(dual.outputs[1].shape[1:]))
        archive.add_endpoint("embed", embed, bytes_spec)
        signatures.append("embed")
    if gallery is not None:
        if dual is None:
            raise ValueError("a gallery needs a model with a layer named 'embedding'")
        gallery_emb, gallery_ids = build_gallery(model, gallery, image_size, resize_size, max_gallery_size)
        if gallery_emb.shape[1] != embedding_dim:
            raise ValueError(f"gallery embeddings have dimension {gallery_emb.shape[1]}, the model's embedding "
                             f"has {embedding_dim}")
        gallery_var = tf.Variable(gallery_emb, trainable=False, name="gallery_embeddings")
        ids_var = tf.Variable(np.array(gallery_ids, dtype=object), trainable=False, dtype=tf.string,
                              name="gallery_ids")
        k_gal = min(int(top_k), len(gallery_ids))

        def lookup(images):
            query = embed(images)["embeddings"]
            sim = tf.matmul(query, gallery_var, transpose_b=True)
            top_sim, idx = tf.math.top_k(sim, k=k_gal)
            return {"ids": tf.gather(ids_var, idx), "distances": tf.maximum(2.0 - 2.0 * top_sim, 0.0)}

        archive.add_endpoint("lookup", lookup, bytes_spec)
        archive._tf_trackable.gallery_embeddings = gallery_var
        archive._tf_trackable.gallery_ids = ids_var
        signatures.append("lookup")

    os.makedirs(model_base, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_base)
    try:
        staging = tempfile.mkdtemp(prefix="assets-", dir=tmp_dir)
        info = {
            "model_name": model_name, "version": version, "signatures": signatures,
            "image_size": image_size, "resize_size": resize_size or _default_resize(image_size),
            "input": "encoded JPEG/PNG/GIF/BMP bytes (classify_tensor: [H, W, 3] pixels in [0, 255])",
            "preprocessing": "finegrain_tf.data.preprocessing.decode_image + preprocess_eval (resize the "
            "shorter side to resize_size, centre crop image_size); float32 in [0, 255]",
            "top_k": int(top_k), "num_classes": num_classes, "embedding_dim": embedding_dim,
            "gallery_size": len(gallery_ids), "distance": "squared L2 between unit vectors (2 - 2 cos)",
            "tensorflow_version": tf.__version__, "keras_version": keras.__version__,
        }
        files = {"class_names.txt": "\n".join(map(str, class_names)) + "\n",
                 "export_info.json": json.dumps(info, indent=2) + "\n"}
        if gallery_ids:
            files["gallery_ids.txt"] = "\n".join(gallery_ids) + "\n"
        for name, text in files.items():
            with open(os.path.join(staging, name), "w") as f:
                f.write(text)
            setattr(archive._tf_trackable, "asset_" + name.replace(".", "_"),
                    tf.saved_model.Asset(os.path.join(staging, name)))
        out_dir = os.path.join(tmp_dir, "model")
        archive.write_out(out_dir, verbose=False)
        if warmup:
            write_warmup(out_dir, model_name, signatures, image_size)
        os.rename(out_dir, export_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    logging.info("exported %s with signatures %s", export_dir, signatures)
    return export_dir


def export_from_model_dir(model_dir: str, base_path: str, model_name: str | None = None,
                          version: int | None = None, gallery=None, top_k: int | None = None) -> str:
    """Exports a training run's model dir (params.yaml, model.keras, class_names.txt); returns the export dir."""
    model, params, class_names = load_model_dir(model_dir)
    return export_model(model, base_path, model_name or params.export.model_name, version,
                        class_names=class_names, image_size=params.data.image_size,
                        resize_size=params.data.resize_size,
                        top_k=top_k if top_k is not None else params.export.top_k, gallery=gallery)


# ------------------------------------------------------------------------------------------------
# Verification through the session loader


def read_export_info(export_dir: str) -> dict:
    with open(os.path.join(export_dir, "assets", "export_info.json")) as f:
        return json.load(f)


def read_gallery(export_dir: str) -> tuple[np.ndarray, list[str]]:
    """The gallery baked into an export (embeddings [N, D], ids), read from its variables."""
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    keys = reader.get_variable_to_shape_map()
    emb_key = next((k for k in keys if k.startswith("gallery_embeddings/")), None)
    ids_key = next((k for k in keys if k.startswith("gallery_ids/")), None)
    if emb_key is None or ids_key is None:
        raise ValueError(f"export {export_dir!r} has no gallery")
    ids = [i.decode() for i in reader.get_tensor(ids_key).tolist()]
    return reader.get_tensor(emb_key), ids


def reference_outputs(model, signature: str, images, image_size: int, resize_size: int, top_k: int,
                      class_names: Sequence[str], gallery=None, dual=None) -> dict:
    """What a signature should return, computed eagerly (float64 top-k / distances) from the Keras model.

    `images`: encoded bytes, or decoded [H, W, 3] arrays for the classify_tensor signatures. `gallery`
    (embeddings, ids) is needed for "lookup"; `dual` is an optional cached `embedding_model(model)`.
    """
    if signature in TENSOR_SIGNATURES:
        pixels = tf.stack([preprocess_tensor(tf.constant(im), image_size, resize_size) for im in images])
    else:
        pixels = tf.stack([preprocess_bytes(tf.constant(b), image_size, resize_size) for b in images])
    if signature in ("embed", "lookup"):
        _, emb = (dual or embedding_model(model))(pixels, training=False)
        emb = _l2_normalize(_flatten_embedding(emb)).numpy().astype(np.float64)
        if signature == "embed":
            return {"embeddings": emb}
        g_emb, g_ids = gallery
        d = 2.0 - 2.0 * emb @ np.asarray(g_emb, np.float64).T
        order = np.argsort(d, axis=1, kind="stable")[:, :min(top_k, len(g_ids))]
        return {"ids": np.array([[g_ids[j].encode() for j in row] for row in order], dtype=object),
                "distances": np.maximum(np.take_along_axis(d, order, 1), 0.0)}
    logits = tf.cast(model(pixels, training=False), tf.float64).numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    k = min(top_k, p.shape[1])
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return {"classes": order, "scores": np.take_along_axis(p, order, 1),
            "class_names": np.array([[str(class_names[j]).encode() for j in row] for row in order],
                                    dtype=object)}


def _compare(name: str, got: dict, want: dict, atol: float) -> float:
    worst = 0.0
    for key, ref in want.items():
        if key not in got:
            raise ExportVerificationError(f"{name}: output {key!r} missing (got {sorted(got)})")
        value = got[key]
        if value.shape != ref.shape:
            raise ExportVerificationError(f"{name}/{key}: shape {value.shape} != in-memory {ref.shape}")
        if ref.dtype == object or key == "classes":
            continue  # compared below via scores / distances (ties may reorder equal-score entries)
        diff = float(np.max(np.abs(value.astype(np.float64) - ref))) if ref.size else 0.0
        worst = max(worst, diff)
        if diff > atol:
            raise ExportVerificationError(f"{name}/{key}: max |served - in-memory| = {diff:.3g} > {atol}")
    for key in ("classes", "class_names", "ids"):
        if key in want:
            mismatch = np.asarray(got[key]) != np.asarray(want[key])
            # only a tie (equal scores / distances within atol) may swap entries
            score_key = "scores" if key != "ids" else "distances"
            if mismatch.any():
                gaps = np.abs(np.diff(want[score_key], axis=1)) if want[score_key].shape[1] > 1 else None
                if gaps is None or np.min(gaps) > atol:
                    raise ExportVerificationError(f"{name}/{key}: served {got[key][mismatch][:3]} != "
                                                  f"in-memory {want[key][mismatch][:3]}")
    return worst


def verify_export(export_dir: str, model, images: Sequence[bytes] | None = None, atol: float = 1e-4) -> dict:
    """Loads `export_dir` through the TF1 session loader (TF Serving's path) and checks every signature.

    `model` is the Keras model or a training run's model dir. Each signature's outputs on `images`
    (default: deterministic sample JPEG/PNG images of the export's input size) must equal the
    in-memory model's within `atol` (float64 reference; class / id order may differ only on ties).
    Also checks that the graph uses stock ops only (no Python callbacks, no custom kernels) and
    replays the warmup file. Returns {signature: max abs difference}; raises ExportVerificationError
    on a mismatch.
    """
    from finegrain_tf.serving.servable import SessionServable, unservable_ops

    if isinstance(model, (str, os.PathLike)):
        model, _, _ = load_model_dir(str(model))
    info = read_export_info(export_dir)
    image_size, resize_size, top_k = info["image_size"], info["resize_size"], info["top_k"]
    with open(os.path.join(export_dir, "assets", "class_names.txt")) as f:
        class_names = [line.rstrip("\n") for line in f if line.strip()]
    images = list(images) if images is not None else sample_images(image_size, 3)
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
        tensors = [tf.io.decode_image(b, channels=3, expand_animations=False).numpy() for b in images]
        same_size = len({t.shape for t in tensors}) == 1
        report, cache = {}, {}
        dual = embedding_model(model) if "embed" in info["signatures"] else None
        for name in info["signatures"]:
            kind = "classify" if name == "serving_default" else name
            if name in TENSOR_SIGNATURES:
                if not same_size:
                    tensors = [t[:image_size, :image_size] for t in tensors]
                dtype = np.uint8 if name == "classify_tensor_uint8" else np.float32
                batch = np.stack(tensors).astype(dtype)
                got = servable.run(name, {"images": batch})
                if kind not in cache:
                    cache[kind] = reference_outputs(model, name, list(batch), image_size, resize_size, top_k,
                                                    class_names)
            else:
                got = servable.run(name, {"images": np.array(images, dtype=object)})
                if kind not in cache:
                    cache[kind] = reference_outputs(model, kind, images, image_size, resize_size, top_k,
                                                    class_names, gallery, dual)
            report[name] = _compare(name, got, cache[kind], atol)
        replayed = servable.warmup()
        if replayed and replayed != len(info["signatures"]):
            raise ExportVerificationError(f"warmup file holds {replayed} requests for "
                                          f"{len(info['signatures'])} signatures")
    finally:
        servable.close()
    logging.info("verified %s through the session loader: %s", export_dir, report)
    return report
