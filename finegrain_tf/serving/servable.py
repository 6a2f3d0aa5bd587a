"""A SavedModel loaded the way TF Serving loads it: the TF1 session loader.

`SessionServable` wraps `tf.compat.v1.saved_model.loader.load` (the C++ `LoadSavedModel` path of
`tensorflow_model_server`) in its own graph and session, validates requests against the signature
defs the way TF Serving's Predict and Classify handlers do (unknown signature, missing/extra input,
dtype, rank, batch size, method name) and runs them. The dev server, `verify_export` and the load test
all use it, so what is checked here is what the production server would run.
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import os
import threading
from typing import Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf

from finegrain_tf.serving.export_module import CLASSIFY_INPUTS, CLASSIFY_METHOD
from finegrain_tf.serving.warmup import read_warmup_requests

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


def status_code_name(error_code: int) -> str:
    """The grpc status name of a TF error code (both follow google.rpc.Code)."""
    return next((c.name for c in grpc.StatusCode if c.value[0] == error_code), "INTERNAL")


def _op_error_message(error: tf.errors.OpError) -> str:
    """The informative line of a session error (drops 'Graph execution error:' and node traces)."""
    lines = [l.strip() for l in str(error.message or "").splitlines()]
    lines = [l for l in lines if l and not l.startswith("[[") and l != "Graph execution error:"
             and not l.startswith("Detected at node")]
    text = lines[0] if lines else type(error).__name__
    if "decode" in str(error.message).lower() and "image" not in text.lower():
        text = f"could not decode image: {text}"
    return text


class _DropDeprecationNotices(py_logging.Filter):
    def filter(self, record):
        return "is deprecated and will be removed" not in record.getMessage()


@contextlib.contextmanager
def _quiet_tf_deprecations():
    """TF's own TF1 loader logs a deprecation notice for itself; it is the loader TF Serving uses on
    purpose, so the notice is noise in our logs."""
    logger = py_logging.getLogger("tensorflow")
    notice_filter = _DropDeprecationNotices()
    logger.addFilter(notice_filter)
    try:
        yield
    finally:
        logger.removeFilter(notice_filter)


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


class _Input:
    """A signature input reduced to what validation needs (read once, not per request)."""

    def __init__(self, key, info):
        self.key = key
        self.tensor = info.name
        self.dtype = tf.dtypes.as_dtype(info.dtype)
        self.dims = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]


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
        # Idle TF pool threads spin before sleeping: on a busy 2-core machine that cost ~0.5 ms CPU per
        # batch-1 request of the load-test model (benchmarks/load_test.py), served and in-process alike.
        # It applies where this session creates the process's pools (no eager op ran before), as in the server.
        config.experimental.disable_thread_spinning = True
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        with self.graph.as_default(), _quiet_tf_deprecations():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], export_dir)
        self.signatures = {k: v for k, v in self.meta_graph.signature_def.items() if not k.startswith("__")}
        self._inputs = {name: [_Input(k, v) for k, v in sorted(sig.inputs.items())]
                        for name, sig in self.signatures.items()}
        self._defaults = {name: {k: tf.make_ndarray(v) for k, v in sig.defaults.items()}
                          for name, sig in self.signatures.items()}
        self._callables = {}
        self._closed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------
    def signature(self, name: str):
        name = name or "serving_default"
        if name not in self.signatures:
            raise RequestError("NOT_FOUND", f"signature {name!r} not found; this model serves "
                               f"{sorted(self.signatures)}")
        return self.signatures[name]

    def validate(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict:
        """Checks inputs against the signature def (inputs the SignatureDef has a default for may be
        left out); returns the complete inputs or raises RequestError naming the problem."""
        self.signature(signature_name)
        specs = self._inputs[signature_name]
        expected = {s.key for s in specs}
        missing = sorted(expected - set(inputs) - set(self._defaults[signature_name]))
        extra = sorted(set(inputs) - expected)
        if missing:
            raise RequestError("INVALID_ARGUMENT", f"signature {signature_name!r}: missing input(s) {missing}; "
                               f"expected inputs {sorted(expected)}")
        if extra:
            raise RequestError("INVALID_ARGUMENT", f"signature {signature_name!r}: unknown input(s) {extra}; "
                               f"expected inputs {sorted(expected)}")
        inputs = {**self._defaults[signature_name], **inputs}
        batch = None
        for spec in specs:
            array = inputs[spec.key]
            got = _tf_dtype_of(array)
            if got != spec.dtype:
                raise RequestError("INVALID_ARGUMENT", f"input {spec.key!r} of signature {signature_name!r} "
                                   f"expects dtype {spec.dtype.name}, got {got.name}")
            if spec.dims is not None:
                if array.ndim != len(spec.dims):
                    shape = [None if d < 0 else d for d in spec.dims]
                    raise RequestError("INVALID_ARGUMENT",
                                       f"input {spec.key!r} of signature {signature_name!r} expects rank "
                                       f"{len(spec.dims)} (shape {shape}), got rank {array.ndim} "
                                       f"(shape {list(array.shape)})")
                for axis, (want_dim, got_dim) in enumerate(zip(spec.dims, array.shape)):
                    if want_dim >= 0 and want_dim != got_dim:
                        raise RequestError("INVALID_ARGUMENT",
                                           f"input {spec.key!r} of signature {signature_name!r}: dimension "
                                           f"{axis} must be {want_dim}, got {got_dim}")
            if array.ndim:
                if batch is not None and array.shape[0] != batch:
                    raise RequestError("INVALID_ARGUMENT", f"inputs disagree on the batch size: {batch} vs "
                                       f"{array.shape[0]} for {spec.key!r}")
                batch = array.shape[0]
        if batch is not None and self.max_batch_size and batch > self.max_batch_size:
            raise RequestError("INVALID_ARGUMENT", f"batch size {batch} exceeds the maximum batch size "
                               f"{self.max_batch_size} of this server")
        if batch == 0:
            raise RequestError("INVALID_ARGUMENT", "empty batch: send at least one example")
        return inputs

    def _callable(self, signature_name: str, keys: tuple):
        """A cached `Session.make_callable` for (signature, output keys): the graph lookups of the
        tensor names are done once, not per request."""
        cache_key = (signature_name, keys)
        fn = self._callables.get(cache_key)
        if fn is None:
            sig = self.signatures[signature_name]
            with self.graph.as_default():
                fetches = [self.graph.get_tensor_by_name(sig.outputs[k].name) for k in keys]
                feeds = [self.graph.get_tensor_by_name(s.tensor) for s in self._inputs[signature_name]]
                fn = self.session.make_callable(fetches, feeds)
            self._callables[cache_key] = fn
        return fn

    def run(self, signature_name: str, inputs: Mapping[str, object], output_filter=None) -> dict:
        """Validates and runs one Predict request; returns {output key: numpy array}."""
        if self._closed:
            raise RequestError("UNAVAILABLE", f"version {self.version} has been unloaded")
        signature_name = signature_name or "serving_default"
        arrays = self.validate(signature_name, {k: _as_array(v) for k, v in inputs.items()})
        sig = self.signatures[signature_name]
        keys = tuple(output_filter) if output_filter else tuple(sorted(sig.outputs))
        unknown = sorted(set(keys) - set(sig.outputs))
        if unknown:
            raise RequestError("INVALID_ARGUMENT", f"output_filter names unknown output(s) {unknown}; "
                               f"signature {signature_name!r} has {sorted(sig.outputs)}")
        try:
            values = self._callable(signature_name, keys)(*[arrays[s.key] for s in self._inputs[signature_name]])
        except tf.errors.OpError as e:
            raise RequestError(status_code_name(e.error_code),
                               f"signature {signature_name!r}: {_op_error_message(e)}") from None
        return dict(zip(keys, values))

    def classify(self, signature_name: str, examples: Sequence[bytes]) -> dict:
        """Runs a Classify request (serialized tf.Examples) on a signature whose method name is
        `tensorflow/serving/classify`; returns {"classes": bytes [B, k], "scores": float [B, k]}
        (either may be missing if the signature lacks it)."""
        signature_name = signature_name or "serving_default"
        sig = self.signature(signature_name)
        if sig.method_name != CLASSIFY_METHOD:
            raise RequestError("INVALID_ARGUMENT", f"signature {signature_name!r} has method name "
                               f"{sig.method_name!r}, a Classify request needs {CLASSIFY_METHOD!r} "
                               "(this export's classify signature is 'classify_examples')")
        if not examples:
            raise RequestError("INVALID_ARGUMENT", "Input is empty: send at least one tf.Example")
        outputs = [k for k in ("classes", "scores") if k in sig.outputs]
        return self.run(signature_name, {CLASSIFY_INPUTS: np.array(list(examples), dtype=object)}, outputs)

    # ------------------------------------------------------------------------------------------
    def warmup(self) -> int:
        """Replays the warmup file like TF Serving does at load time; returns the number replayed."""
        from tensorflow_serving.apis import classification_pb2

        count = 0
        for request in read_warmup_requests(self.export_dir):
            if isinstance(request, classification_pb2.ClassificationRequest):
                self.classify(request.model_spec.signature_name, classification_examples(request.input))
            else:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                self.run(request.model_spec.signature_name, inputs, list(request.output_filter) or None)
            count += 1
        return count

    def close(self):
        with self._lock:
            if not self._closed:
                self._closed = True
                self.session.close()


def classification_examples(model_input) -> list[bytes]:
    """Serialized tf.Examples of a `tensorflow.serving.Input` (example_list, or example_list_with_context
    where each example is merged over the context, its own features winning)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in model_input.example_list.examples]
    if kind == "example_list_with_context":
        listed = model_input.example_list_with_context
        out = []
        for example in listed.examples:
            merged = tf.train.Example()
            merged.CopyFrom(listed.context)
            merged.MergeFrom(example)
            out.append(merged.SerializeToString())
        return out
    raise RequestError("INVALID_ARGUMENT", "Input is empty: set input.example_list or "
                       "input.example_list_with_context")
