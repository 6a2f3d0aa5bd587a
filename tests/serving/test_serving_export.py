"""Export: signatures, assets, warmup, session-loader verification against the in-memory model."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from serving_utils import CLASS_NAMES, IMAGE_SIZE, MODEL_NAME, RESIZE_SIZE, TOP_K, random_images


def test_layout_assets_and_signatures(exported):
    export_dir, base, _ = exported
    assert export_dir == os.path.join(base, MODEL_NAME, "1")
    assert not [d for d in os.listdir(os.path.join(base, MODEL_NAME)) if d.startswith(".tmp")]
    info = json.load(open(os.path.join(export_dir, "assets", "export_info.json")))
    assert info["image_size"] == IMAGE_SIZE and info["resize_size"] == RESIZE_SIZE
    assert info["top_k"] == TOP_K and info["gallery_size"] == 6
    assert info["tensorflow_version"] == tf.__version__
    names = open(os.path.join(export_dir, "assets", "class_names.txt")).read().splitlines()
    assert names == CLASS_NAMES
    gallery_ids = open(os.path.join(export_dir, "assets", "gallery_ids.txt")).read().splitlines()
    assert len(gallery_ids) == 6 and "acadian_flycatcher/broken.jpg" not in gallery_ids
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
        sigs = meta.signature_def
        assert {"serving_default", "classify", "classify_tensor", "classify_tensor_uint8", "embed",
                "lookup"} <= set(sigs)
        assert sigs["classify"].inputs["images"].dtype == tf.string.as_datatype_enum
        assert set(sigs["classify"].outputs) == {"classes", "class_names", "scores"}
        assert set(sigs["lookup"].outputs) == {"ids", "distances"}
        assert sigs["classify_tensor_uint8"].inputs["images"].dtype == tf.uint8.as_datatype_enum
        # class names and export info are registered SavedModel assets
        assert {a.filename for a in meta.asset_file_def} >= {"class_names.txt", "export_info.json"}


def test_verify_export_matches_in_memory(exported):
    from finegrain_tf.serving import export

    export_dir, _, model = exported
    report = export.verify_export(export_dir, model, images=random_images(4, fmt="mixed"))
    assert set(report) >= {"classify", "classify_tensor", "embed", "lookup"}
    assert max(report.values()) < 1e-4


def test_verify_export_detects_a_different_model(exported):
    from serving_utils import build_tiny_model
    from finegrain_tf.serving import export

    export_dir, _, _ = exported
    with pytest.raises(export.ExportVerificationError):
        export.verify_export(export_dir, build_tiny_model(seed=5))


def test_session_loader_outputs_equal_reference(exported):
    """Independent float64 reference: top-k softmax and exact nearest neighbours."""
    from finegrain_tf.serving import export
    from finegrain_tf.serving.servable import SessionServable

    export_dir, _, model = exported
    images = random_images(3, seed=3)
    servable = SessionServable(export_dir)
    try:
        out = servable.run("serving_default", {"images": np.array(images, dtype=object)})
        emb = servable.run("embed", {"images": np.array(images, dtype=object)})["embeddings"]
        look = servable.run("lookup", {"images": np.array(images, dtype=object)})
    finally:
        servable.close()
    pixels = np.stack([export.preprocess_bytes(tf.constant(b), IMAGE_SIZE, RESIZE_SIZE).numpy() for b in images])
    logits = model(pixels).numpy().astype(np.float64)
    for i in range(len(images)):
        p = np.exp(logits[i] - logits[i].max())
        p /= p.sum()
        order = sorted(range(len(p)), key=lambda j: -p[j])[:TOP_K]
        assert list(out["classes"][i]) == order
        np.testing.assert_allclose(out["scores"][i], p[order], atol=1e-5)
        assert [n.decode() for n in out["class_names"][i]] == [CLASS_NAMES[j] for j in order]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    g_emb, g_ids = export.read_gallery(export_dir)
    for i in range(len(images)):
        d = [float(np.sum((emb[i].astype(np.float64) - g_emb[j]) ** 2)) for j in range(len(g_ids))]
        order = sorted(range(len(d)), key=lambda j: d[j])[:TOP_K]
        assert [x.decode() for x in look["ids"][i]] == [g_ids[j] for j in order]
        np.testing.assert_allclose(look["distances"][i], [d[j] for j in order], atol=1e-5)


def test_warmup_file_has_one_predictionlog_per_signature(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    export_dir, _, _ = exported
    path = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.compat.v1.io.tf_record_iterator(path)]
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    info = json.load(open(os.path.join(export_dir, "assets", "export_info.json")))
    assert sorted(names) == sorted(info["signatures"])
    for log in logs:
        req = log.predict_log.request
        assert req.model_spec.name == MODEL_NAME
        assert tf.make_ndarray(req.inputs["images"]).shape[0] == 1


def test_project_layers_export_and_load_through_session_loader(tmp_path):
    """A model with KernelPooling and AnchorSoftVote exports with stock ops only: model.keras reload ->
    export -> TF1 session loader -> outputs equal the in-memory model."""
    import keras

    import finegrain_tf.layers as fl
    from finegrain_tf.serving import export
    from serving_utils import write_model_dir

    keras.utils.set_random_seed(3)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs))
    x = fl.KernelPooling(order=2, dims=16, gamma=0.5)(x)
    emb = keras.layers.Dense(6, name="embedding")(x)
    logits = fl.AnchorSoftVote(len(CLASS_NAMES), anchors_per_class=2, output_mode="logits")(emb)
    run_dir = write_model_dir(tmp_path / "run", keras.Model(inputs, logits))
    export_dir = export.export_from_model_dir(run_dir, str(tmp_path / "models"), gallery=None)
    reloaded, _, _ = export.load_model_dir(run_dir)
    kinds = {type(l).__name__ for l in reloaded.layers}
    assert {"KernelPooling", "AnchorSoftVote"} <= kinds
    report = export.verify_export(export_dir, reloaded, images=random_images(2, fmt="mixed"))
    assert set(report) >= {"classify", "classify_tensor", "embed"} and max(report.values()) < 1e-4


def test_gallery_from_npz_and_limits(tmp_path, exported):
    from finegrain_tf.serving import export

    _, _, model = exported
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 8)).astype(np.float32)
    path = str(tmp_path / "g.npz")
    np.savez(path, embeddings=emb, ids=np.array([f"item{i}" for i in range(5)]))
    got, ids = export.build_gallery(model, path, IMAGE_SIZE, RESIZE_SIZE)
    assert ids == [f"item{i}" for i in range(5)]
    np.testing.assert_allclose(got, emb / np.linalg.norm(emb, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="exact-search limit 4"):
        export.build_gallery(model, path, IMAGE_SIZE, RESIZE_SIZE, max_size=4)
    np.savez(str(tmp_path / "bad.npz"), vectors=emb)
    with pytest.raises(ValueError, match="'embeddings' and 'ids'"):
        export.build_gallery(model, str(tmp_path / "bad.npz"), IMAGE_SIZE, RESIZE_SIZE)
    with pytest.raises(ValueError, match="3 ids"):
        export.build_gallery(model, (emb, ["a", "b", "c"]), IMAGE_SIZE, RESIZE_SIZE)
    with pytest.raises(ValueError, match="image folder or a .npz"):
        export.build_gallery(model, str(tmp_path / "missing"), IMAGE_SIZE, RESIZE_SIZE)


def test_export_bad_inputs(tmp_path, exported, model_dir):
    from finegrain_tf.serving import export

    export_dir, base, model = exported
    with pytest.raises(ValueError, match="2 class names for a model with 5 outputs"):
        export.export_model(model, str(tmp_path), class_names=["a", "b"], image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="image_size=32"):
        export.export_model(model, str(tmp_path), class_names=CLASS_NAMES, image_size=32)
    with pytest.raises(ValueError, match="already exists"):
        export.export_model(model, base, MODEL_NAME, 1, class_names=CLASS_NAMES, image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="no params.yaml"):
        export.export_from_model_dir(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="top_k"):
        export.export_model(model, str(tmp_path), class_names=CLASS_NAMES, image_size=IMAGE_SIZE, top_k=0)
    assert export.next_version(os.path.join(base, MODEL_NAME)) >= 2


def test_unservable_ops_are_detected(tmp_path, exported):
    """Stock exports pass; a graph with a Python callback (tf.numpy_function) is flagged."""
    from finegrain_tf.serving.servable import SessionServable, unservable_ops

    export_dir, _, _ = exported
    servable = SessionServable(export_dir)
    try:
        assert unservable_ops(servable.meta_graph) == []
    finally:
        servable.close()

    class WithPython(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def serve(self, x):
            return {"y": tf.numpy_function(lambda v: v * 2, [x], tf.float32)}

    module = WithPython()
    path = str(tmp_path / "py" / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    assert set(unservable_ops(meta)) & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
