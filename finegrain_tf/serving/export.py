"""SavedModel export for TF Serving: a training run (or a previous export) -> a new version directory.

    export_from_model_dir(run_dir, base_path, gallery=...)        model.keras of a training run
    export_model(model, base_path, ..., class_names, image_size)  an in-memory Keras model
    export_gallery_update(version_dir, gallery)                    same model, new gallery index

write `<base_path>/<model_name>/<version>/` with the signatures of `ExportModule` (export_module.py),
`assets/` (class_names.txt, gallery_ids.txt, export_info.json: input size, preprocessing, top-k, index
configuration, model fingerprint, TF version) and `assets.extra/tf_serving_warmup_requests`. The pieces:
export_module.py (the tf.Module and its signatures), gallery.py (gallery sources, fingerprint),
warmup.py, verify.py (session-loader verification), layout.py (version directories, staged write).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import tensorflow as tf
from absl import logging

from finegrain_tf.data.decode import DEFAULT_LIMITS, DecodeLimits
from finegrain_tf.serving import layout
from finegrain_tf.serving.export_module import ExportModule, ImagePreprocessing, preprocessing_of
from finegrain_tf.serving.gallery import load_gallery, model_fingerprint
from finegrain_tf.serving.verify import check_finite_weights
from finegrain_tf.serving.warmup import write_warmup


def load_model_dir(model_dir: str):
    """Reads a training run's model dir -> (keras model, ExperimentConfig, class names)."""
    from finegrain_tf.train.run_dir import RunDir

    run = RunDir(model_dir)
    params = run.load_params()  # first: a folder that is no run at all is named by its missing params.yaml
    return run.load_model(), params, run.load_class_names()


def _build_index(module: ExportModule, gallery, index_options: dict | None, fingerprint: str | None):
    from finegrain_tf.retrieval import build_index

    if not module.embedding_dim:
        raise ValueError("a gallery needs a model with a layer named 'embedding'")
    embed = tf.function(lambda images: module.embed(images)["embeddings"], autograph=False)
    embeddings, ids = load_gallery(gallery, embed, fingerprint)
    if embeddings.shape[1] != module.embedding_dim:
        raise ValueError(f"gallery embeddings have dimension {embeddings.shape[1]}, the model's embedding "
                         f"has {module.embedding_dim}")
    return build_index(embeddings, ids, **(index_options or {})), ids


def _write(module: ExportModule, export_dir: str, info: dict, gallery_ids: Sequence[str], warmup: bool) -> str:
    signatures = module.signature_names()
    info = {**info, "signatures": signatures, "tensorflow_version": tf.__version__}
    with layout.staged_version(export_dir) as (out_dir, assets):
        files = {layout.CLASS_NAMES_FILE: "\n".join(module.class_names) + "\n",
                 layout.EXPORT_INFO_FILE: json.dumps(info, indent=2) + "\n"}
        if gallery_ids:
            files[layout.GALLERY_IDS_FILE] = "\n".join(gallery_ids) + "\n"
        for name, text in files.items():
            with open(os.path.join(assets, name), "w") as f:
                f.write(text)
            module.add_asset(os.path.join(assets, name))
        module.save(out_dir)
        if warmup:
            write_warmup(out_dir, info["model_name"], signatures, info["image_size"])
    logging.info("exported %s with signatures %s", export_dir, signatures)
    return export_dir


def _info(model_name, version, preprocess, module, index, fingerprint) -> dict:
    return {
        "model_name": model_name, "version": version,
        "image_size": preprocess.image_size, "resize_size": preprocess.resize_size,
        "decode_limits": {"max_pixels": preprocess.limits.max_pixels,
                          "max_aspect_ratio": preprocess.limits.max_aspect_ratio},
        "input": "encoded JPEG/PNG/GIF/BMP bytes (classify_tensor: [H, W, 3] pixels in [0, 255]; "
                 "classify_examples: tf.Example with image/encoded)",
        "preprocessing": "finegrain_tf.data.preprocessing.decode_image + preprocess_eval (resize the shorter "
                         "side to resize_size, centre crop image_size); float32 in [0, 255]",
        "top_k": module.top_k, "num_classes": module.num_classes, "embedding_dim": module.embedding_dim,
        "gallery_size": index.size if index is not None else 0,
        "index": index.config if index is not None else None,
        "distance": "squared L2 between unit vectors (2 - 2 cos)",
        "model_fingerprint": fingerprint,
    }


