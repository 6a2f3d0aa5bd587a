"""The dev server over gRPC on a free loopback port, checked with the stock tensorflow_serving stubs
(the project's own Client only where its own behaviour is under test)."""

import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     input_pb2, model_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from finegrain_tf.serving.model_config import ModelConfig
from serving_utils import CLASS_NAMES, IMAGE_SIZE, MODEL_NAME, RESIZE_SIZE, TOP_K, random_images

MAX_BATCH = 4


@pytest.fixture(scope="module")
def server(exported):
    from finegrain_tf.serving.server import DevModelServer

    export_dir, base, _ = exported
    srv = DevModelServer(ModelConfig(MODEL_NAME, os.path.join(base, MODEL_NAME)), port=0,
                         max_batch_size=MAX_BATCH, poll_wait_seconds=30).start()
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def client(server):
    from finegrain_tf.serving import Client

    with Client(server.target, MODEL_NAME, timeout=30, max_batch_size=MAX_BATCH) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _reference(exported, signature, images):
    from finegrain_tf.serving import verify
    from finegrain_tf.serving.export_module import ImagePreprocessing

    export_dir, _, model = exported
    gallery = verify.read_gallery(export_dir) if signature == "lookup" else None
    return verify.reference_outputs(model, signature, images, ImagePreprocessing(IMAGE_SIZE, RESIZE_SIZE), TOP_K,
                                    CLASS_NAMES, gallery)


@pytest.mark.parametrize("signature", ["serving_default", "classify", "embed", "lookup"])
def test_bytes_signatures_equal_in_memory_model(exported, client, signature):
    images = random_images(3, seed=11, fmt="mixed")
    got = client.predict({"images": images}, signature)
    want = _reference(exported, signature, images)
    assert set(got) == set(want)
    for key, ref in want.items():
        if ref.dtype == object:
            assert got[key].tolist() == ref.tolist()
        elif key == "classes":
            np.testing.assert_array_equal(got[key], ref)
        else:
            np.testing.assert_allclose(got[key], ref, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_classify_tensor_equals_in_memory_model(exported, client, dtype):
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(2, IMAGE_SIZE + 4, IMAGE_SIZE + 2, 3)).astype(dtype)
    got = client.classify(pixels)
    want = _reference(exported, "classify_tensor", list(pixels))
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
    assert got["class_names"].tolist() == [[n.decode() for n in row] for row in want["class_names"]]


def test_client_helpers_and_batching(exported, client):
    images = random_images(6, seed=12)  # 6 > server max batch 4: the client splits into 4 + 2
    out = client.classify(images)
    want = _reference(exported, "classify", images)
    np.testing.assert_array_equal(out["classes"], want["classes"])
    assert isinstance(out["class_names"][0, 0], str)
    emb = client.embed(images)
    assert emb.shape == (6, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    look = client.lookup(images, k=2)
    assert look["ids"].shape == (6, 2) and isinstance(look["ids"][0, 0], str)
    assert np.all(np.diff(look["distances"], axis=1) >= 0)
    with pytest.raises(ValueError, match="k=9"):
        client.lookup(images[:1], k=9)


def test_metadata_and_status(client):
    meta = client.metadata()
    assert {"serving_default", "classify", "classify_tensor", "classify_tensor_uint8", "embed",
            "lookup"} <= set(meta)
    assert meta["classify"]["inputs"] == {"images": ("string", [None])}
    assert set(meta["classify"]["outputs"]) == {"classes", "class_names", "scores"}
    assert meta["embed"]["outputs"]["embeddings"] == ("float32", [None, 8])
    assert client.model_status() == [{"version": 1, "state": "AVAILABLE", "error": ""}]


def test_warmup_file_parses_and_replays(exported, stub):
    from finegrain_tf.serving.servable import read_warmup_requests

    export_dir, _, _ = exported
    requests = read_warmup_requests(export_dir)
    assert len(requests) == 7
    for request in requests:
        if request.model_spec.signature_name == "classify_examples":
            response = stub.Classify(request, timeout=30)
            assert len(response.result.classifications) == 1
            continue
        response = stub.Predict(request, timeout=30)
        sig = request.model_spec.signature_name
        assert response.model_spec.signature_name == sig
        assert set(response.outputs) == ({"ids", "distances"} if sig == "lookup" else
                                         {"embeddings"} if sig == "embed" else
                                         {"classes", "class_names", "scores"})
        assert tf.make_ndarray(next(iter(response.outputs.values()))).shape[0] == 1


def _request(images=None, model=MODEL_NAME, signature="classify", key="images", version=None):
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model, signature_name=signature))
    if version is not None:
        request.model_spec.version.value = version
    if images is None:
        images = np.array(random_images(1), dtype=object)
    request.inputs[key].CopyFrom(tf.make_tensor_proto(images))
    return request


