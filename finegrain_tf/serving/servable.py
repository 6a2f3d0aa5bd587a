"""A SavedModel loaded the way TF Serving loads it: the TF1 session loader.

`SessionServable` wraps `tf.compat.v1.saved_model.loader.load` (the C++ `LoadSavedModel` path of
`tensorflow_model_server`) in its own graph and session, validates requests against the signature
defs the way TF Serving's Predict handler does (unknown signature, missing/extra input, dtype, rank,
batch size) and runs them. The dev server, `verify_export` and the load test all use it, so what is
checked here is what the production server would run.
"""

from __future__ import annotations

import os
import threading
from typing import Mapping

import numpy as np
import tensorflow as tf

# grpc status code names by TF error code (both follow google.rpc.Code).
_CODE_NAMES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# Ops that load but cannot run in the C++ model server (they call back into Python).
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def unservable_ops(meta_graph) -> list[str]:
    """Ops of a MetaGraphDef (including its function library) that stock TF Serving cannot run:
    Python callbacks (`tf.py_function`, `tf.numpy_function`) and ops outside the stock op registry
    (custom kernels from `tf.load_op_library`)."""
    library = meta_graph.graph_def.library.function
    functions = {f.signature.name for f in library}
    ops = {n.op for n in meta_graph.graph_def.node}
    for f in library:
        ops.update(n.op for n in f.node_def)
    ops -= functions
    stock = set(dir(tf.raw_ops))
    return sorted(op for op in ops if op in PYTHON_OPS or op not in stock)


