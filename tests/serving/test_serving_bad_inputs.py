"""Issue 11's battery, serving area: bad inputs to the export, the dev server (gRPC with stock stubs,
REST with plain HTTP), the model config and finegrain-predict. Each case asserts the specific error
(message naming the bad value, the status code) and, for the server, that it keeps serving."""

import base64
import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, input_pb2, model_pb2,
                                     predict_pb2, prediction_service_pb2_grpc)

from finegrain_tf.serving.model_config import ModelConfig
from serving_utils import CLASS_NAMES, IMAGE_SIZE, MODEL_NAME, RESIZE_SIZE, TOP_K, build_tiny_model, random_images

MAX_BATCH = 4


# -- export ------------------------------------------------------------------------------------------
def _npz(tmp_path, name="g.npz", **arrays):
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def _gallery(n=5, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32), [f"item{i}" for i in range(n)]


EXPORT_CASES = {
    "class names count": (dict(class_names=["a", "b"]), "2 class names for a model with 5 outputs"),
    "image size": (dict(image_size=32), "image_size=32"),
    "top_k zero": (dict(top_k=0), "top_k must be a positive int, got 0"),
    "model name with slash": (dict(model_name="a/b"), "plain directory name"),
    "version zero": (dict(version=0), "version must be a positive integer, got 0"),
    "gallery npz without arrays": (dict(gallery=lambda t: _npz(t, vectors=_gallery()[0])), "'embeddings' and 'ids'"),
    "gallery ids count": (dict(gallery=lambda t: (_gallery()[0], ["a", "b", "c"])), "5 embeddings but 3 ids"),
    "gallery missing path": (dict(gallery=lambda t: str(t / "missing")), "image folder, a .npz file"),
    "gallery missing npz": (dict(gallery=lambda t: str(t / "missing.npz")), "gallery file not found"),
    "gallery NaN": (dict(gallery=lambda t: (np.full((2, 8), np.nan, np.float32), ["a", "b"])), "must be finite"),
    "gallery dimension": (dict(gallery=lambda t: (_gallery(d=4)[0], _gallery()[1])), "dimension 4"),
    "gallery duplicate ids": (dict(gallery=lambda t: (_gallery(n=2)[0], ["x", "x"])), "ids must be unique"),
    "gallery unknown index kind": (dict(gallery=lambda t: _gallery(), index_options={"kind": "lsh"}), "'lsh'"),
    "gallery nlist above size": (dict(gallery=lambda t: _gallery(), index_options={"kind": "ivf", "nlist": 50}),
                                 "nlist=50"),
    "gallery of another model": (dict(gallery=lambda t: _npz(t, embeddings=_gallery()[0], ids=np.array(_gallery()[1]),
                                                            model_fingerprint=np.array("sha256:abc"))),
                                 "embedded by another model"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_refuses(tmp_path, case):
    from finegrain_tf.serving import export

    overrides, message = EXPORT_CASES[case]
    kwargs = dict(model_name=MODEL_NAME, version=None, class_names=CLASS_NAMES, image_size=IMAGE_SIZE,
                  resize_size=RESIZE_SIZE, top_k=TOP_K)
    kwargs.update({k: v(tmp_path) if callable(v) else v for k, v in overrides.items()})
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        export.export_model(build_tiny_model(), str(tmp_path / "out"), **kwargs)
    assert not os.path.exists(tmp_path / "out" / MODEL_NAME / "1")


def test_export_refuses_an_existing_version(exported):
    from finegrain_tf.serving import export

    _, base, model = exported
    with pytest.raises(ValueError, match="already exists"):
        export.export_model(model, base, MODEL_NAME, 1, class_names=CLASS_NAMES, image_size=IMAGE_SIZE)


def test_export_refuses_non_finite_weights(tmp_path):
    from finegrain_tf.serving import export, verify

    model = build_tiny_model()
    model.get_layer("logits").bias.assign(np.full(len(CLASS_NAMES), np.nan, np.float32))
    with pytest.raises(verify.ExportVerificationError, match="logits/bias.*NaN or Inf"):
        export.export_model(model, str(tmp_path), MODEL_NAME, class_names=CLASS_NAMES, image_size=IMAGE_SIZE)


def test_export_gallery_without_an_embedding_layer(tmp_path):
    import keras

    from finegrain_tf.serving import export

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    outputs = keras.layers.Dense(len(CLASS_NAMES))(keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(ValueError, match="layer named 'embedding'"):
        export.export_model(keras.Model(inputs, outputs), str(tmp_path), MODEL_NAME, class_names=CLASS_NAMES,
                            image_size=IMAGE_SIZE, gallery=_gallery())


def test_gallery_without_fingerprint_is_accepted_with_a_warning(tmp_path, caplog):
    from finegrain_tf.serving import gallery

    emb, ids = _gallery()
    path = _npz(tmp_path, embeddings=emb, ids=np.array(ids))
    with caplog.at_level("WARNING"):
        _, got = gallery.load_gallery(path, model_fingerprint="sha256:any")
    assert got == ids
    assert any("records no model fingerprint" in r.getMessage() for r in caplog.records)


def test_export_from_a_dir_that_is_not_a_run_or_an_export(tmp_path):
    from finegrain_tf.serving import export

    with pytest.raises(ValueError, match="no params.yaml"):
        export.export_from_model_dir(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="is not a finegrain_tf export"):
        export.export_gallery_update(str(tmp_path), _gallery())


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--gallery_index=lsh", "--gallery=g.npz"], "--gallery_index must be one of"),
    (["--nlist=8"], "need a --gallery"),
    (["--from_export=/nonexistent/1"], "--from_export takes a new --gallery"),
])
def test_export_cli_usage_errors_are_one_line(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "finegrain_tf.serving.export_main", f"--model_dir={tmp_path}",
                          f"--export_base={tmp_path}", *args], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr


# -- model config ----------------------------------------------------------------------------------
CONFIG_CASES = {
    "syntax error": ("model_config_list { config { name: 'a' base_path: '/m' }", "model config file"),
    "unknown field": ("model_config_list { config { name: 'a' base_pth: '/m' } }", "base_pth"),
    "no models": ("model_config_list { }", "at least one config"),
    "platform": ("model_config_list { config { name: 'a' base_path: '/m' model_platform: 'onnx' } }", "'onnx'"),
    "duplicate name": ("model_config_list { config { name: 'a' base_path: '/m' } config { name: 'a' base_path: '/n' } }",
                       "'a' appears twice"),
    "no base path": ("model_config_list { config { name: 'a' } }", "needs a base_path"),
    "bad label": ("model_config_list { config { name: 'a' base_path: '/m' version_labels { key: 'x' value: 0 } } }",
                  "label 'x' must point to a positive version"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_model_config_file_refused(tmp_path, case):
    from finegrain_tf.serving.model_config import read_model_config

    text, message = CONFIG_CASES[case]
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_model_config(str(path))


# -- server: gRPC with stock stubs, REST with plain HTTP ---------------------------------------------
@pytest.fixture(scope="module")
def server(exported):
    from finegrain_tf.serving.server import DevModelServer

    _, base, _ = exported
    config = ModelConfig(MODEL_NAME, os.path.join(base, MODEL_NAME), labels={"stable": 1})
    srv = DevModelServer(config, port=0, rest_api_port=0, max_batch_size=MAX_BATCH, poll_wait_seconds=30).start()
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _request(images=None, model=MODEL_NAME, signature="classify", key="images", **spec):
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model, signature_name=signature, **spec))
    if images is None:
        images = np.array(random_images(1), dtype=object)
    request.inputs[key].CopyFrom(tf.make_tensor_proto(images))
    return request


def _pixels(value):
    pixels = np.full((1, IMAGE_SIZE, IMAGE_SIZE, 3), 100.0, np.float32)
    pixels[0, 3, 4, 1] = value
    return pixels


def _classify(examples, signature="classify_examples"):
    return classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL_NAME, signature_name=signature),
        input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples)))


