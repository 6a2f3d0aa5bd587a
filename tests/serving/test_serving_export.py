"""Export: signatures, assets, warmup, Classify signature, gallery index and updates, session-loader
verification against the in-memory model."""

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
        assert {"serving_default", "classify", "classify_examples", "classify_tensor", "classify_tensor_uint8",
                "embed", "lookup"} <= set(sigs)
        assert sigs["classify"].inputs["images"].dtype == tf.string.as_datatype_enum
        assert set(sigs["classify"].outputs) == {"classes", "class_names", "scores"}
        assert set(sigs["lookup"].outputs) == {"ids", "distances"}
        assert sigs["classify_tensor_uint8"].inputs["images"].dtype == tf.uint8.as_datatype_enum
        # class names and export info are registered SavedModel assets
        assert {a.filename for a in meta.asset_file_def} >= {"class_names.txt", "export_info.json"}


def test_verify_export_matches_in_memory(exported):
    from finegrain_tf.serving import verify

    export_dir, _, model = exported
    report = verify.verify_export(export_dir, model, images=random_images(4, fmt="mixed"))
    assert set(report) >= {"classify", "classify_examples", "classify_tensor", "embed", "lookup"}
    assert max(report.values()) < 1e-4


def test_verify_export_detects_a_different_model(exported):
    from serving_utils import build_tiny_model
    from finegrain_tf.serving import verify

    export_dir, _, _ = exported
    with pytest.raises(verify.ExportVerificationError):
        verify.verify_export(export_dir, build_tiny_model(seed=5))


def test_session_loader_outputs_equal_reference(exported):
    """Independent float64 reference: top-k softmax and exact nearest neighbours."""
    from finegrain_tf.serving import verify
    from finegrain_tf.serving.export_module import ImagePreprocessing
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
    preprocess = ImagePreprocessing(IMAGE_SIZE, RESIZE_SIZE)
    pixels = np.stack([preprocess.from_bytes(tf.constant(b)).numpy() for b in images])
    logits = model(pixels).numpy().astype(np.float64)
    for i in range(len(images)):
        p = np.exp(logits[i] - logits[i].max())
        p /= p.sum()
        order = sorted(range(len(p)), key=lambda j: -p[j])[:TOP_K]
        assert list(out["classes"][i]) == order
        np.testing.assert_allclose(out["scores"][i], p[order], atol=1e-5)
        assert [n.decode() for n in out["class_names"][i]] == [CLASS_NAMES[j] for j in order]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    g_emb, g_ids = verify.read_gallery(export_dir)
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
    names = [getattr(log, log.WhichOneof("log_type")).request.model_spec.signature_name for log in logs]
    assert [log.WhichOneof("log_type") for log in logs].count("classify_log") == 1
    info = json.load(open(os.path.join(export_dir, "assets", "export_info.json")))
    assert sorted(names) == sorted(info["signatures"])
    for log in logs:
        if log.WhichOneof("log_type") == "classify_log":
            assert len(log.classify_log.request.input.example_list.examples) == 1
            continue
        req = log.predict_log.request
        assert req.model_spec.name == MODEL_NAME
        assert tf.make_ndarray(req.inputs["images"]).shape[0] == 1


def test_project_layers_export_and_load_through_session_loader(tmp_path):
    """A model with KernelPooling and AnchorSoftVote exports with stock ops only: model.keras reload ->
    export -> TF1 session loader -> outputs equal the in-memory model."""
    import keras

    import finegrain_tf.layers as fl
    from finegrain_tf.serving import export, verify
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
    report = verify.verify_export(export_dir, reloaded, images=random_images(2, fmt="mixed"))
    assert set(report) >= {"classify", "classify_tensor", "embed"} and max(report.values()) < 1e-4


def test_gallery_from_npz_is_normalised_and_fingerprint_checked(tmp_path, exported):
    from finegrain_tf.serving import gallery

    _, _, model = exported
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 8)).astype(np.float32)
    path = str(tmp_path / "g.npz")
    gallery.save_gallery(path, emb, [f"item{i}" for i in range(5)], gallery.model_fingerprint(model))
    got, ids = gallery.load_gallery(path, model_fingerprint=gallery.model_fingerprint(model))
    assert ids == [f"item{i}" for i in range(5)]
    for i in range(5):
        np.testing.assert_allclose(got[i], emb[i] / np.sqrt(np.sum(emb[i].astype(np.float64) ** 2)), atol=1e-6)
    with pytest.raises(ValueError, match="embedded by another model"):
        gallery.load_gallery(path, model_fingerprint="sha256:other")


