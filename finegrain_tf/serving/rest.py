"""TF Serving's REST API for the dev server (a development/test harness, not a production server).

    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    {"instances": [...]} (row) or {"inputs": ...} (columnar)
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify   {"examples": [{feature: value}], "context": {...}}
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            version status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs

as documented for tensorflow_model_server's `--rest_api_port`: binary strings travel as `{"b64": "..."}`;
row requests answer `{"predictions": ...}`, columnar ones `{"outputs": ...}`, classify
`{"results": [[[label, score], ...], ...]}`; errors are `{"error": "..."}` with TF Serving's mapping of
status codes to HTTP codes (INVALID_ARGUMENT 400, NOT_FOUND 404, UNAVAILABLE 503, ...).

Built on the standard library's threaded `http.server`: the API is four routes with TF Serving's own
JSON conventions and error format, so a web framework would add a dependency to the `[serving]` extra
and its own validation errors that would have to be mapped back anyway.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import re
import threading

import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2

from finegrain_tf.serving.manager import ServerCore
from finegrain_tf.serving.servable import RequestError
from finegrain_tf.serving.server import fill_classification_result, model_metadata, model_status

MAX_BODY_BYTES = 64 * 1024 * 1024
# google.rpc.Code -> HTTP, as tensorflow_serving/model_servers/http_server.cc maps them.
HTTP_CODES = {"CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
              "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
              "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
              "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
_VERSION = r"(?:/versions/(\d+)|/labels/([^/:]+))?"
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)" + _VERSION + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?" + _VERSION + r"(/metadata)?", re.IGNORECASE)


def _invalid(message: str) -> RequestError:
    return RequestError("INVALID_ARGUMENT", message)


# -- JSON <-> numpy ------------------------------------------------------------------------------
def _decode_binary(value, where: str):
    """{"b64": ...} -> bytes; str -> UTF-8 bytes; lists recursively."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise _invalid(f"{where}: a binary value must be {{\"b64\": \"<base64 string>\"}}, got keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as e:
            raise _invalid(f"{where}: invalid base64 ({e})") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return [_decode_binary(v, where) for v in value]
    raise _invalid(f"{where}: expected a string or {{\"b64\": ...}}, got {type(value).__name__} {value!r:.40}")


def _shape(value, where: str) -> list[int]:
    if not isinstance(value, list):
        return []
    inner = [_shape(v, where) for v in value]
    if any(s != inner[0] for s in inner[1:]):
        raise _invalid(f"{where}: ragged nested lists (element shapes {inner[0]} and "
                       f"{next(s for s in inner if s != inner[0])}); tensors must be rectangular")
    return [len(value)] + (inner[0] if inner else [])


def json_to_array(value, dtype: tf.DType, where: str) -> np.ndarray:
    """A JSON value as a numpy array of the signature input's dtype."""
    if dtype == tf.string:
        value = _decode_binary(value, where)
        shape = _shape(value, where)
        array = np.empty(int(np.prod(shape)) if shape else 1, dtype=object)
        array[:] = list(np.ravel(np.array(value, dtype=object))) if shape else [value]
        return array.reshape(shape)
    _shape(value, where)
    try:
        return np.asarray(value, dtype=dtype.as_numpy_dtype)
    except (TypeError, ValueError) as e:
        raise _invalid(f"{where}: cannot convert to {dtype.name}: {e}") from None


def array_to_json(value: np.ndarray, key: str):
    value = np.asarray(value)
    if value.dtype == object:
        if key.endswith("_bytes"):  # TF Serving's convention for binary outputs
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()}, otypes=[object])(value).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value).tolist()
    return value.tolist()


def _input_specs(servable, signature: str) -> dict:
    sig = servable.signature(signature)
    return {k: tf.dtypes.as_dtype(v.dtype) for k, v in sig.inputs.items()}


def _sole_input(specs: dict, defaults) -> str | None:
    """The input a bare (unnamed) value is for: the only one without a default, if there is one."""
    required = [k for k in specs if k not in defaults]
    return required[0] if len(required) == 1 else None


def predict_inputs(body: dict, servable, signature: str) -> tuple[dict, str]:
    """(inputs, "row" | "columnar") from a :predict body."""
    if ("instances" in body) == ("inputs" in body):
        raise _invalid("the request must have exactly one of \"instances\" (row format) or \"inputs\" "
                       "(columnar format)")
    specs = _input_specs(servable, signature)
    defaults = servable.signature(signature).defaults
    sole = _sole_input(specs, defaults)

    def named(value, where):
        if isinstance(value, dict) and set(value) != {"b64"}:
            unknown = sorted(set(value) - set(specs))
            if unknown:
                raise _invalid(f"{where}: unknown input(s) {unknown}; signature {signature!r} takes {sorted(specs)}")
            return value
        if sole is None:
            raise _invalid(f"{where}: signature {signature!r} has inputs {sorted(specs)}; name them in an object")
        return {sole: value}

    if "inputs" in body:
        values = named(body["inputs"], "inputs")
        return {k: json_to_array(v, specs[k], f"inputs[{k!r}]") for k, v in values.items()}, "columnar"
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise _invalid("\"instances\" must be a non-empty list")
    rows = [named(inst, f"instances[{i}]") for i, inst in enumerate(instances)]
    keys = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != keys:
            raise _invalid(f"instances[{i}] has inputs {sorted(row)}, instances[0] has {sorted(keys)}; every "
                           "instance must name the same inputs")
    return {k: json_to_array([row[k] for row in rows], specs[k], f"instances (input {k!r})") for k in keys}, "row"


