"""TensorProto <-> numpy on the request path of the dev server and the gRPC client (the hot path of a
batch-1 request).

`tf.make_ndarray` / `tf.make_tensor_proto` handle every dtype but carry per-call overhead that
`benchmarks/load_test.py` sees at batch 1; the common cases (strings, and numbers packed in
`tensor_content`) are converted directly here, everything else falls back to them.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from finegrain_tf.serving.servable import RequestError

_STRING = tf.string.as_datatype_enum


def to_ndarray(proto, key: str = "input") -> np.ndarray:
    """A request TensorProto as a numpy array; a malformed proto is INVALID_ARGUMENT naming `key`."""
    shape = [d.size for d in proto.tensor_shape.dim]
    try:
        if proto.dtype == _STRING and not proto.tensor_content:
            values = np.empty(len(proto.string_val), dtype=object)
            values[:] = list(proto.string_val)
            return values.reshape(shape)
        if proto.tensor_content and proto.dtype != _STRING:
            dtype = tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype
            return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
        return tf.make_ndarray(proto)
    except (ValueError, TypeError) as e:
        raise RequestError("INVALID_ARGUMENT", f"input {key!r}: malformed TensorProto (shape {shape}): {e}") from None


def to_tensor_proto(value: np.ndarray, proto) -> None:
    """Fills `proto` (a response TensorProto) from a numpy array."""
    value = np.asarray(value)
    if value.dtype == object:
        try:
            proto.string_val.extend(value.ravel().tolist())
        except TypeError:  # str elements (not bytes): let TF encode them
            proto.Clear()
            proto.CopyFrom(tf.make_tensor_proto(value))
            return
        proto.dtype = _STRING
    elif value.dtype.kind in "iuf" and value.dtype.byteorder in "=|<":
        proto.dtype = tf.dtypes.as_dtype(value.dtype).as_datatype_enum
        proto.tensor_content = np.ascontiguousarray(value).tobytes()
    else:
        proto.CopyFrom(tf.make_tensor_proto(value))
        return
    for size in value.shape:
        proto.tensor_shape.dim.add(size=size)