def _bomb(width, height=1):
    """A valid PNG of `width` x `height` black pixels: a few hundred bytes once compressed."""
    return tf.io.encode_png(np.zeros((height, width, 1), np.uint8)).numpy()


def _examples(*images):
    from finegrain_tf.serving.warmup import image_example

    return [image_example(b) for b in images]


GRPC_CASES = {
    "unknown model": ("Predict", lambda: _request(model="nope"), grpc.StatusCode.NOT_FOUND, "'nope'"),
    "unknown version": ("Predict", lambda: _request(version=model_pb2.ModelSpec(version={"value": 7}).version),
                        grpc.StatusCode.NOT_FOUND, "version 7"),
    "unknown label": ("Predict", lambda: _request(version_label="canary"), grpc.StatusCode.NOT_FOUND, "'canary'"),
    "unknown signature": ("Predict", lambda: _request(signature="classfy"), grpc.StatusCode.NOT_FOUND, "'classfy'"),
    "missing input": ("Predict", lambda: _request(key="image"), grpc.StatusCode.INVALID_ARGUMENT, "missing input"),
    "wrong dtype": ("Predict", lambda: _request(np.zeros([1], np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
                    "dtype string, got float32"),
    "wrong rank": ("Predict", lambda: _request(np.array([random_images(1)], dtype=object)),
                   grpc.StatusCode.INVALID_ARGUMENT, "rank 1"),
    "tensor rank": ("Predict", lambda: _request(np.zeros([1, 8, 8], np.float32), signature="classify_tensor"),
                    grpc.StatusCode.INVALID_ARGUMENT, "rank 4"),
    "batch too large": ("Predict", lambda: _request(np.array(random_images(MAX_BATCH + 1), dtype=object)),
                        grpc.StatusCode.INVALID_ARGUMENT, f"batch size {MAX_BATCH + 1} exceeds"),
    "empty batch": ("Predict", lambda: _request(np.array([], dtype=object)), grpc.StatusCode.INVALID_ARGUMENT,
                    "empty batch"),
    "undecodable image": ("Predict", lambda: _request(np.array([b"\x89PNG garbage"], dtype=object)),
                          grpc.StatusCode.INVALID_ARGUMENT, "image"),
    "decompression bomb 1x120000 PNG": ("Predict", lambda: _request(np.array([_bomb(120000)], dtype=object)),
                                        grpc.StatusCode.INVALID_ARGUMENT, "image of 120000x1 pixels"),
    "bomb sent to Classify": ("Classify", lambda: _classify(_examples(_bomb(120000))),
                              grpc.StatusCode.INVALID_ARGUMENT, "image of 120000x1 pixels"),
    "aspect ratio 1:60": ("Predict", lambda: _request(np.array([_bomb(60, 1)], dtype=object)),
                          grpc.StatusCode.INVALID_ARGUMENT, "aspect ratio of 1:50"),
    "NaN pixel": ("Predict", lambda: _request(_pixels(np.nan), signature="classify_tensor"),
                  grpc.StatusCode.INVALID_ARGUMENT, "finite pixel values"),
    "pixel above 255": ("Predict", lambda: _request(_pixels(300.0), signature="classify_tensor"),
                        grpc.StatusCode.INVALID_ARGUMENT, "[0, 255]"),
    "negative pixel": ("Predict", lambda: _request(_pixels(-1.0), signature="classify_tensor"),
                       grpc.StatusCode.INVALID_ARGUMENT, "[0, 255]"),
    "nprobe out of range": ("Predict", lambda: _with_nprobe(_request(signature="lookup"), -3),
                            grpc.StatusCode.INVALID_ARGUMENT, "nprobe"),
    "classify on a predict signature": ("Classify", lambda: _classify([tf.train.Example()], "classify"),
                                        grpc.StatusCode.INVALID_ARGUMENT, "tensorflow/serving/classify"),
    "classify without examples": ("Classify", lambda: _classify([]), grpc.StatusCode.INVALID_ARGUMENT,
                                  "Input is empty"),
    "classify example without image": ("Classify", lambda: _classify([tf.train.Example()]),
                                       grpc.StatusCode.INVALID_ARGUMENT, "image/encoded"),
    "metadata without field": ("GetModelMetadata", lambda: get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL_NAME)), grpc.StatusCode.INVALID_ARGUMENT, "metadata_field"),
    "metadata of unknown model": ("GetModelMetadata", lambda: get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="nope"), metadata_field=["signature_def"]),
        grpc.StatusCode.NOT_FOUND, "'nope'"),
}


