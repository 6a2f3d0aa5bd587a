"""Client retries, deadlines and batching against a scripted fake PredictionService (no model needed)."""

import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


class FakePrediction(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Fails the first `failures` calls with `code`, optionally blocks, then echoes the batch size."""

    def __init__(self, failures=0, code=grpc.StatusCode.UNAVAILABLE, block=None):
        self.failures = failures
        self.code = code
        self.block = block
        self.calls = 0
        self.batches = []
        self.lock = threading.Lock()

    def Predict(self, request, context):
        with self.lock:
            self.calls += 1
            fail = self.calls <= self.failures
        if fail:
            context.abort(self.code, f"scripted failure {self.calls}")
        if self.block is not None:
            self.block.wait(10)
        x = tf.make_ndarray(request.inputs["x"])
        with self.lock:
            self.batches.append(x.shape[0])
        response = predict_pb2.PredictResponse()
        response.outputs["y"].CopyFrom(tf.make_tensor_proto(x * 2))
        return response


@pytest.fixture
def fake():
    servicer = FakePrediction()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    if servicer.block is not None:
        servicer.block.set()
    server.stop(0)


def test_retries_unavailable_with_backoff(fake):
    from finegrain_tf.serving import Client

    servicer, target = fake
    servicer.failures = 2
    with Client(target, "m", max_retries=3, initial_backoff=0.01) as client:
        out = client.predict({"x": np.arange(3, dtype=np.float32)})
    np.testing.assert_array_equal(out["y"], [0, 2, 4])
    assert servicer.calls == 3 and client.retries == 2


def test_gives_up_after_max_retries(fake):
    from finegrain_tf.serving import Client

    servicer, target = fake
    servicer.failures = 10
    with Client(target, "m", max_retries=2, initial_backoff=0.01) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.predict({"x": np.ones(2, np.float32)})
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 3


def test_invalid_argument_is_not_retried(fake):
    from finegrain_tf.serving import Client

    servicer, target = fake
    servicer.failures, servicer.code = 1, grpc.StatusCode.INVALID_ARGUMENT
    with Client(target, "m", max_retries=3, initial_backoff=0.01) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.predict({"x": np.ones(2, np.float32)})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and servicer.calls == 1


def test_deadline_is_applied(fake):
    from finegrain_tf.serving import Client

    servicer, target = fake
    servicer.block = threading.Event()
    with Client(target, "m", timeout=0.2, max_retries=0) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.predict({"x": np.ones(2, np.float32)})
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_batching_splits_and_keeps_order(fake):
    from finegrain_tf.serving import Client

    servicer, target = fake
    x = np.arange(10, dtype=np.float32)
    with Client(target, "m", max_batch_size=4) as client:
        out = client.predict({"x": x})
    np.testing.assert_array_equal(out["y"], 2 * x)
    assert sorted(servicer.batches) == [2, 4, 4]


def test_unreachable_server_raises_unavailable_after_retries():
    import socket

    from finegrain_tf.serving import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", "m", max_retries=1, initial_backoff=0.01, timeout=5) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.predict({"x": np.ones(1, np.float32)})
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and client.retries == 1


def test_client_argument_validation():
    from finegrain_tf.serving import Client

    with pytest.raises(ValueError, match="max_retries"):
        Client("127.0.0.1:1", "m", max_retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        Client("127.0.0.1:1", "m", timeout=0)


def test_predict_table_format():
    from finegrain_tf.serving.client import format_table

    text = format_table(["a.jpg", "b.png"], "classify",
                        {"class_names": np.array([[b"x", b"y"], [b"z", b"w"]], dtype=object),
                         "scores": np.array([[0.9, 0.1], [0.6, 0.4]])}, k=1)
    lines = text.splitlines()
    assert lines[0].split() == ["image", "rank", "class", "score"]
    assert lines[2].split() == ["a.jpg", "1", "x", "0.9000"] and lines[3].split() == ["b.png", "1", "z", "0.6000"]
    assert len(lines) == 4
