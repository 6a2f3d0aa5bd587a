"""End to end over gRPC on a free loopback port with the real tensorflow_serving stubs."""

import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, model_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving_utils import CLASS_NAMES, IMAGE_SIZE, MODEL_NAME, RESIZE_SIZE, TOP_K, random_images

MAX_BATCH = 4


@pytest.fixture(scope="module")
def server(exported):
    from finegrain_tf.serving.server import DevModelServer

    export_dir, base, _ = exported
    srv = DevModelServer(MODEL_NAME, os.path.join(base, MODEL_NAME), port=0, max_batch_size=MAX_BATCH,
                         poll_wait_seconds=30).start()
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
    from finegrain_tf.serving import export

    export_dir, _, model = exported
    gallery = export.read_gallery(export_dir) if signature == "lookup" else None
    return export.reference_outputs(model, signature, images, IMAGE_SIZE, RESIZE_SIZE, TOP_K, CLASS_NAMES,
                                    gallery)


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
    assert len(requests) == 6
    for request in requests:
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


BAD_REQUESTS = {
    "unknown model": (lambda: _request(model="nope"), grpc.StatusCode.NOT_FOUND, "'nope'"),
    "unknown version": (lambda: _request(version=7), grpc.StatusCode.NOT_FOUND, "version 7"),
    "unknown signature": (lambda: _request(signature="classfy"), grpc.StatusCode.NOT_FOUND, "'classfy'"),
    "missing input": (lambda: _request(key="image"), grpc.StatusCode.INVALID_ARGUMENT, "missing input"),
    "wrong dtype": (lambda: _request(np.zeros([1], np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
                    "dtype string, got float32"),
    "wrong rank": (lambda: _request(np.array([random_images(1)], dtype=object)),
                   grpc.StatusCode.INVALID_ARGUMENT, "rank 1"),
    "tensor rank": (lambda: _request(np.zeros([1, 8, 8], np.float32), signature="classify_tensor"),
                    grpc.StatusCode.INVALID_ARGUMENT, "rank 4"),
    "batch too large": (lambda: _request(np.array(random_images(MAX_BATCH + 1), dtype=object)),
                        grpc.StatusCode.INVALID_ARGUMENT, f"batch size {MAX_BATCH + 1} exceeds"),
    "undecodable image": (lambda: _request(np.array([b"\x89PNG garbage"], dtype=object)),
                          grpc.StatusCode.INVALID_ARGUMENT, "image"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_are_refused_and_server_keeps_serving(stub, case):
    make, code, text = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(make(), timeout=30)
    assert info.value.code() == code, info.value.details()
    assert text.lower() in info.value.details().lower(), info.value.details()
    good = stub.Predict(_request(), timeout=30)
    assert tf.make_ndarray(good.outputs["classes"]).shape == (1, TOP_K)


def test_metadata_request_without_field_is_invalid(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name=MODEL_NAME))
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata_field" in info.value.details()


def test_hot_reload_of_version_2_while_requests_run(exported, tmp_path):
    from finegrain_tf.serving import Client
    from finegrain_tf.serving.server import DevModelServer

    export_dir, _, _ = exported
    model_base = tmp_path / MODEL_NAME
    model_base.mkdir()
    shutil.copytree(export_dir, model_base / "1")
    images = random_images(2, seed=5)
    srv = DevModelServer(MODEL_NAME, str(model_base), port=0, poll_wait_seconds=0.2).start()
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
        while srv.manager.current_version != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        rolled_back = srv.manager.current_version
        srv.stop(grace=1)
    assert not errors, errors[:3]
    assert 1 in versions and versions[-1] == 2
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
    srv = DevModelServer(MODEL_NAME, str(model_base), port=0, enable_warmup=False).start()
    servable_run = srv.manager._current.servable.run
    entered, release = threading.Event(), threading.Event()

    def slow_run(*args, **kwargs):
        entered.set()
        release.wait(30)
        return servable_run(*args, **kwargs)

    srv.manager._current.servable.run = slow_run
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
    srv = DevModelServer(MODEL_NAME, str(model_base), port=0, poll_wait_seconds=0.1, enable_warmup=False).start()
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
