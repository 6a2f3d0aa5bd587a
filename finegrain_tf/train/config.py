"""Experiment configuration: nested dataclasses, strict YAML files, typed `a.b=value` overrides.

Flow (as in tensorflow/models): dataclass defaults -> YAML files in order -> `--set` overrides ->
`validate()` -> `<model_dir>/params.yaml`. Unknown keys and wrong types are errors that name the key
and the file; there is no silent non-strict fallback.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

import yaml


@dataclasses.dataclass
class SyntheticConfig:
    """The embedded synthetic fine-grained dataset (finegrain_tf.data.synthetic)."""
    num_classes: int = 20
    num_superclasses: int = 4
    train_per_class: int = 60
    val_per_class: int = 10
    test_per_class: int = 20
    image_size: int = 64
    seed: int = 0


@dataclasses.dataclass
class DataConfig:
    """Where images come from and how they are preprocessed."""
    name: str = "synthetic"  # "synthetic", "folder", or a tfds name (caltech_birds2011, cars196, ...)
    data_dir: str = ""  # image-folder root for "folder"; tfds data_dir otherwise ("" = tfds default)
    train_split: str = "train"
    eval_split: str = "test"
    image_size: int = 64  # network input size (224, 299, 448, ...)
    resize_size: int = 0  # shorter side before cropping; 0 = image_size * 8 / 7
    batch_size: int = 32  # global batch size
    shuffle_buffer: int = 2048
    class_filter: str = ""  # text file of class ids to keep (e.g. from finegrain-analyze select)
    imbalance_factor: float = 1.0  # > 1: subsample the train split to a long-tailed profile
    balanced_cap: int = 0  # > 0: cap every class at this many train images (second-stage fine-tune)
    seed: int = 0
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)


@dataclasses.dataclass
class KernelPoolingConfig:
    order: int = 4
    dims: int = 4096
    coefficients: str = "learned"  # "learned", "rbf" or comma-separated alphas
    gamma: float = 0.0  # 0 = 1 / mean <x, y> of backbone features at the start of training
    normalize: bool = True


@dataclasses.dataclass
class ModelConfig:
    backbone: str = "small_cnn"  # "small_cnn" or a keras.applications name (ResNet50, InceptionV3, ...)
    weights: str = ""  # "" (random), "imagenet", or a path to a weights file
    pooling: str = "avg"  # "avg", "bilinear", "compact_bilinear", "kernel"
    compact_dim: int = 8192  # output size of compact bilinear pooling
    kernel_pooling: KernelPoolingConfig = dataclasses.field(default_factory=KernelPoolingConfig)
    embedding_dim: int = 0  # > 0 adds a Dense projection before the classifier
    dropout: float = 0.0
    bias_init: str = "zeros"  # "zeros" or "prior" (b = -log((1 - pi) / pi), pi = 1/C; for sigmoid/focal)
    head: str = "linear"  # "linear" or "anchor_vote" (eq 2.3 soft voting over anchors; Triplet-A)
    anchors_per_class: int = 3
    anchor_gamma: float = 5.0
    flip_test: bool = False  # average predictions over the image and its horizontal flip
    logistic_init: bool = False  # init the classifier by logistic regression on frozen features
    init_batches: int = 20  # train batches for the kernel gamma estimate and the logistic init


@dataclasses.dataclass
class LossConfig:
    name: str = "softmax"  # softmax, class_balanced, logit_adjusted, balanced_softmax, ldam
    label_smoothing: float = 0.0
    # class-balanced (ch.5)
    beta: float = 0.9999
    loss_type: str = "softmax"  # softmax, sigmoid, focal
    gamma: float = 1.0
    # logit adjustment
    tau: float = 1.0
    # LDAM-DRW
    max_margin: float = 0.5
    scale: float = 30.0
    drw_step: int = -1  # step at which deferred re-weighting switches beta from 0 to `beta` (-1 = never)
    # metric learning (ch.2)
    triplet_weight: float = 0.0  # omega of eq 2.5; > 0 adds a triplet loss on the embedding
    margin: float = 0.2
    mining: str = "violating"
    distance: str = "squared_l2"


@dataclasses.dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd, rmsprop, adam, adamw
    learning_rate: float = 0.1
    momentum: float = 0.9
    rho: float = 0.9  # rmsprop decay
    epsilon: float = 1e-7
    weight_decay: float = 0.0  # decoupled, applied to kernels only by default
    decay_bias: bool = False  # include biases in weight decay
    decay_batchnorm: bool = False  # include batch-norm gamma/beta in weight decay
    schedule: str = "constant"  # constant, step, exponential, cosine
    warmup_steps: int = 0
    decay_steps: int = 1000  # step: every decay_steps; exponential: period of one decay_rate factor
    decay_rate: float = 0.1
    clip_value: float = 0.0  # > 0 clips every gradient to [-clip_value, clip_value]


@dataclasses.dataclass
class TrainConfig:
    model_dir: str = "runs/default"
    steps: int = 200
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 20
    eval_batches: int = 0  # 0 = the whole eval split
    many_threshold: int = 100  # head / many-shot classes have >= this many train images (seed: 100)
    few_threshold: int = 20  # few-shot classes have fewer train images than this
    strategy: str = "default"  # default, mirrored, multi_worker, tpu
    tpu: str = ""
    mixed_precision: bool = False
    seed: int = 0


@dataclasses.dataclass
class ExportConfig:
    model_name: str = "finegrain"
    top_k: int = 5


@dataclasses.dataclass
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


# --------------------------------------------------------------------------------------------------
# Strict merging


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Checks (and for ints -> floats, widens) `value` against the field type `typ`."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported field type {typ} at {where}")
    raise ValueError(f"{where}: expected {typ.__name__}, got {value!r} ({type(value).__name__})")


def merge_dict(cfg: Any, updates: dict, source: str, prefix: str = "") -> Any:
    """Applies a nested dict onto dataclass `cfg` in place; unknown keys and wrong types raise."""
    if not isinstance(updates, dict):
        raise ValueError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {updates!r}")
    types = _field_types(type(cfg))
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in types:
            raise ValueError(f"{source}: unknown config key '{path}' (valid keys here: {sorted(types)})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            merge_dict(current, value, source, prefix=path + ".")
        else:
            setattr(cfg, key, _coerce(value, types[key], f"{source}: '{path}'"))
    return cfg


def load_yaml(cfg: Any, path: str) -> Any:
    if not os.path.exists(path):
        raise ValueError(f"config file not found: {path!r}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return merge_dict(cfg, data, source=path)


def _parse_scalar(text: str, typ: Any, where: str) -> Any:
    if typ is str:
        return text
    if typ is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected bool, got {text!r}")
    try:
        return typ(text) if typ is float else int(text)
    except ValueError:
        raise ValueError(f"{where}: expected {typ.__name__}, got {text!r}") from None


def apply_override(cfg: Any, override: str) -> Any:
    """Applies one `a.b.c=value` override, coercing the text to the field's type."""
    if "=" not in override:
        raise ValueError(f"--set {override!r}: expected the form section.key=value")
    dotted, text = override.split("=", 1)
    parts = dotted.strip().split(".")
    node = cfg
    for i, part in enumerate(parts):
        types = _field_types(type(node))
        if part not in types:
            where = ".".join(parts[:i + 1])
            raise ValueError(f"--set {override!r}: unknown config key '{where}' (valid: {sorted(types)})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ValueError(f"--set {override!r}: '{dotted}' is a section, not a value")
            setattr(node, part, _parse_scalar(text, types[part], f"--set {override!r}"))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise ValueError(f"--set {override!r}: '{'.'.join(parts[:i + 1])}' is a value, not a section")
    return cfg


_CHOICES = {
        "model.pooling": ("avg", "bilinear", "compact_bilinear", "kernel"),
        "model.bias_init": ("zeros", "prior"),
    "model.head": ("linear", "anchor_vote"),
        "loss.name": ("softmax", "class_balanced", "logit_adjusted", "balanced_softmax", "ldam", "hns",
                                    "hnm"),
        "loss.loss_type": ("softmax", "sigmoid", "focal"),
        "loss.mining": ("violating", "all", "semi_hard", "hard"),
        "loss.distance": ("squared_l2", "l2", "cosine"),
        "optimizer.name": ("sgd", "rmsprop", "adam", "adamw"),
        "optimizer.schedule": ("constant", "step", "exponential", "cosine"),
        "train.strategy": ("default", "mirrored", "multi_worker", "tpu"),
}


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Range and choice checks that types alone cannot express."""
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ValueError(f"{dotted}={value!r} is not one of {list(choices)}")
    positive = {
            "data.image_size": cfg.data.image_size,
            "data.batch_size": cfg.data.batch_size,
            "train.steps": cfg.train.steps,
            "train.checkpoint_every": cfg.train.checkpoint_every,
            "optimizer.learning_rate": cfg.optimizer.learning_rate,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if cfg.data.imbalance_factor < 1:
        raise ValueError(f"data.imbalance_factor must be >= 1, got {cfg.data.imbalance_factor!r}")
    if not 0 <= cfg.loss.beta < 1:
        raise ValueError(f"loss.beta must be in [0, 1), got {cfg.loss.beta!r}")
    if not 0 <= cfg.loss.triplet_weight <= 1:
        raise ValueError(f"loss.triplet_weight must be in [0, 1], got {cfg.loss.triplet_weight!r}")
    if cfg.model.head == "anchor_vote" and cfg.model.logistic_init:
        raise ValueError("model.logistic_init fits a linear classifier; it does not apply to "
                         "model.head='anchor_vote' (its anchors start from k-means)")
    if cfg.data.resize_size and cfg.data.resize_size < cfg.data.image_size:
        raise ValueError(f"data.resize_size={cfg.data.resize_size} is smaller than data.image_size="
                                          f"{cfg.data.image_size}")
    return cfg


def build_config(config_files=(), overrides=()) -> ExperimentConfig:
    """Defaults -> each YAML file in order -> each `a.b=value` override -> validate."""
    cfg = ExperimentConfig()
    for path in config_files:
        load_yaml(cfg, path)
    for override in overrides:
        apply_override(cfg, override)
    return validate(cfg)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_params(cfg: ExperimentConfig, model_dir: str) -> str:
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "params.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    return path


def load_params(model_dir: str) -> ExperimentConfig:
    """Reads `<model_dir>/params.yaml` written by the training binary (strictly)."""
    path = os.path.join(model_dir, "params.yaml")
    if not os.path.exists(path):
        raise ValueError(f"no params.yaml in model dir {model_dir!r}: is it a finegrain-train run?")
    return validate(load_yaml(ExperimentConfig(), path))
