"""Whether the op being built is compiled by XLA (which needs static shapes and lacks a few kernels)."""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # the only way to ask "am I inside XLA?"


def in_xla_context() -> bool:
    """True while tracing inside a `jit_compile=True` function (or a graph nested in one)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