def _with_nprobe(request, value):
    request.inputs["nprobe"].CopyFrom(tf.make_tensor_proto(np.int32(value)))
    return request


@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_grpc_bad_requests_are_refused_and_server_keeps_serving(stub, case):
    method, make, code, text = GRPC_CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(make(), timeout=60)
    assert info.value.code() == code, info.value.details()
    assert text.lower() in info.value.details().lower(), info.value.details()
    good = stub.Predict(_request(), timeout=60)
    assert tf.make_ndarray(good.outputs["classes"]).shape == (1, TOP_K)


def _b64(data):
    return {"b64": base64.b64encode(data).decode()}


REST_CASES = {
    "invalid JSON": ("POST", ":predict", b"{not json", 400, "not valid JSON"),
    "body not an object": ("POST", ":predict", [1, 2], 400, "JSON object"),
    "instances and inputs": ("POST", ":predict", {"instances": [1], "inputs": [1]}, 400, "exactly one of"),
    "neither instances nor inputs": ("POST", ":predict", {"signature_name": "classify"}, 400, "exactly one of"),
    "empty instances": ("POST", ":predict", {"instances": []}, 400, "non-empty list"),
    "bad base64": ("POST", ":predict", {"instances": [{"b64": "@@@"}]}, 400, "invalid base64"),
    "b64 with extra key": ("POST", ":predict", {"instances": [{"b64": "AA==", "x": 1}]}, 400, "unknown input"),
    "number for a string input": ("POST", ":predict", {"instances": [3]}, 400, "expected a string"),
    "ragged tensor": ("POST", ":predict", {"signature_name": "classify_tensor",
                                           "instances": [[[[1, 2, 3]]], [[[1, 2]]]]}, 400, "ragged"),
    "unknown input name": ("POST", ":predict", {"inputs": {"pictures": ["x"]}}, 400, "unknown input(s) ['pictures']"),
    "undecodable image": ("POST", ":predict", {"instances": [_b64(b"not an image")]}, 400, "image"),
    "decompression bomb": ("POST", ":predict", {"instances": [_b64(_bomb(120000))]}, 400, "image of 120000x1 pixels"),
    "unknown signature": ("POST", ":predict", {"signature_name": "nope", "instances": [_b64(b"x")]}, 404, "'nope'"),
    "unknown model": ("POST", "/../nope:predict", {"instances": [_b64(b"x")]}, 404, "'nope'"),
    "unknown label": ("POST", "/labels/canary:predict", {"instances": [_b64(b"x")]}, 404, "'canary'"),
    "unknown version": ("POST", "/versions/9:predict", {"instances": [_b64(b"x")]}, 404, "version 9"),
    "unknown verb": ("POST", ":explain", {"instances": [1]}, 400, "Malformed request"),
    "regress": ("POST", ":regress", {"examples": [{}]}, 501, "Regress"),
    "classify without examples": ("POST", ":classify", {"signature_name": "classify_examples"}, 400, "examples"),
    "classify bad feature": ("POST", ":classify", {"signature_name": "classify_examples",
                                                   "examples": [{"image/encoded": [True]}]}, 400, "a feature is"),
    "status of unknown model": ("GET", "/../nope", None, 404, "'nope'"),
}