class RequestError(Exception):
    """A request the servable refuses; `code` is a grpc status code name (e.g. "INVALID_ARGUMENT")."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _op_error_message(error: tf.errors.OpError) -> str:
    """The informative line of a session error (drops 'Graph execution error:' and node traces)."""
    lines = [l.strip() for l in str(error.message or "").splitlines()]
    lines = [l for l in lines if l and not l.startswith("[[") and l != "Graph execution error:"
             and not l.startswith("Detected at node")]
    text = lines[0] if lines else type(error).__name__
    if "decode" in str(error.message).lower() and "image" not in text.lower():
        text = f"could not decode image: {text}"
    return text


def _as_array(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bytes, str)):
        return np.array(value, dtype=object)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
        return np.array(list(value), dtype=object)
    return np.asarray(value)


def _tf_dtype_of(array: np.ndarray) -> tf.DType:
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return tf.string
    return tf.dtypes.as_dtype(array.dtype)


class SessionServable:
    """One version of a SavedModel loaded through the TF1 session loader.

    Args:
        export_dir: `<base>/<model_name>/<version>` written by `export_model`.
        max_batch_size: > 0 rejects requests whose batch (first) dimension is larger.
        num_threads: intra/inter-op threads for the session (0 = TF default).
    """

    def __init__(self, export_dir: str, max_batch_size: int = 0, num_threads: int = 0):
        if not tf.compat.v1.saved_model.contains_saved_model(export_dir):
            raise ValueError(f"no SavedModel in {export_dir!r}")
        self.export_dir = export_dir
        self.max_batch_size = int(max_batch_size)
        base = os.path.basename(os.path.normpath(export_dir))
        self.version = int(base) if base.isdigit() else 0
        self.graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=num_threads,
                                          inter_op_parallelism_threads=num_threads)
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        with self.graph.as_default():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], export_dir)
        self.signatures = {k: v for k, v in self.meta_graph.signature_def.items() if not k.startswith("__")}
        self._closed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------
    def signature(self, name: str):
        name = name or "serving_default"
        if name not in self.signatures:
            raise RequestError("NOT_FOUND", f"signature {name!r} not found; this model serves "
                               f"{sorted(self.signatures)}")
        return self.signatures[name]

    def validate(self, signature_name: str, inputs: Mapping[str, np.ndarray]):
        """Checks inputs against the signature def; raises RequestError naming the problem."""
        sig = self.signature(signature_name)
        expected = set(sig.inputs)
        given = set(inputs)
        missing = sorted(expected - given)
        extra = sorted(given - expected)
        if missing:
            raise RequestError("INVALID_ARGUMENT", f"signature {signature_name!r}: missing input(s) {missing}; "
                               f"expected inputs {sorted(expected)}")
        if extra:
            raise RequestError("INVALID_ARGUMENT", f"signature {signature_name!r}: unknown input(s) {extra}; "
                               f"expected inputs {sorted(expected)}")
        batch = None
        for key, info in sig.inputs.items():
            array = inputs[key]
            want = tf.dtypes.as_dtype(info.dtype)
            got = _tf_dtype_of(array)
            if got != want:
                raise RequestError("INVALID_ARGUMENT", f"input {key!r} of signature {signature_name!r} expects "
                                   f"dtype {want.name}, got {got.name}")
            if not info.tensor_shape.unknown_rank:
                dims = [d.size for d in info.tensor_shape.dim]
                if array.ndim != len(dims):
                    shape = [None if d < 0 else d for d in dims]
                    raise RequestError("INVALID_ARGUMENT",
                                       f"input {key!r} of signature {signature_name!r} expects rank "
                                       f"{len(dims)} (shape {shape}), got rank {array.ndim} "
                                       f"(shape {list(array.shape)})")
                for axis, (want_dim, got_dim) in enumerate(zip(dims, array.shape)):
                    if want_dim >= 0 and want_dim != got_dim:
                        raise RequestError("INVALID_ARGUMENT",
                                           f"input {key!r} of signature {signature_name!r}: dimension "
                                           f"{axis} must be {want_dim}, got {got_dim}")
            if array.ndim:
                if batch is not None and array.shape[0] != batch:
                    raise RequestError("INVALID_ARGUMENT", f"inputs disagree on the batch size: {batch} vs "
                                       f"{array.shape[0]} for {key!r}")
                batch = array.shape[0]
        if batch is not None and self.max_batch_size and batch > self.max_batch_size:
            raise RequestError("INVALID_ARGUMENT", f"batch size {batch} exceeds the maximum batch size "
                               f"{self.max_batch_size} of this server")
        if batch == 0:
            raise RequestError("INVALID_ARGUMENT", "empty batch: send at least one example")

    def run(self, signature_name: str, inputs: Mapping[str, object], output_filter=None) -> dict:
        """Validates and runs one request; returns {output key: numpy array}."""
        if self._closed:
            raise RequestError("UNAVAILABLE", f"version {self.version} has been unloaded")
        signature_name = signature_name or "serving_default"
        arrays = {k: _as_array(v) for k, v in inputs.items()}
        self.validate(signature_name, arrays)
        sig = self.signatures[signature_name]
        keys = list(output_filter) if output_filter else list(sig.outputs)
        unknown = sorted(set(keys) - set(sig.outputs))
        if unknown:
            raise RequestError("INVALID_ARGUMENT", f"output_filter names unknown output(s) {unknown}; "
                               f"signature {signature_name!r} has {sorted(sig.outputs)}")
        fetches = {k: sig.outputs[k].name for k in keys}
        feed = {sig.inputs[k].name: a for k, a in arrays.items()}
        try:
            return self.session.run(fetches, feed)
        except tf.errors.OpError as e:
            code = _CODE_NAMES.get(e.error_code, "INTERNAL")
            raise RequestError(code, f"signature {signature_name!r}: {_op_error_message(e)}") from None

    # ------------------------------------------------------------------------------------------
    def warmup_requests(self):
        """The PredictRequests in `assets.extra/tf_serving_warmup_requests` (empty if none)."""
        return read_warmup_requests(self.export_dir)

    def warmup(self) -> int:
        """Replays the warmup file like TF Serving does at load time; returns the number replayed."""
        count = 0
        for request in self.warmup_requests():
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            self.run(request.model_spec.signature_name, inputs, list(request.output_filter) or None)
            count += 1
        return count

    def close(self):
        with self._lock:
            if not self._closed:
                self._closed = True
                self.session.close()


def read_warmup_requests(export_dir: str) -> list:
    """Parses `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog) into PredictRequests."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    requests = []
    for record in tf.compat.v1.io.tf_record_iterator(path):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: only predict_log warmup records are supported, got "
                             f"{log.WhichOneof('log_type')!r}")
        requests.append(log.predict_log.request)
    return requests