def test_hot_reload_of_version_2_while_requests_run(exported, tmp_path):
    from finegrain_tf.serving import Client
    from finegrain_tf.serving.server import DevModelServer

    export_dir, _, _ = exported
    model_base = tmp_path / MODEL_NAME
    model_base.mkdir()
    shutil.copytree(export_dir, model_base / "1")
    images = random_images(2, seed=5)
    srv = DevModelServer(ModelConfig(MODEL_NAME, str(model_base)), port=0, poll_wait_seconds=0.2).start()
    errors, versions, stop = [], [], threading.Event()

    def hammer():
        with Client(srv.target, MODEL_NAME, max_retries=0, timeout=30) as c:
            while not stop.is_set():
                try:
                    c.classify(images)
                    versions.append(c.last_version)
                except Exception as e:  # any failure during the swap is a test failure
                    errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        while len(versions) < 3 and not errors:
            time.sleep(0.05)
        staging = tmp_path / "staging"
        shutil.copytree(export_dir, staging)
        os.rename(staging, model_base / "2")  # atomic appearance, like export_model does
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not errors:
            if versions[-6:] and all(v == 2 for v in versions[-6:]):
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        status = Client(srv.target, MODEL_NAME).model_status()
        # rollback: removing the served version directory falls back to the highest remaining one
        shutil.rmtree(model_base / "2")
        deadline = time.monotonic() + 60
        while srv.manager().current_version != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        rolled_back = srv.manager().current_version
        srv.stop(grace=1)
    assert not errors, errors[:3]
    assert versions[0] == 1 and 2 in versions
    # after the first answer of version 2, only requests already running on version 1 may finish on it
    assert versions[versions.index(2):].count(1) <= len(threads), versions[-20:]
    assert {s["version"]: s["state"] for s in status} == {1: "END", 2: "AVAILABLE"}
    assert rolled_back == 1


def test_stop_lets_in_flight_requests_finish(exported, tmp_path):
    """Graceful shutdown (what SIGTERM triggers in finegrain-serve): a request already running completes,
    new connections are refused afterwards."""
    from finegrain_tf.serving import Client
    from finegrain_tf.serving.server import DevModelServer

    export_dir, _, _ = exported
    model_base = tmp_path / MODEL_NAME
    shutil.copytree(export_dir, model_base / "1")
    srv = DevModelServer(ModelConfig(MODEL_NAME, str(model_base)), port=0, enable_warmup=False).start()
    with srv.manager().acquire() as servable:
        pass
    servable_run = servable.run
    entered, release = threading.Event(), threading.Event()

    def slow_run(*args, **kwargs):
        entered.set()
        release.wait(30)
        return servable_run(*args, **kwargs)

    servable.run = slow_run
    result = {}

    def request():
        with Client(srv.target, MODEL_NAME, max_retries=0, timeout=60) as c:
            try:
                result["out"] = c.classify(random_images(1))
            except grpc.RpcError as e:
                result["error"] = e

    thread = threading.Thread(target=request)
    thread.start()
    assert entered.wait(60)
    stopper = threading.Thread(target=srv.stop, kwargs={"grace": 30})
    stopper.start()
    time.sleep(0.2)  # stop() is now waiting for the in-flight call
    release.set()
    thread.join(60)
    stopper.join(60)
    assert "error" not in result, result.get("error")
    assert result["out"]["classes"].shape == (1, TOP_K)
    with Client(srv.target, MODEL_NAME, max_retries=0, timeout=2) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.classify(random_images(1))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_broken_version_is_reported_and_previous_keeps_serving(exported, tmp_path):
    from finegrain_tf.serving import Client
    from finegrain_tf.serving.server import DevModelServer

    export_dir, _, _ = exported
    model_base = tmp_path / MODEL_NAME
    shutil.copytree(export_dir, model_base / "1")
    srv = DevModelServer(ModelConfig(MODEL_NAME, str(model_base)), port=0, poll_wait_seconds=0.1,
                         enable_warmup=False, max_num_load_retries=0).start()
    try:
        staging = tmp_path / "staging"
        staging.mkdir()
        (staging / "saved_model.pb").write_bytes(b"definitely not a SavedModel")
        os.rename(staging, model_base / "2")
        with Client(srv.target, MODEL_NAME, timeout=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(client.model_status()) < 2:
                time.sleep(0.05)
            status = {s["version"]: s for s in client.model_status()}
            assert status[1]["state"] == "AVAILABLE"
            assert status[2]["state"] == "END" and "load failed" in status[2]["error"]
            assert client.classify(random_images(1))["classes"].shape == (1, TOP_K)
            assert client.last_version == 1
    finally:
        srv.stop(grace=1)


def _classify_request(images, model=MODEL_NAME, signature="classify_examples", **spec):
    from finegrain_tf.serving.warmup import image_example

    return classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name=model, signature_name=signature, **spec),
        input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=[image_example(b) for b in images])))


