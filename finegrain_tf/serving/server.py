"""A development/test harness that speaks TF Serving's gRPC (and REST) protocol — not a production server.

`DevModelServer` implements `tensorflow.serving.PredictionService` (Predict, Classify, GetModelMetadata)
and `tensorflow.serving.ModelService` (GetModelStatus) with the real `tensorflow_serving.apis` protos,
plus TF Serving's REST API on a second port (rest.py), over the TF Serving directory layout
(`<model_base_path>/<integer version>/saved_model.pb`), for one model or the several of a
`--model_config_file` (model_config.py). Versions are loaded through the TF1 session loader like
`tensorflow_model_server` does, hot-swapped and retried after a failed load (manager.py). Bad requests
get INVALID_ARGUMENT / NOT_FOUND with a message naming the problem and the server keeps serving;
`stop(grace)` lets in-flight calls finish.

It exists so that tests, demos and machines without the TF Serving binary can exercise exports over
the real protocol. Production: the stock TF Serving server (export/README.md). It binds loopback by
default, warns when bound to another address, and takes TLS credentials (`ssl_server_credentials`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from concurrent import futures

import grpc
from absl import logging
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from finegrain_tf.serving.manager import ModelManager, ServerCore
from finegrain_tf.serving.model_config import ModelConfig
from finegrain_tf.serving.servable import RequestError, classification_examples
from finegrain_tf.serving.tensors import to_ndarray, to_tensor_proto

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def grpc_options(max_message_bytes: int = MAX_MESSAGE_BYTES):
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def ssl_credentials(cert_file: str, key_file: str, client_ca_file: str | None = None) -> grpc.ServerCredentials:
    """gRPC TLS credentials from PEM files; with `client_ca_file`, clients must present a certificate
    signed by it (mutual TLS)."""
    def read(path, what):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ValueError(f"cannot read the {what} {path!r}: {e.strerror}") from None

    root = read(client_ca_file, "client CA certificate") if client_ca_file else None
    return grpc.ssl_server_credentials([(read(key_file, "private key"), read(cert_file, "certificate"))],
                                       root_certificates=root, require_client_auth=root is not None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def model_request(model_spec) -> tuple[str, int | None, str | None]:
    """(name, version or None, label or None) of a ModelSpec."""
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    return model_spec.name, version, label


def _answer_spec(spec, request_spec, version: int):
    """The ModelSpec of a response: the model and signature asked for, the version that answered."""
    spec.name = request_spec.name
    spec.version.value = version
    spec.signature_name = request_spec.signature_name or "serving_default"


def _abort(context, error: RequestError):
    context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL), error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    def _run(self, method: str, request, context, work):
        """(work(servable), version) on the version the request names; aborts the call on a RequestError."""
        name, version, label = model_request(request.model_spec)
        try:
            with self.core.acquire(name, version, label) as servable:
                return work(servable), servable.version
        except RequestError as e:
            logging.info("%s refused (%s): %s", method, e.code, e.message)
            _abort(context, e)

    def Predict(self, request, context):
        signature = request.model_spec.signature_name or "serving_default"

        def work(servable):
            inputs = {key: to_ndarray(proto, key) for key, proto in request.inputs.items()}
            return servable.run(signature, inputs, list(request.output_filter) or None)

        outputs, version = self._run("Predict", request, context, work)
        response = predict_pb2.PredictResponse()
        _answer_spec(response.model_spec, request.model_spec, version)
        for key, value in outputs.items():
            to_tensor_proto(value, response.outputs[key])
        return response

    def Classify(self, request, context):
        signature = request.model_spec.signature_name or "serving_default"

        def work(servable):
            examples = classification_examples(request.input)
            return len(examples), servable.classify(signature, examples)

        (batch, outputs), version = self._run("Classify", request, context, work)
        response = classification_pb2.ClassificationResponse()
        _answer_spec(response.model_spec, request.model_spec, version)
        fill_classification_result(response.result, outputs, batch)
        return response

    def GetModelMetadata(self, request, context):
        name, version, label = model_request(request.model_spec)
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise RequestError("INVALID_ARGUMENT", "GetModelMetadataRequest must name at least one "
                                   "metadata_field (\"signature_def\")")
            unknown = [f for f in fields if f != "signature_def"]
            if unknown:
                raise RequestError("INVALID_ARGUMENT", f"unsupported metadata_field {unknown}; only "
                                   "\"signature_def\" is available")
            with self.core.acquire(name, version, label) as servable:
                response = model_metadata(servable, name)
        except RequestError as e:
            _abort(context, e)
        return response


def fill_classification_result(result, outputs: dict, batch: int):
    """ClassificationResult from the signature's `classes` [B, k] (bytes) and `scores` [B, k]."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for i in range(batch):
        row = result.classifications.add()
        width = (classes if classes is not None else scores).shape[1]
        for j in range(width):
            entry = row.classes.add()
            if classes is not None:
                entry.label = classes[i, j].decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[i, j])


def model_metadata(servable, name: str) -> get_model_metadata_pb2.GetModelMetadataResponse:
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for sig_name, sig in servable.signatures.items():
        sig_map.signature_def[sig_name].CopyFrom(sig)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = servable.version
    response.metadata["signature_def"].Pack(sig_map)
    return response