@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_rest_bad_requests_get_tf_serving_error_json(server, case):
    method, suffix, body, status, text = REST_CASES[case]
    url = f"http://127.0.0.1:{server.rest_api_port}/v1/models/{MODEL_NAME}{suffix}".replace(f"/{MODEL_NAME}/..", "")
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    response = requests.request(method, url, data=data, timeout=60)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and text in response.json()["error"], response.text
    ok = requests.post(f"http://127.0.0.1:{server.rest_api_port}/v1/models/{MODEL_NAME}:predict",
                       json={"instances": [_b64(random_images(1)[0])]}, timeout=60)
    assert ok.status_code == 200


def test_rest_unknown_path_is_404(server):
    response = requests.get(f"http://127.0.0.1:{server.rest_api_port}/v2/models", timeout=60)
    assert response.status_code == 404 and "unknown path" in response.json()["error"]


# -- finegrain-predict -------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_reports_unreadable_and_undecodable_files_by_name(server, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(random_images(1)[0])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a JPEG")
    missing = tmp_path / "missing.png"
    out = subprocess.run([sys.executable, "-m", "finegrain_tf.serving.predict_main", f"--server={server.target}",
                          f"--model={MODEL_NAME}", str(bad), str(missing), str(good)],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"{missing}: cannot read" in out.stderr
    assert f"{bad}: " in out.stderr and "image" in out.stderr.split(f"{bad}: ")[1].splitlines()[0]
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert {r[0] for r in rows} == {str(good)} and len(rows) == TOP_K


def test_export_time_decode_limits_are_served_and_recorded(tmp_path):
    """Limits given at export time: the served graph refuses a 40x40 image above max_pixels=1000,
    naming its size and the limit, and export_info.json records them."""
    from finegrain_tf.data.decode import DecodeLimits
    from finegrain_tf.serving import export
    from finegrain_tf.serving.servable import RequestError, SessionServable

    export_dir = export.export_model(build_tiny_model(), str(tmp_path), MODEL_NAME, class_names=CLASS_NAMES,
                                     image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE, top_k=TOP_K,
                                     decode_limits=DecodeLimits(max_pixels=1000, max_aspect_ratio=2.0),
                                     warmup=False)
    info = json.load(open(os.path.join(export_dir, "assets", "export_info.json")))
    assert info["decode_limits"] == {"max_pixels": 1000, "max_aspect_ratio": 2.0}
    servable = SessionServable(export_dir)
    try:
        ok = servable.run("classify", {"images": np.array([_bomb(30, 30)], dtype=object)})
        assert ok["classes"].shape == (1, TOP_K)
        for image, text in [(_bomb(40, 40), "image of 40x40 pixels"), (_bomb(30, 10), "aspect ratio of 1:2")]:
            with pytest.raises(RequestError, match=text) as info:
                servable.run("classify", {"images": np.array([image], dtype=object)})
            assert info.value.code == "INVALID_ARGUMENT" and "at most 1000 pixels" in info.value.message
    finally:
        servable.close()
