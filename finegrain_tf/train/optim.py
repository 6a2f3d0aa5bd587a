"""Training policy as small pure functions: learning-rate schedule, optimizer, weight decay.

The seeds train with SGD-momentum + step decay + warm-up (ch.3, ch.5) and with RMSProp (decay 0.9,
momentum 0.9) + exponential decay 0.94 (ch.4); both are expressible here.

Weight decay is decoupled (Keras' `weight_decay`). `decay_variables(model, decay_bias,
decay_batchnorm)` are the variables it applies to: the seed removes weight decay from the last layer's
bias (§5.4.2), and by default every bias and the normalisation layers' scale/offset are excluded
(`decay_bias=True` / `decay_batchnorm=True` put them back); `configure_weight_decay` hands the
complement to the optimizer's `exclude_from_weight_decay`.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

SCHEDULES = ("constant", "step", "exponential", "cosine")
OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw", "nadam")
_NORM_LAYERS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                keras.layers.GroupNormalization)


@keras.saving.register_keras_serializable(package="finegrain_tf")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup_steps`, then constant / step / exponential / cosine decay.

    step:        lr * decay_rate ** floor(t / decay_steps)
    exponential: lr * decay_rate ** (t / decay_steps)   (staircase-free, as in ch.4's 0.94 decay)
    cosine:      lr * 0.5 * (1 + cos(pi * t / total_steps))
    where t counts steps after warm-up.
    """

    def __init__(self, learning_rate, schedule="constant", warmup_steps=0, decay_steps=1000,
                 decay_rate=0.1, total_steps=1):
        self.learning_rate = float(learning_rate)
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.decay_rate = float(decay_rate)
        self.total_steps = int(total_steps)
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}")
        if self.decay_steps <= 0:
            raise ValueError(f"decay_steps must be > 0, got {decay_steps!r}")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        t = tf.maximum(step - self.warmup_steps, 0.0)
        base = tf.constant(self.learning_rate, tf.float32)
        if self.schedule == "step":
            lr = base * self.decay_rate ** tf.floor(t / self.decay_steps)
        elif self.schedule == "exponential":
            lr = base * self.decay_rate ** (t / self.decay_steps)
        elif self.schedule == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            lr = base * 0.5 * (1.0 + tf.cos(math.pi * tf.minimum(t / span, 1.0)))
        else:
            lr = base
        if self.warmup_steps > 0:
            lr = lr * tf.minimum((step + 1.0) / self.warmup_steps, 1.0)
        return lr

    def get_config(self):
        return {"learning_rate": self.learning_rate, "schedule": self.schedule,
                "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "total_steps": self.total_steps}


def build_schedule(cfg, total_steps: int) -> WarmupDecay:
    return WarmupDecay(cfg.learning_rate, cfg.schedule, cfg.warmup_steps, cfg.decay_steps,
                       cfg.decay_rate, total_steps)


def build_optimizer(cfg, total_steps: int) -> keras.optimizers.Optimizer:
    """The optimizer of `cfg` (an `OptimizerConfig`); weight decay is decoupled (Keras'
    `weight_decay` argument; exclude variables with `configure_weight_decay` before building)."""
    common = {"learning_rate": build_schedule(cfg, total_steps),
              "weight_decay": cfg.weight_decay or None}
    if cfg.clip_value > 0:
        common["clipvalue"] = cfg.clip_value
    if cfg.name == "sgd":
        return keras.optimizers.SGD(momentum=cfg.momentum, nesterov=False, **common)
    if cfg.name == "rmsprop":
        return keras.optimizers.RMSprop(rho=cfg.rho, momentum=cfg.momentum, epsilon=cfg.epsilon,
                                        **common)
    if cfg.name == "adam":
        return keras.optimizers.Adam(epsilon=cfg.epsilon, **common)
    if cfg.name == "nadam":  # Adam with Nesterov momentum: seed 004 §6.1.1 (lr 0.002, eps 1e-8)
        return keras.optimizers.Nadam(epsilon=cfg.epsilon, **common)
    if cfg.name == "adamw":
        common["weight_decay"] = cfg.weight_decay
        return keras.optimizers.AdamW(epsilon=cfg.epsilon, **common)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def _excluded(model, decay_bias: bool, decay_batchnorm: bool) -> set:
    excluded = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, _NORM_LAYERS):
            if not decay_batchnorm:
                excluded.update(id(v) for v in layer.trainable_variables)
            continue
        if not decay_bias:
            for v in layer._trainable_variables:
                if v.name == "bias" or v.path.endswith("/bias"):
                    excluded.add(id(v))
    return excluded


def decay_variables(model, decay_bias: bool = False, decay_batchnorm: bool = False) -> list:
    """The trainable variables weight decay should apply to (kernels, embeddings, ...).

    Biases are excluded unless `decay_bias`; BatchNorm/LayerNorm/GroupNorm gamma and beta unless
    `decay_batchnorm` (config keys optimizer.decay_bias / optimizer.decay_batchnorm).
    """
    excluded = _excluded(model, decay_bias, decay_batchnorm)
    return [v for v in model.trainable_variables if id(v) not in excluded]


def configure_weight_decay(optimizer, model, decay_bias: bool = False, decay_batchnorm: bool = False):
    """Excludes every trainable variable outside `decay_variables` from the optimizer's decoupled
    weight decay (call before the optimizer is built); returns the optimizer."""
    keep = {id(v) for v in decay_variables(model, decay_bias, decay_batchnorm)}
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.trainable_variables if id(v) not in keep])
    return optimizer