def test_classify_rpc_with_stock_stub(exported, stub):
    images = random_images(3, seed=31, fmt="mixed")
    response = stub.Classify(_classify_request(images), timeout=30)
    want = _reference(exported, "classify", images)
    assert response.model_spec.version.value == 1
    assert len(response.result.classifications) == 3
    for i, row in enumerate(response.result.classifications):
        assert [c.label for c in row.classes] == [n.decode() for n in want["class_names"][i]]
        np.testing.assert_allclose([c.score for c in row.classes], want["scores"][i], atol=1e-5)


def test_classify_rpc_with_context(exported, stub):
    """example_list_with_context: each example is merged over the context (its own features win)."""
    from finegrain_tf.serving.warmup import image_example

    images = random_images(2, seed=32)
    context = image_example(images[0])
    request = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL_NAME, signature_name="classify_examples"),
        input=input_pb2.Input(example_list_with_context=input_pb2.ExampleListWithContext(
            examples=[tf.train.Example(), image_example(images[1])], context=context)))
    response = stub.Classify(request, timeout=30)
    want = _reference(exported, "classify", [images[0], images[1]])
    for i, row in enumerate(response.result.classifications):
        np.testing.assert_allclose([c.score for c in row.classes], want["scores"][i], atol=1e-5)


def test_metadata_with_stock_stub(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name=MODEL_NAME),
                                                             metadata_field=["signature_def"])
    response = stub.GetModelMetadata(request, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert sig_map.signature_def["classify_examples"].method_name == "tensorflow/serving/classify"
    assert set(sig_map.signature_def["lookup"].inputs) == {"images", "nprobe"}
    assert response.model_spec.version.value == 1


def _write_config(path, entries):
    text = "model_config_list {\n"
    for name, base, policy, labels in entries:
        text += f'  config {{\n    name: "{name}"\n    base_path: "{base}"\n    model_platform: "tensorflow"\n'
        text += f"    model_version_policy {{ {policy} }}\n"
        for label, version in labels.items():
            text += f'    version_labels {{ key: "{label}" value: {version} }}\n'
        text += "  }\n"
    path.write_text(text + "}\n")
    return str(path)


def test_model_config_file_with_labels_and_two_models(exported, tmp_path):
    """A text-format ModelServerConfig as stock TF Serving reads it: two models, a specific-versions
    policy with labels; requests by label, by version and for the other model, via stock stubs."""
    from finegrain_tf.serving.model_config import read_model_config
    from finegrain_tf.serving.server import DevModelServer

    export_dir, _, _ = exported
    for version in (1, 2, 3):
        shutil.copytree(export_dir, tmp_path / "a" / str(version))
    shutil.copytree(export_dir, tmp_path / "b" / "7")
    config = _write_config(tmp_path / "models.config", [
        ("alpha", str(tmp_path / "a"), "specific { versions: 1 versions: 2 }", {"stable": 1, "canary": 2}),
        ("beta", "b", "latest { num_versions: 1 }", {})])  # relative to the config file
    models = read_model_config(config)
    assert [(m.name, m.policy, m.versions, m.labels) for m in models] == [
        ("alpha", "specific", (1, 2), {"stable": 1, "canary": 2}), ("beta", "latest", (), {})]
    srv = DevModelServer(models, port=0, enable_warmup=False, poll_wait_seconds=30).start()
    try:
        channel = grpc.insecure_channel(srv.target)
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        status = model_service_pb2_grpc.ModelServiceStub(channel)
        got = {}
        for spec in ({"version_label": "stable"}, {"version_label": "canary"}, {}):
            request = _request(model="alpha")
            request.model_spec.MergeFrom(model_pb2.ModelSpec(**spec))
            got[str(spec)] = predict.Predict(request, timeout=30).model_spec.version.value
        assert list(got.values()) == [1, 2, 2]
        assert predict.Predict(_request(model="beta"), timeout=30).model_spec.version.value == 7
        response = status.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name="alpha")), timeout=30)
        assert [(s.version, s.state) for s in response.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE), (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
        channel.close()
    finally:
        srv.stop(grace=1)
    shipped = read_model_config(os.path.join(os.path.dirname(__file__), "..", "..", "export", "models.config"))
    assert [m.name for m in shipped] == ["finegrain"] and shipped[0].base_path == "/models/finegrain"


def test_failed_version_is_retried_and_served_once_it_loads(exported, tmp_path):
    """A version whose copy was incomplete at the first load attempt is retried with back-off and
    served when the copy completes (stock TF Serving retries too); the old version serves meanwhile."""
    from finegrain_tf.serving.server import DevModelServer

    export_dir, _, _ = exported
    model_base = tmp_path / MODEL_NAME
    shutil.copytree(export_dir, model_base / "1")
    srv = DevModelServer(ModelConfig(MODEL_NAME, str(model_base)), port=0, poll_wait_seconds=0.05,
                         enable_warmup=False, max_num_load_retries=50, load_retry_interval=0.05).start()
    try:
        manager = srv.manager()
        assert manager.loaded_versions == [1]
        partial = model_base / "2"
        partial.mkdir()
        shutil.copy(os.path.join(export_dir, "saved_model.pb"), partial / "saved_model.pb")  # variables missing
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (manager.status(2) and manager.status(2)[0][2]):
            time.sleep(0.05)
        version, state, message = manager.status(2)[0]
        assert state == get_model_status_pb2.ModelVersionStatus.LOADING and "load failed" in message
        assert manager.loaded_versions == [1]
        shutil.copytree(os.path.join(export_dir, "variables"), partial / "variables")  # the copy completes
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and manager.current_version != 2:
            time.sleep(0.05)
        assert manager.current_version == 2
        with grpc.insecure_channel(srv.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(_request(), timeout=30).model_spec.version.value == 2
    finally:
        srv.stop(grace=1)


def _self_signed_cert(tmp_path):
    import subprocess

    key, cert = tmp_path / "server.key", tmp_path / "server.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_tls_with_a_self_signed_certificate(exported, tmp_path):
    """ssl_server_credentials: a stock stub over a TLS channel trusting the certificate is served; a
    plaintext channel is not."""
    from finegrain_tf.serving.server import DevModelServer, ssl_credentials

    export_dir, _, _ = exported
    shutil.copytree(export_dir, tmp_path / MODEL_NAME / "1")
    cert, key = _self_signed_cert(tmp_path)
    srv = DevModelServer(ModelConfig(MODEL_NAME, str(tmp_path / MODEL_NAME)), port=0, host="localhost",
                         enable_warmup=False, credentials=ssl_credentials(cert, key)).start()
    try:
        with open(cert, "rb") as f:
            secure = grpc.secure_channel(srv.target, grpc.ssl_channel_credentials(root_certificates=f.read()))
        with secure:
            response = prediction_service_pb2_grpc.PredictionServiceStub(secure).Predict(_request(), timeout=30)
            assert tf.make_ndarray(response.outputs["classes"]).shape == (1, TOP_K)
        with grpc.insecure_channel(srv.target) as plain:
            with pytest.raises(grpc.RpcError) as info:
                prediction_service_pb2_grpc.PredictionServiceStub(plain).Predict(_request(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(grace=1)


def test_non_loopback_bind_logs_a_warning(exported, tmp_path, caplog):
    from finegrain_tf.serving.server import DevModelServer

    export_dir, _, _ = exported
    shutil.copytree(export_dir, tmp_path / MODEL_NAME / "1")
    srv = DevModelServer(ModelConfig(MODEL_NAME, str(tmp_path / MODEL_NAME)), port=0, host="0.0.0.0",
                         enable_warmup=False)
    with caplog.at_level("WARNING"):
        srv.start()
    srv.stop(grace=1)
    assert any("non-loopback address 0.0.0.0" in r.getMessage() and "no TLS" in r.getMessage()
               for r in caplog.records)