def export_model(model, base_path: str, model_name: str = "finegrain", version: int | None = None, *,
                 class_names: Sequence[str], image_size: int, resize_size: int = 0, top_k: int = 5,
                 gallery=None, index_options: dict | None = None, decode_limits: DecodeLimits = DEFAULT_LIMITS,
                 warmup: bool = True) -> str:
    """Exports `model` (float32 [None, S, S, 3] in [0, 255] -> logits [None, C]) for TF Serving.

    Args:
        model: the Keras classifier; a layer named "embedding" enables `embed` and `lookup`.
        base_path: TF Serving `--model_base_path` parent; the export goes to `<base_path>/<model_name>/<version>`.
        version: integer version; None = next free one. An existing version is an error.
        class_names: one name per logit.
        image_size, resize_size: the eval preprocessing (`preprocess_eval`) of the training run.
        top_k: classes (and gallery neighbours) returned per image; clipped to C (and N).
        gallery: None, an image folder, a .npz (`embeddings`, `ids`[, `model_fingerprint`]) or an
            (embeddings, ids) pair; adds the `lookup` signature.
        index_options: keyword arguments of `finegrain_tf.retrieval.build_index` (kind, nlist, nprobe, seed).
        decode_limits: largest image the served graph decodes (default 40 MP, aspect ratio 1:50); a
            larger one is answered INVALID_ARGUMENT naming its size, before it is decoded.
        warmup: write `assets.extra/tf_serving_warmup_requests`.

    Returns:
        The export directory.
    """
    export_dir, version = layout.version_dir(base_path, model_name, version)
    check_finite_weights(model)
    preprocess = ImagePreprocessing(image_size, resize_size, decode_limits)
    module = ExportModule(model, class_names, preprocess, top_k)
    fingerprint = model_fingerprint(model)
    index, gallery_ids = None, []
    if gallery is not None:
        index, gallery_ids = _build_index(module, gallery, index_options, fingerprint)
        module.attach_index(index)
    info = _info(model_name, version, preprocess, module, index, fingerprint)
    return _write(module, export_dir, info, gallery_ids, warmup)


def export_from_model_dir(model_dir: str, base_path: str, model_name: str | None = None,
                          version: int | None = None, gallery=None, top_k: int | None = None,
                          index_options: dict | None = None, decode_limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    """Exports a training run's model dir (params.yaml, model.keras, class_names.txt); returns the export dir."""
    model, params, class_names = load_model_dir(model_dir)
    return export_model(model, base_path, model_name or params.export.model_name, version,
                        class_names=class_names, image_size=params.data.image_size,
                        resize_size=params.data.resize_size,
                        top_k=top_k if top_k is not None else params.export.top_k, gallery=gallery,
                        index_options=index_options, decode_limits=decode_limits)


def export_gallery_update(source_dir: str, gallery, version: int | None = None,
                          index_options: dict | None = None, warmup: bool = True) -> str:
    """Writes the next version of an export with the same model and a new gallery index (no retraining).

    `source_dir` is a version directory written by `export_model`; the new version goes beside it. A
    gallery `.npz` recording another model's fingerprint is refused.
    """
    info = layout.read_export_info(source_dir)
    if "model_fingerprint" not in info:
        raise ValueError(f"{source_dir!r} was written by an older finegrain_tf (no model fingerprint); "
                         "export again from the training run")
    model_base = os.path.dirname(os.path.normpath(source_dir))
    export_dir, version = layout.version_dir(os.path.dirname(model_base), os.path.basename(model_base), version)
    restored = tf.saved_model.load(source_dir)

    def model(pixels):
        out = restored.model_outputs(pixels)
        return out.get("logits"), out.get("embedding")

    preprocess = preprocessing_of(info)
    module = ExportModule(model, layout.read_class_names(source_dir), preprocess, info["top_k"],
                          num_classes=info["num_classes"], embedding_dim=info["embedding_dim"])
    module.source_model = restored  # tracks the restored variables into the new SavedModel
    index, gallery_ids = _build_index(module, gallery, index_options, info["model_fingerprint"])
    module.attach_index(index)
    new_info = _info(info["model_name"], version, preprocess, module, index, info["model_fingerprint"])
    new_info["gallery_update_of"] = int(info["version"])
    return _write(module, export_dir, new_info, gallery_ids, warmup)

