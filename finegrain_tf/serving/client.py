"""Clients for TF Serving (or the `finegrain-serve` harness): gRPC (`Client`: Predict, Classify,
GetModelMetadata, GetModelStatus) and REST (`RestClient`: :predict, :classify, status).

    with Client("localhost:8500", "finegrain") as client:
        client.classify([open("bird.jpg", "rb").read()])   # {"classes", "class_names", "scores"}
        client.embed(list_of_bytes)                          # [N, D] float32, unit rows
        client.lookup(list_of_bytes, k=3)                    # {"ids": [N, k] str, "distances": [N, k]}

Every call has a deadline (`timeout` seconds per attempt); UNAVAILABLE (server starting, restarting,
connection refused) is retried `max_retries` times with exponential backoff and jitter; other errors
raise `grpc.RpcError` at once (they will not get better by retrying). Inputs larger than
`max_batch_size` are split into requests of at most that size, sent concurrently, and the outputs
concatenated in order.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import time
import urllib.error
import urllib.request
from typing import Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, input_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from finegrain_tf.serving.tensors import to_ndarray, to_tensor_proto

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


def _decode_strings(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b,
                            otypes=[object])(array) if array.size else array
    return array


def _as_batch(images):
    """list of bytes -> object array [N]; numpy images -> as is."""
    if isinstance(images, (bytes, str)):
        raise ValueError("images must be a batch: a list of encoded images or an array [N, H, W, 3]")
    if isinstance(images, np.ndarray):
        return images
    images = list(images)
    if images and not isinstance(images[0], (bytes, np.bytes_)):
        return np.asarray(images)
    return np.array(images, dtype=object)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retries on UNAVAILABLE: up to `max_retries`, the n-th (from 0) after
    min(max_backoff, initial_backoff * 2**n) seconds with +-50 % jitter."""

    max_retries: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0

    def __post_init__(self):
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff, self.initial_backoff * (2 ** attempt))
        return delay * random.uniform(0.5, 1.5)