def model_status(core: ServerCore, name: str, version: int | None, label: str | None = None):
    """GetModelStatusResponse for a model (all versions, or the one named by number or label)."""
    manager = core.manager(name)
    if label:
        if label not in manager.config.labels:
            raise RequestError("NOT_FOUND", f"model {name!r} has no version label {label!r}")
        version = manager.config.labels[label]
    statuses = manager.status(version)
    if not statuses:
        what = f"version {version} of model {name!r}" if version else f"any version of model {name!r}"
        raise RequestError("NOT_FOUND", f"no status for {what}")
    response = get_model_status_pb2.GetModelStatusResponse()
    for v, state, message in statuses:
        status = response.model_version_status.add(version=v, state=state)
        status.status.SetInParent()  # OK unless the version failed to load (INTERNAL + the error)
        if message:
            status.status.error_code = 13
            status.status.error_message = message
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    def GetModelStatus(self, request, context):
        try:
            return model_status(self.core, *model_request(request.model_spec))
        except RequestError as e:
            _abort(context, e)


@dataclasses.dataclass(frozen=True)
class GrpcEndpoint:
    """Where the gRPC service listens: `host`, `port` (0 = a free one), TLS `credentials` (None = plaintext)."""

    host: str = "127.0.0.1"
    port: int = 0
    credentials: grpc.ServerCredentials | None = None

    def bind(self, server: grpc.Server) -> int:
        """Adds this endpoint to `server`; returns the bound port. Warns when not loopback."""
        address = f"{self.host}:{self.port}"
        if self.credentials is not None:
            bound = server.add_secure_port(address, self.credentials)
        else:
            bound = server.add_insecure_port(address)
        if not bound:
            raise RuntimeError(f"could not bind {address}")
        if not is_loopback(self.host):
            logging.warning("dev server bound to non-loopback address %s (%s): anyone who can reach it can "
                            "query the models without authentication. It is a test harness; use the stock "
                            "TF Serving server behind your own authentication off-host.", self.host,
                            "TLS on" if self.credentials is not None else "plaintext, no TLS")
        return bound


class DevModelServer:
    """gRPC PredictionService + ModelService (and optionally REST) for models in TF Serving layout.

    Args:
        models: a `ModelConfig` or a list of them (`read_model_config` reads a --model_config_file).
        port: gRPC port; 0 picks a free one (see `.port` after `start()`).
        host: interface to bind; loopback by default (another address logs a warning).
        rest_api_port: also serve TF Serving's REST API on this port (0 = a free one; None = no REST).
        max_batch_size: larger requests are INVALID_ARGUMENT (0 = unlimited).
        poll_wait_seconds: how often to look for new versions (`--file_system_poll_wait_seconds`).
        enable_warmup: replay `assets.extra/tf_serving_warmup_requests` before serving a version.
        max_workers: gRPC handler threads.
        num_threads: session intra/inter-op threads (0 = TF default).
        max_num_load_retries, load_retry_interval: retries of a failed version load (see manager.py).
        credentials: `grpc.ServerCredentials` (see `ssl_credentials`) for TLS; None = plaintext.
    """

    def __init__(self, models: ModelConfig | list[ModelConfig], port: int = 0, host: str = "127.0.0.1",
                 rest_api_port: int | None = None, max_batch_size: int = 64, poll_wait_seconds: float = 1.0,
                 enable_warmup: bool = True, max_workers: int = 8, num_threads: int = 0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, max_num_load_retries: int = 5,
                 load_retry_interval: float = 60.0, credentials: grpc.ServerCredentials | None = None):
        models = [models] if isinstance(models, ModelConfig) else list(models)
        if not models:
            raise ValueError("DevModelServer needs at least one model")
        self.core = ServerCore([ModelManager(m, max_batch_size, enable_warmup, num_threads, max_num_load_retries,
                                             load_retry_interval) for m in models])
        self.endpoint = GrpcEndpoint(host, port, credentials)
        self.port = None  # the bound gRPC port, once started
        self.rest_api_port = rest_api_port
        self.poll_wait_seconds = poll_wait_seconds
        self._rest = None
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                   options=grpc_options(max_message_bytes))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self.core),
                                                                            self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.core), self._server)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)

    def manager(self, name: str | None = None) -> ModelManager:
        """The manager of model `name` (the only model when None)."""
        if name is None and len(self.core.managers) == 1:
            return next(iter(self.core.managers.values()))
        return self.core.manager(name)

    @property
    def target(self) -> str:
        return f"{self.endpoint.host}:{self.port}"

    def start(self, wait_for_model: bool = True):
        """Binds, loads the wanted versions (if any) and starts the version poller (and REST)."""
        self.port = self.endpoint.bind(self._server)
        if wait_for_model:
            self.core.poll()
        self._server.start()
        if self.rest_api_port is not None:
            from finegrain_tf.serving.rest import RestServer

            self._rest = RestServer(self.core, self.endpoint.host, self.rest_api_port).start()
            self.rest_api_port = self._rest.port
        self._poller.start()
        logging.info("finegrain dev server for %s on %s%s", sorted(self.core.managers), self.target,
                     f" (REST on port {self.rest_api_port})" if self._rest else "")
        return self

    def _poll_loop(self):
        while not self._stop.wait(self.poll_wait_seconds):
            self.core.poll()

    def stop(self, grace: float = 5.0):
        """Stops accepting calls, lets in-flight ones finish (up to `grace` s), unloads the models."""
        self._stop.set()
        if self._rest is not None:
            self._rest.stop()
        self._server.stop(grace).wait()
        if self._poller.is_alive():
            self._poller.join(timeout=5)
        self.core.close()

    def wait_for_termination(self, timeout=None):
        return self._server.wait_for_termination(timeout)

    def __enter__(self):
        return self.start() if self.port is None else self

    def __exit__(self, *exc):
        self.stop()