def predict_json(outputs: dict, fmt: str) -> dict:
    if fmt == "columnar":
        if len(outputs) == 1:
            key, value = next(iter(outputs.items()))
            return {"outputs": array_to_json(value, key)}
        return {"outputs": {k: array_to_json(v, k) for k, v in outputs.items()}}
    batches = {np.asarray(v).shape[0] if np.ndim(v) else None for v in outputs.values()}
    if len(batches) != 1 or None in batches:
        raise _invalid(f"outputs have different batch sizes {sorted(map(str, batches))}; use the columnar "
                       "\"inputs\" format")
    columns = {k: array_to_json(v, k) for k, v in outputs.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    batch = batches.pop()
    return {"predictions": [{k: v[i] for k, v in columns.items()} for i in range(batch)]}


def _feature(value, where: str) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    if not values:
        return tf.train.Feature()
    if all(isinstance(v, (str, dict)) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=_decode_binary(values, where)))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    raise _invalid(f"{where}: a feature is a string, {{\"b64\": ...}}, int, float or a list of one of them")


def _example(features, where: str) -> tf.train.Example:
    if not isinstance(features, dict):
        raise _invalid(f"{where}: an example is an object of features, got {type(features).__name__}")
    return tf.train.Example(features=tf.train.Features(
        feature={k: _feature(v, f"{where}[{k!r}]") for k, v in features.items()}))


def classify_examples(body: dict) -> list[bytes]:
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise _invalid("a :classify request needs a non-empty \"examples\" list")
    context = _example(body.get("context", {}), "context")
    out = []
    for i, features in enumerate(examples):
        merged = tf.train.Example()
        merged.CopyFrom(context)
        merged.MergeFrom(_example(features, f"examples[{i}]"))
        out.append(merged.SerializeToString())
    return out


# -- HTTP ----------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    core: ServerCore  # set on the subclass made by RestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # route http.server's access log to absl at debug level
        logging.vlog(1, "REST %s", fmt % args)

    def _reply(self, code: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str):
        path = self.path.split("?", 1)[0]
        try:
            if not path.lower().startswith("/v1/"):
                raise RequestError("NOT_FOUND", f"unknown path {path!r}; the REST API lives under /v1/models/")
            body = self._body() if method == "POST" else None
            self._reply(200, self._dispatch(method, path, body))
        except RequestError as e:
            logging.info("REST %s %s refused (%s): %s", method, path, e.code, e.message)
            self._reply(HTTP_CODES.get(e.code, 500), {"error": e.message})
        except Exception as e:  # never leave a client without an answer
            logging.exception("REST %s %s failed", method, path)
            self._reply(500, {"error": f"internal error: {e}"})

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise RequestError("RESOURCE_EXHAUSTED", f"request body of {length} bytes exceeds {MAX_BODY_BYTES}")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _invalid(f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise _invalid(f"request body must be a JSON object, got {type(body).__name__}")
        return body

    def _dispatch(self, method: str, path: str, body: dict | None) -> dict:
        match = PREDICT_PATH.fullmatch(path) if method == "POST" else STATUS_PATH.fullmatch(path)
        if match is None:
            raise _invalid(f"Malformed request: {method} {path}")
        if method == "GET":
            name, version, label, metadata = match.groups()
            if not name:
                raise _invalid("Missing model name in request.")
            version = int(version) if version else None
            if metadata:
                with self.core.acquire(name, version, label) as servable:
                    defs = model_metadata(servable, name).metadata["signature_def"]
                    served = servable.version
                sig_map = get_model_metadata_pb2.SignatureDefMap()
                defs.Unpack(sig_map)
                return {"model_spec": {"name": name, "signature_name": "", "version": str(served)},
                        "metadata": {"signature_def": json_format.MessageToDict(
                            sig_map, preserving_proto_field_name=True)}}
            return json_format.MessageToDict(model_status(self.core, name, version, label),
                                             preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True)
        name, version, label, verb = match.groups()
        version = int(version) if version else None
        signature = body.get("signature_name") or "serving_default"
        if verb.lower() == "regress":
            raise RequestError("UNIMPLEMENTED", "Regress is not implemented by the finegrain dev server")
        if verb.lower() == "classify":
            examples = classify_examples(body)
            with self.core.acquire(name, version, label) as servable:
                outputs = servable.classify(signature, examples)
            result = classification_pb2.ClassificationResult()
            fill_classification_result(result, outputs, len(examples))
            return {"results": [[[c.label, c.score] for c in row.classes] for row in result.classifications]}
        with self.core.acquire(name, version, label) as servable:
            inputs, fmt = predict_inputs(body, servable, signature)
            outputs = servable.run(signature, inputs, body.get("output_filter"))
        return predict_json(outputs, fmt)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


class RestServer:
    """TF Serving's REST API on `host:port` (0 = a free port) in a background thread."""

    def __init__(self, core: ServerCore, host: str = "127.0.0.1", port: int = 0):
        handler = type("RestHandler", (_Handler,), {"core": core})
        self._httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest-api", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