class Client:
    """A TF Serving gRPC client for one model.

    Args:
        target: "host:port" of the gRPC endpoint (TF Serving's --port, default 8500).
        model_name: `model_spec.name`.
        version: pin a model version (None = the server's latest).
        timeout: deadline in seconds of each RPC attempt.
        max_retries: retries on UNAVAILABLE; backoff starts at `initial_backoff` s, doubles, is capped at
            `max_backoff` s, with +-50 % jitter (held as `.retry`, a `RetryPolicy`).
        max_batch_size: split larger inputs into chunks of this many examples (0 = never split).
    """

    def __init__(self, target: str, model_name: str, *, version: int | None = None, timeout: float = 30.0,
                 max_retries: int = 3, initial_backoff: float = 0.1, max_backoff: float = 2.0,
                 max_batch_size: int = 32, channel=None, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.retry = RetryPolicy(max_retries, initial_backoff, max_backoff)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.target = target
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self.max_batch_size = max_batch_size
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", max_message_bytes),
                             ("grpc.max_receive_message_length", max_message_bytes)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.retries = 0  # total retries performed (for diagnostics)
        self.last_version = None  # model version that answered the last predict()

    # -- plumbing ---------------------------------------------------------------------------------
    def _model_spec(self, spec, signature_name=None):
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)
        if signature_name is not None:
            spec.signature_name = signature_name

    def _call(self, method, request, future=None):
        """One RPC with a deadline, retried on UNAVAILABLE; `future` is an attempt already in flight."""
        attempt = 0
        while True:
            try:
                if future is not None:
                    pending, future = future, None
                    return pending.result()
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or attempt >= self.retry.max_retries:
                    raise
                time.sleep(self.retry.backoff(attempt))
                attempt += 1
                self.retries += 1

    # -- PredictionService ------------------------------------------------------------------------
    def _request(self, inputs: Mapping[str, np.ndarray], signature_name, output_filter):
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name)
        for key, value in inputs.items():
            to_tensor_proto(value, request.inputs[key])
        if output_filter:
            request.output_filter.extend(output_filter)
        return request

    def predict(self, inputs: Mapping[str, object], signature_name: str = "serving_default",
                output_filter: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Predict on a signature; inputs {key: array with batch first}; returns {output key: array}.

        Inputs larger than `max_batch_size` go as several concurrent requests, concatenated back in order.
        """
        arrays = {k: _as_batch(v) if not isinstance(v, np.ndarray) else v for k, v in inputs.items()}
        sizes = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
        n = max(sizes) if sizes else 0
        step = self.max_batch_size if self.max_batch_size and n > self.max_batch_size else max(n, 1)
        if len(sizes) > 1 and step < n:
            raise ValueError(f"inputs have different batch sizes {sorted(sizes)}; cannot split them")
        requests = [self._request({k: a[i:i + step] if a.ndim else a for k, a in arrays.items()},
                                  signature_name, output_filter) for i in range(0, max(n, 1), step)]
        if len(requests) == 1:
            responses = [self._call(self.prediction.Predict, requests[0])]
        else:
            pending = [self.prediction.Predict.future(r, timeout=self.timeout) for r in requests]
            responses = [self._call(self.prediction.Predict, r, f) for f, r in zip(pending, requests)]
        self.last_version = responses[-1].model_spec.version.value
        outputs = {}
        for key in responses[0].outputs:
            parts = [to_ndarray(r.outputs[key], key) for r in responses]
            outputs[key] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return outputs

    def classify(self, images, signature_name: str | None = None) -> dict[str, np.ndarray]:
        """Top-k classes of a batch: encoded images (list of bytes) or pixels [N, H, W, 3] (uint8 or float
        in [0, 255]). Returns {"classes": int [N, k], "class_names": str [N, k], "scores": float [N, k]}."""
        batch = _as_batch(images)
        if signature_name is None:
            if batch.dtype == object:
                signature_name = "classify"
            elif batch.dtype == np.uint8:
                signature_name = "classify_tensor_uint8"
            else:
                signature_name = "classify_tensor"
                batch = batch.astype(np.float32)
        out = self.predict({"images": batch}, signature_name)
        out["class_names"] = _decode_strings(out["class_names"])
        return out

    def embed(self, images) -> np.ndarray:
        """L2-normalised embeddings [N, D] of encoded images."""
        return self.predict({"images": _as_batch(images)}, "embed")["embeddings"]

    def lookup(self, images, k: int | None = None) -> dict[str, np.ndarray]:
        """Nearest gallery items of encoded images: {"ids": str [N, k], "distances": float [N, k]} (ascending).

        `k` must not exceed the top-k baked into the export."""
        out = self.predict({"images": _as_batch(images)}, "lookup")
        if k is not None:
            if k < 1 or k > out["ids"].shape[1]:
                raise ValueError(f"k={k} outside [1, {out['ids'].shape[1]}] (the export's top_k / gallery size)")
            out = {key: value[:, :k] for key, value in out.items()}
        out["ids"] = _decode_strings(out["ids"])
        return out

    def classify_examples(self, images, signature_name: str = "classify_examples") -> list[list[tuple[str, float]]]:
        """TF Serving's Classify RPC on encoded images (sent as tf.Examples with `image/encoded`);
        returns [[(label, score), ...] per image]."""
        from finegrain_tf.serving.warmup import image_example

        request = classification_pb2.ClassificationRequest(input=input_pb2.Input(
            example_list=input_pb2.ExampleList(examples=[image_example(b) for b in images])))
        self._model_spec(request.model_spec, signature_name)
        response = self._call(self.prediction.Classify, request)
        self.last_version = response.model_spec.version.value
        return [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]

    def metadata(self) -> dict[str, dict]:
        """{signature: {"inputs": {key: (dtype, shape)}, "outputs": {...}}} from GetModelMetadata."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._call(self.prediction.GetModelMetadata, request)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)

        def describe(infos):
            return {k: (tf.dtypes.as_dtype(v.dtype).name,
                        None if v.tensor_shape.unknown_rank else
                        [None if d.size < 0 else d.size for d in v.tensor_shape.dim]) for k, v in infos.items()}

        return {name: {"inputs": describe(sig.inputs), "outputs": describe(sig.outputs)}
                for name, sig in sig_map.signature_def.items() if not name.startswith("__")}

    # -- ModelService -----------------------------------------------------------------------------
    def model_status(self) -> list[dict]:
        """[{"version", "state" (e.g. "AVAILABLE"), "error"}] from ModelService.GetModelStatus."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call(self.models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [{"version": s.version, "state": states.Name(s.state), "error": s.status.error_message}
                for s in response.model_version_status]

    def wait_until_available(self, timeout: float = 60.0, poll: float = 0.2) -> int:
        """Blocks until some version is AVAILABLE; returns it. Raises TimeoutError, or RuntimeError when
        every version the server tried failed to load."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                statuses = self.model_status()
                for s in statuses:
                    if s["state"] == "AVAILABLE":
                        return s["version"]
                failed = [s for s in statuses if s["error"]]
                if failed and all(s["state"] == "END" for s in statuses):
                    raise RuntimeError(f"model {self.model_name!r} failed to load: {failed[-1]['error']}")
            except grpc.RpcError as e:
                last = e
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            time.sleep(poll)
        raise TimeoutError(f"model {self.model_name!r} not available at {self.target} after {timeout}s"
                           + (f" (last error: {last.code().name})" if last else ""))

    def close(self):
        if self._own_channel:
            self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RestError(Exception):
    """An error answer of the REST API: `status` (HTTP code) and the server's `{"error": ...}` message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _b64(value: bytes) -> dict:
    return {"b64": base64.b64encode(value).decode("ascii")}


class RestClient:
    """A TF Serving REST client for one model (`--rest_api_port`, default 8501), stdlib only.

    Args:
        url: "http://host:port".
        model_name: the model; `version` or `label` pin a version (default: the latest).
        timeout: seconds per request.
    """

    def __init__(self, url: str, model_name: str, *, version: int | None = None, label: str | None = None,
                 timeout: float = 30.0):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.base = f"{url.rstrip('/')}/v1/models/{model_name}"
        if version is not None:
            self.base += f"/versions/{int(version)}"
        elif label:
            self.base += f"/labels/{label}"
        self.timeout = timeout

    def _request(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method="POST" if data else "GET",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                message = json.loads(text).get("error", text)
            except (json.JSONDecodeError, AttributeError):
                message = text
            raise RestError(e.code, message) from None

    def predict(self, inputs: dict, signature_name: str = "serving_default") -> dict[str, np.ndarray]:
        """Columnar :predict; byte strings travel as {"b64": ...}. Returns {output: array}."""
        def encode(value):
            value = _as_batch(value) if isinstance(value, (list, tuple)) else np.asarray(value)
            if value.dtype == object:
                return [_b64(v) if isinstance(v, bytes) else v for v in value.tolist()]
            return value.tolist()

        out = self._request(":predict", {"signature_name": signature_name,
                                         "inputs": {k: encode(v) for k, v in inputs.items()}})["outputs"]
        if not isinstance(out, dict):  # a single output comes unnamed
            out = {"output": out}
        return {k: np.asarray(v, dtype=object if _is_text(v) else None) for k, v in out.items()}

    def classify(self, images, signature_name: str | None = None) -> dict[str, np.ndarray]:
        return self.predict({"images": images}, signature_name or "classify")

    def embed(self, images) -> np.ndarray:
        return np.asarray(self.predict({"images": images}, "embed")["embeddings"], np.float32)

    def lookup(self, images, k: int | None = None) -> dict[str, np.ndarray]:
        out = self.predict({"images": images}, "lookup")
        return {key: value[:, :k] for key, value in out.items()} if k else out

    def classify_examples(self, images, signature_name: str = "classify_examples") -> list[list[tuple[str, float]]]:
        body = {"signature_name": signature_name, "examples": [{"image/encoded": _b64(b)} for b in images]}
        return [[(label, score) for label, score in row] for row in self._request(":classify", body)["results"]]

    def model_status(self) -> list[dict]:
        return [{"version": int(s["version"]), "state": s["state"], "error": s["status"].get("error_message", "")}
                for s in self._request("")["model_version_status"]]

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_text(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str)


def format_table(paths, signature, outputs, k=None) -> str:
    """Rows `image  rank  label  value` for classify/lookup; `image  dim  norm  first values` for embed."""
    rows = []
    if signature == "embed":
        header = ("image", "dim", "norm", "first values")
        for path, e in zip(paths, outputs["embeddings"]):
            rows.append((path, str(e.shape[0]), f"{float((e ** 2).sum()) ** 0.5:.4f}",
                         " ".join(f"{v:+.3f}" for v in e[:4])))
    else:
        labels, values, header = (("class_names", "scores", ("image", "rank", "class", "score"))
                                  if signature != "lookup" else ("ids", "distances", ("image", "rank", "id", "distance")))
        for path, names, vals in zip(paths, outputs[labels], outputs[values]):
            for rank, (name, val) in enumerate(list(zip(names, vals))[:k or None], 1):
                name = name.decode() if isinstance(name, bytes) else str(name)
                rows.append((path, str(rank), name, f"{float(val):.4f}"))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