def test_model_fingerprint_tracks_weights():
    from serving_utils import build_tiny_model
    from finegrain_tf.serving.gallery import model_fingerprint

    a, b = build_tiny_model(seed=0), build_tiny_model(seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    b.get_layer("logits").bias.assign(b.get_layer("logits").bias + 1.0)
    assert model_fingerprint(a) != model_fingerprint(b)


@pytest.mark.slow  # saved_model_cli in a subprocess
def test_classify_signature_is_tf_serving_classify(exported):
    """`classify_examples` has TF Serving's Classify method name, input `inputs` (serialized
    tf.Example), outputs `classes` (string) and `scores`, as the TF1 loader and saved_model_cli see it."""
    import subprocess
    import sys

    from finegrain_tf.serving.warmup import image_example

    export_dir, _, model = exported
    images = random_images(2, seed=21)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        sig = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir).signature_def["classify_examples"]
        assert sig.method_name == "tensorflow/serving/classify"
        assert set(sig.inputs) == {"inputs"} and sig.inputs["inputs"].dtype == tf.string.as_datatype_enum
        assert sig.outputs["classes"].dtype == tf.string.as_datatype_enum
        examples = [image_example(b).SerializeToString() for b in images]
        classes, scores = sess.run([sig.outputs["classes"].name, sig.outputs["scores"].name],
                                   {sig.inputs["inputs"].name: examples})
    from finegrain_tf.serving.export_module import ImagePreprocessing

    preprocess = ImagePreprocessing(IMAGE_SIZE, RESIZE_SIZE)
    logits = model(np.stack([preprocess.from_bytes(tf.constant(b)).numpy() for b in images])).numpy()
    for i in range(2):
        p = np.exp(logits[i].astype(np.float64) - logits[i].max())
        p /= p.sum()
        order = sorted(range(len(p)), key=lambda j: -p[j])[:TOP_K]
        assert [c.decode() for c in classes[i]] == [CLASS_NAMES[j] for j in order]
        np.testing.assert_allclose(scores[i], p[order], atol=1e-5)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", export_dir, "--tag_set", "serve", "--signature_def",
                            "classify_examples"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-1000:]
    assert "Method name is: tensorflow/serving/classify" in shown.stdout
    assert "inputs['inputs']" in shown.stdout and "outputs['classes']" in shown.stdout


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_lookup_index_kinds_against_brute_force(tmp_path, exported, kind):
    """An npz gallery indexed exactly or by IVF: all lists probed = the float64 brute-force neighbours;
    the default nprobe returns valid ids (recall reported, not asserted: it is approximate)."""
    from finegrain_tf.serving import export, gallery, verify
    from finegrain_tf.serving.servable import SessionServable

    _, _, model = exported
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(64, 8)).astype(np.float32)
    ids = [f"g{i}" for i in range(64)]
    path = str(tmp_path / "g.npz")
    gallery.save_gallery(path, emb, ids, gallery.model_fingerprint(model))
    options = {"kind": kind} if kind == "exact" else {"kind": kind, "nlist": 8, "nprobe": 2}
    export_dir = export.export_model(model, str(tmp_path), MODEL_NAME, class_names=CLASS_NAMES,
                                     image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE, top_k=TOP_K, gallery=path,
                                     index_options=options)
    info = json.load(open(os.path.join(export_dir, "assets", "export_info.json")))
    assert info["index"]["kind"] == kind and info["gallery_size"] == 64
    images = np.array(random_images(4, seed=8), dtype=object)
    servable = SessionServable(export_dir)
    try:
        queries = servable.run("embed", {"images": images})["embeddings"].astype(np.float64)
        full = servable.run("lookup", {"images": images, "nprobe": np.int32(8 if kind == "ivf" else 1)})
        default = servable.run("lookup", {"images": images})  # nprobe from the SignatureDef default
    finally:
        servable.close()
    unit = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    for i in range(len(images)):
        d = [sum((queries[i, c] - unit[j, c]) ** 2 for c in range(8)) for j in range(64)]
        order = sorted(range(64), key=lambda j: d[j])[:TOP_K]
        assert [x.decode() for x in full["ids"][i]] == [ids[j] for j in order]
        np.testing.assert_allclose(full["distances"][i], [d[j] for j in order], atol=1e-5)
    assert set(x.decode() for x in default["ids"].ravel()) <= set(ids)
    recall = np.mean([len(set(default["ids"][i]) & set(full["ids"][i])) / TOP_K for i in range(len(images))])
    print(f"{kind}: recall@{TOP_K} at the default nprobe = {recall:.2f}")
    assert verify.read_gallery(export_dir)[1] == ids


def test_gallery_update_keeps_the_model_and_swaps_the_index(tmp_path, exported):
    """--from_export: the next version answers classify/embed exactly as the source version and
    lookup over the new gallery; a gallery of another model is refused."""
    import shutil

    from serving_utils import build_tiny_model
    from finegrain_tf.serving import export, gallery, verify

    export_dir, _, model = exported
    source = tmp_path / MODEL_NAME / "1"
    shutil.copytree(export_dir, source)
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(12, 8)).astype(np.float32)
    path = str(tmp_path / "new.npz")
    gallery.save_gallery(path, emb, [f"new{i}" for i in range(12)], gallery.model_fingerprint(model))
    new_dir = export.export_gallery_update(str(source), path)
    assert new_dir == str(tmp_path / MODEL_NAME / "2")
    report = verify.verify_gallery_update(new_dir, str(source))
    assert report["classify"] == 0.0 and report["embed"] == 0.0
    assert verify.read_gallery(new_dir)[1] == [f"new{i}" for i in range(12)]
    other = str(tmp_path / "other.npz")
    gallery.save_gallery(other, emb, [f"o{i}" for i in range(12)], gallery.model_fingerprint(build_tiny_model(seed=9)))
    with pytest.raises(ValueError, match="embedded by another model"):
        export.export_gallery_update(str(source), other)


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
