"""A development model server that speaks TF Serving's gRPC protocol for one model.

`DevModelServer` implements `tensorflow.serving.PredictionService` (Predict, GetModelMetadata) and
`tensorflow.serving.ModelService` (GetModelStatus) with the real `tensorflow_serving.apis` protos, over
the TF Serving directory layout (`<model_base_path>/<integer version>/saved_model.pb`):

- loads through the TF1 session loader (`SessionServable`), like `tensorflow_model_server`;
- latest-version policy: a poller picks up a new, higher version directory (or falls back to the
  highest remaining one when the served directory is removed), replays its warmup file, then swaps it in; requests already running on the old version finish on it (reference counted),
  and the old session is closed once the last of them returns;
- bad requests -> INVALID_ARGUMENT / NOT_FOUND with a message naming the problem; the server keeps serving;
- `stop(grace)` (SIGTERM in `finegrain-serve`) stops accepting calls and lets in-flight ones finish.

It is a stand-in for tests and demos, not a production server: use the official TF Serving image for
that (export/README.md). `start_server_process` runs `finegrain-serve` in a subprocess and waits until
the model is AVAILABLE.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc, predict_pb2)

from finegrain_tf.serving.servable import RequestError, SessionServable

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_State = get_model_status_pb2.ModelVersionStatus.State


def grpc_options(max_message_bytes: int = MAX_MESSAGE_BYTES):
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


class _Loaded:
    """A loaded version and the number of requests running on it."""

    def __init__(self, servable: SessionServable):
        self.servable = servable
        self.inflight = 0
        self.retired = False


class ModelManager:
    """Latest-version loading and hot swap for one model directory (`<base>/<model_name>`)."""

    def __init__(self, model_name: str, model_base_path: str, max_batch_size: int = 0,
                 enable_warmup: bool = True, num_threads: int = 0):
        self.model_name = model_name
        self.model_base_path = model_base_path
        self.max_batch_size = max_batch_size
        self.enable_warmup = enable_warmup
        self.num_threads = num_threads
        self._lock = threading.Lock()
        self._current: _Loaded | None = None
        self._status: dict[int, tuple[int, str]] = {}  # version -> (state, error message)
        self._failed: set[int] = set()

    def available_versions(self) -> list[int]:
        if not os.path.isdir(self.model_base_path):
            return []
        return sorted(int(d) for d in os.listdir(self.model_base_path)
                      if d.isdigit() and os.path.exists(os.path.join(self.model_base_path, d, "saved_model.pb")))

    @property
    def current_version(self) -> int | None:
        current = self._current
        return current.servable.version if current else None

    def poll(self) -> bool:
        """Serves the highest version on disk: loads it if it differs from the served one (a newer
        directory, or a rollback after the served directory was removed); True if it swapped."""
        versions = [v for v in self.available_versions() if v not in self._failed]
        if not versions or versions[-1] == self.current_version:
            return False
        version = versions[-1]
        path = os.path.join(self.model_base_path, str(version))
        self._status[version] = (_State.LOADING, "")
        logging.info("loading %s version %d from %s", self.model_name, version, path)
        try:
            servable = SessionServable(path, max_batch_size=self.max_batch_size, num_threads=self.num_threads)
            if self.enable_warmup:
                count = servable.warmup()
                logging.info("replayed %d warmup request(s) for version %d", count, version)
        except Exception as e:  # a bad version must not take the server down
            logging.error("failed to load %s version %d: %s", self.model_name, version, e)
            self._failed.add(version)
            self._status[version] = (_State.END, f"load failed: {e}")
            return False
        with self._lock:
            old = self._current
            self._current = _Loaded(servable)
            self._status[version] = (_State.AVAILABLE, "")
            close_now = False
            if old is not None:
                old.retired = True
                self._status[old.servable.version] = (_State.UNLOADING, "")
                close_now = old.inflight == 0
        if old is not None and close_now:
            self._unload(old)
        logging.info("serving %s version %d", self.model_name, version)
        return True

    def _unload(self, loaded: _Loaded):
        loaded.servable.close()
        self._status[loaded.servable.version] = (_State.END, "")

    @contextlib.contextmanager
    def acquire(self, model_name: str, version: int | None = None):
        """Yields the servable for a request; the version stays loaded until the block exits."""
        if model_name != self.model_name:
            raise RequestError("NOT_FOUND", f"model {model_name!r} not found; this server serves "
                               f"{self.model_name!r}")
        with self._lock:
            loaded = self._current
            if loaded is None:
                raise RequestError("NOT_FOUND", f"no version of model {model_name!r} is loaded yet "
                                   f"(looking in {self.model_base_path})")
            if version and version != loaded.servable.version:
                raise RequestError("NOT_FOUND", f"version {version} of model {model_name!r} is not available; "
                                   f"serving version {loaded.servable.version}")
            loaded.inflight += 1
        try:
            yield loaded.servable
        finally:
            with self._lock:
                loaded.inflight -= 1
                close_now = loaded.retired and loaded.inflight == 0
            if close_now:
                self._unload(loaded)

    def status(self) -> list[tuple[int, int, str]]:
        return sorted((v, s, m) for v, (s, m) in self._status.items())

    def close(self):
        with self._lock:
            loaded, self._current = self._current, None
        if loaded is not None:
            self._unload(loaded)


def _abort(context, error: RequestError):
    context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL), error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        try:
            version = request.model_spec.version.value if request.model_spec.HasField("version") else None
            signature = request.model_spec.signature_name or "serving_default"
            inputs = {}
            for key, proto in request.inputs.items():
                try:
                    inputs[key] = tf.make_ndarray(proto)
                except Exception as e:  # malformed TensorProto
                    raise RequestError("INVALID_ARGUMENT", f"input {key!r}: malformed TensorProto ({e})") from None
            with self.manager.acquire(request.model_spec.name, version) as servable:
                outputs = servable.run(signature, inputs, list(request.output_filter) or None)
                served_version = servable.version
        except RequestError as e:
            logging.info("Predict refused (%s): %s", e.code, e.message)
            _abort(context, e)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.manager.model_name
        response.model_spec.version.value = served_version
        response.model_spec.signature_name = signature
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        return response

    def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise RequestError("INVALID_ARGUMENT", "GetModelMetadataRequest must name at least one "
                                   "metadata_field (\"signature_def\")")
            unknown = [f for f in fields if f != "signature_def"]
            if unknown:
                raise RequestError("INVALID_ARGUMENT", f"unsupported metadata_field {unknown}; only "
                                   "\"signature_def\" is available")
            version = request.model_spec.version.value if request.model_spec.HasField("version") else None
            with self.manager.acquire(request.model_spec.name, version) as servable:
                sig_map = get_model_metadata_pb2.SignatureDefMap()
                for name, sig in servable.signatures.items():
                    sig_map.signature_def[name].CopyFrom(sig)
                served_version = servable.version
        except RequestError as e:
            _abort(context, e)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.manager.model_name
        response.model_spec.version.value = served_version
        response.metadata["signature_def"].Pack(sig_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        name = request.model_spec.name
        if name != self.manager.model_name:
            _abort(context, RequestError("NOT_FOUND", f"model {name!r} not found; this server serves "
                                         f"{self.manager.model_name!r}"))
        wanted = request.model_spec.version.value if request.model_spec.HasField("version") else None
        statuses = [s for s in self.manager.status() if wanted is None or s[0] == wanted]
        if not statuses:
            what = f"version {wanted} of model {name!r}" if wanted else f"any version of model {name!r}"
            _abort(context, RequestError("NOT_FOUND", f"no status for {what}"))
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, message in statuses:
            status = response.model_version_status.add(version=version, state=state)
            if message:
                status.status.error_code = 13  # INTERNAL: the version failed to load
                status.status.error_message = message
        return response


class DevModelServer:
    """gRPC PredictionService + ModelService for one model in TF Serving layout.

    Args:
        model_name: the name clients put in `model_spec.name`.
        model_base_path: the directory holding integer version subdirectories (`<base>/<model_name>`).
        port: 0 picks a free port (see `.port` after `start()`).
        host: interface to bind; loopback by default.
        max_batch_size: larger requests are INVALID_ARGUMENT (0 = unlimited).
        poll_wait_seconds: how often to look for a new version (`--file_system_poll_wait_seconds`).
        enable_warmup: replay `assets.extra/tf_serving_warmup_requests` before serving a version.
        max_workers: gRPC handler threads.
    """

    def __init__(self, model_name: str, model_base_path: str, port: int = 0, host: str = "127.0.0.1",
                 max_batch_size: int = 64, poll_wait_seconds: float = 1.0, enable_warmup: bool = True,
                 max_workers: int = 8, num_threads: int = 0, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.manager = ModelManager(model_name, model_base_path, max_batch_size, enable_warmup, num_threads)
        self.host = host
        self.requested_port = port
        self.port = None
        self.poll_wait_seconds = poll_wait_seconds
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                   options=grpc_options(max_message_bytes))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self.manager),
                                                                            self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.manager), self._server)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, wait_for_model: bool = True):
        """Binds, loads the latest version (if any) and starts the version poller."""
        self.port = self._server.add_insecure_port(f"{self.host}:{self.requested_port}")
        if not self.port:
            raise RuntimeError(f"could not bind {self.host}:{self.requested_port}")
        if wait_for_model:
            self.manager.poll()
        self._server.start()
        self._poller.start()
        logging.info("finegrain dev server for %r on %s", self.manager.model_name, self.target)
        return self

    def _poll_loop(self):
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.manager.poll()
            except Exception as e:  # keep polling whatever happens
                logging.error("version poll failed: %s", e)

    def stop(self, grace: float = 5.0):
        """Stops accepting calls, lets in-flight ones finish (up to `grace` s), unloads the model."""
        self._stop.set()
        self._server.stop(grace).wait()
        if self._poller.is_alive():
            self._poller.join(timeout=5)
        self.manager.close()

    def wait_for_termination(self, timeout=None):
        return self._server.wait_for_termination(timeout)

    def __enter__(self):
        return self.start() if self.port is None else self

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------------------------------------------
# Subprocess helper (demo, tests)


class ServerProcess:
    """A `finegrain-serve` subprocess; `.target` is its "host:port"."""

    def __init__(self, process: subprocess.Popen, target: str, log_path: str):
        self.process = process
        self.target = target
        self.log_path = log_path

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_server_process(model_base_path: str, model_name: str, port: int = 0, host: str = "127.0.0.1",
                         extra_flags=(), timeout: float = 180.0, env=None) -> ServerProcess:
    """Starts `finegrain-serve` (`python -m finegrain_tf.serving.server_main`) and waits until the model
    is AVAILABLE. `model_base_path` is `<base>/<model_name>` (as for tensorflow_model_server)."""
    from finegrain_tf.serving.client import Client

    workdir = tempfile.mkdtemp(prefix="finegrain-serve-")
    port_file = os.path.join(workdir, "port")
    log_path = os.path.join(workdir, "server.log")
    cmd = [sys.executable, "-m", "finegrain_tf.serving.server_main", f"--port={port}", f"--host={host}",
           f"--model_name={model_name}", f"--model_base_path={model_base_path}", f"--port_file={port_file}",
           *extra_flags]
    env = dict(os.environ if env is None else env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log = open(log_path, "w")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    deadline = time.monotonic() + timeout
    server = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if os.path.exists(port_file):
            with open(port_file) as f:
                text = f.read().strip()
            if text:
                server = ServerProcess(process, f"{host}:{int(text)}", log_path)
                break
        time.sleep(0.1)
    if server is not None:
        with Client(server.target, model_name, timeout=5.0, max_retries=0) as client:
            try:
                client.wait_until_available(timeout=max(1.0, deadline - time.monotonic()))
                return server
            except (TimeoutError, RuntimeError, grpc.RpcError) as e:
                logging.error("finegrain-serve not ready: %s", e)
    if process.poll() is None:
        process.kill()
        process.wait()
    with open(log_path, errors="replace") as f:
        tail = f.read()[-3000:]
    raise RuntimeError(f"finegrain-serve did not become ready (exit code {process.returncode}); log:\n{tail}")
