"""Experiment configuration: frozen dataclasses, strict YAML files, typed `a.b=value` overrides.

Flow (as in tensorflow/models): dataclass defaults -> YAML files in order -> `--set` overrides ->
construction, where every section validates itself -> `<model_dir>/params.yaml` (`RunDir`). Unknown
keys, duplicate keys, wrong types, non-finite floats and out-of-range values are `ValueError`s that
name the key (and the file). There is no silent non-strict fallback.

Choices come from the registries the factories use, so a config that parses also builds:
`task.name` from `finegrain_tf.train.task.TASKS`, `loss.name` from `factory.LOSSES`,
`model.pooling` / `model.head` from `models.heads.POOLINGS` / `HEADS`.

Sections are frozen: derive a changed copy with `dataclasses.replace` or `apply_override`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from typing import Any, ClassVar

import yaml


class Section:
    """Base of every config section: validates on construction; `PATH` names it in messages."""
    PATH: ClassVar[str] = ""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{self._key(field.name)} must be finite, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Range and choice checks of this section (raise ValueError naming the key)."""

    # Helpers for `validate`.
    def _key(self, name: str) -> str:
        return f"{self.PATH}.{name}" if self.PATH else name

    def _check(self, ok: bool, name: str, requirement: str) -> None:
        if not ok:
            raise ValueError(f"{self._key(name)} {requirement}, got {getattr(self, name)!r}")

    def _positive(self, *names: str) -> None:
        for name in names:
            self._check(getattr(self, name) > 0, name, "must be > 0")

    def _non_negative(self, *names: str) -> None:
        for name in names:
            self._check(getattr(self, name) >= 0, name, "must be >= 0")

    def _choice(self, name: str, choices) -> None:
        choices = list(choices)
        self._check(getattr(self, name) in choices, name, f"must be one of {choices}")


def _section(path: str):
    """Decorator: a frozen dataclass section named `path` in error messages."""
    def wrap(cls):
        cls.PATH = path
        return dataclasses.dataclass(frozen=True)(cls)
    return wrap


@_section("task")
class TaskConfig(Section):
    """Which kind of training this is (`finegrain_tf.train.tasks`): "classification", ..."""
    name: str = "classification"

    def validate(self):
        from finegrain_tf.train.task import task_names
        self._choice("name", task_names())


@_section("data.synthetic")
class SyntheticConfig(Section):
    """The embedded synthetic fine-grained dataset (finegrain_tf.data.synthetic)."""
    num_classes: int = 20
    num_superclasses: int = 4
    train_per_class: int = 60
    val_per_class: int = 10
    test_per_class: int = 20
    image_size: int = 64
    seed: int = 0

    def validate(self):
        self._positive("num_classes", "num_superclasses", "train_per_class", "image_size")
        self._non_negative("val_per_class", "test_per_class")


@_section("data.augment")
class AugmentConfig(Section):
    """Training augmentation (`data.preprocessing.preprocess_train`); evaluation never augments."""
    crop: str = "square"  # "square": shorter side -> data.resize_size, random S x S crop (seed 000 ch.3);
    # "random_resized": Inception crop of area fraction [scale_min, scale_max] and width/height
    # [aspect_min, aspect_max], resized to S x S (seed 000 sec. 4.4.1)
    scale_min: float = 0.08
    scale_max: float = 1.0
    aspect_min: float = 0.75
    aspect_max: float = 1.3333333333333333
    horizontal_flip: bool = True  # off for text, handwriting, left/right-asymmetric classes
    vertical_flip: bool = False
    rotation: float = 0.0  # degrees: each image rotated by an angle drawn from [-rotation, rotation]
    zoom: float = 0.0  # each image scaled by a factor drawn from [1 - zoom, 1 + zoom]

    def validate(self):
        from finegrain_tf.data.preprocessing import check_augment
        check_augment(dataclasses.asdict(self), where="data.augment.")


@_section("data")
class DataConfig(Section):
    """Where images come from and how they are preprocessed."""
    name: str = "synthetic"  # "synthetic", "folder", "manifest" or a tfds name (caltech_birds2011, ...)
    # folder: the image-folder root; manifest: a CSV/JSONL file of path,label[,split] rows;
    # tfds: its data_dir ("" = tfds default)
    data_dir: str = ""
    eval_manifest: str = ""  # manifest: a separate CSV/JSONL of eval rows ("" = rows of split eval_split)
    train_split: str = "train"
    eval_split: str = "test"
    val_split: str = ""  # split evaluated every train.eval_every steps ("" = eval_split)
    image_size: int = 64  # network input size (224, 299, 448, ...)
    resize_size: int = 0  # shorter side before cropping; 0 = image_size * 8 / 7
    batch_size: int = 32  # global batch size
    shuffle_buffer: int = 2048
    class_filter: str = ""  # text file of class ids to keep (e.g. from finegrain-analyze select)
    imbalance_factor: float = 1.0  # > 1: subsample the train split to a long-tailed profile
    # imbalance_factor > 1 on a user's own images (folder / manifest) needs this too, so that a
    # demo config's subsampling is never inherited silently
    subsample_own_data: bool = False
    balanced_cap: int = 0  # > 0: cap every class at this many train images (second-stage fine-tune)
    max_image_pixels: int = 40_000_000  # larger images (all GIF frames counted) are skipped, never decoded
    max_aspect_ratio: float = 50.0  # images whose long side / short side exceeds this are skipped
    eval_crops: int = 1  # 1: centre crop; 12: 4 corners, centre, whole image, each also flipped
    # Human hard negatives for loss.name=hns|hnm (seed 000 §2.4.3): a CSV/JSONL file of
    # (image path, class it was wrongly proposed for), or "simulated" (synthetic data only: val
    # images of a class proposed for a sibling class of the same super-class).
    hard_negatives: str = ""
    seed: int = 0
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def validate(self):
        from finegrain_tf.data.pipeline import OWN_DATA_SOURCES, SOURCE_NAMES
        from finegrain_tf.data.preprocessing import EVAL_CROPS
        self._choice("name", SOURCE_NAMES)
        self._positive("image_size", "batch_size", "shuffle_buffer", "max_image_pixels")
        self._non_negative("resize_size", "balanced_cap")
        self._check(self.imbalance_factor >= 1, "imbalance_factor", "must be >= 1")
        self._check(self.max_aspect_ratio >= 1, "max_aspect_ratio", "must be >= 1")
        self._choice("eval_crops", EVAL_CROPS)
        if self.imbalance_factor > 1 and self.name in OWN_DATA_SOURCES and not self.subsample_own_data:
            raise ValueError(f"data.imbalance_factor={self.imbalance_factor!r} would subsample your own images "
                             f"(data.name={self.name!r}); a demo config's value is never applied to them "
                             f"silently: set data.imbalance_factor=1 to keep every image, or "
                             f"data.subsample_own_data=true to subsample on purpose")
        if self.resize_size and self.resize_size < self.image_size:
            raise ValueError(f"data.resize_size={self.resize_size} is smaller than "
                             f"data.image_size={self.image_size}")


@_section("model.kernel_pooling")
class KernelPoolingConfig(Section):
    """`finegrain_tf.layers.KernelPooling` of model.pooling="kernel" (seed 000 ch.3)."""
    order: int = 4
    dims: int = 4096
    coefficients: str = "learned"  # "learned", "rbf" or comma-separated alphas a0,...,ap
    gamma: float | None = None  # None: 1 / mean <x, y> of backbone features, estimated at the start
    normalize: bool = True

    def validate(self):
        self._positive("order", "dims")
        if self.gamma is not None:
            self._positive("gamma")
        if self.coefficients not in ("learned", "rbf"):
            try:
                alphas = [float(v) for v in self.coefficients.split(",")]
            except ValueError:
                alphas = None
            if alphas is None or len(alphas) != self.order + 1:
                raise ValueError(f"model.kernel_pooling.coefficients must be 'learned', 'rbf' or "
                                 f"{self.order + 1} comma-separated floats, got {self.coefficients!r}")


@_section("model")
class ModelConfig(Section):
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

    def validate(self):
        from finegrain_tf.models.backbones import BACKBONES
        from finegrain_tf.models.heads import BIAS_INITS, HEADS, POOLINGS
        self._choice("backbone", BACKBONES)
        self._choice("pooling", POOLINGS)
        self._choice("head", HEADS)
        self._choice("bias_init", BIAS_INITS)
        self._positive("compact_dim", "anchors_per_class", "anchor_gamma", "init_batches")
        self._non_negative("embedding_dim")
        self._check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        if self.head == "anchor_vote" and self.logistic_init:
            raise ValueError("model.logistic_init fits a linear classifier; it does not apply to "
                             "model.head='anchor_vote' (its anchors start from k-means)")
        if self.head == "anchor_vote" and self.bias_init != "zeros":
            raise ValueError(f"model.bias_init={self.bias_init!r} needs model.head='linear'; the "
                             f"anchor_vote head has no bias")


@_section("loss")
class LossConfig(Section):
    name: str = "softmax"  # see factory.LOSSES: softmax, class_balanced, logit_adjusted, ...
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

    def validate(self):
        from finegrain_tf.losses.metric import DISTANCES, MININGS
        from finegrain_tf.train.factory import CB_LOSS_TYPES, LOSSES
        self._choice("name", LOSSES)
        self._choice("loss_type", CB_LOSS_TYPES)
        self._choice("mining", MININGS)
        self._choice("distance", DISTANCES)
        self._check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        self._check(0 <= self.beta < 1, "beta", "must be in [0, 1)")
        self._check(0 <= self.triplet_weight <= 1, "triplet_weight", "must be in [0, 1]")
        self._non_negative("gamma", "tau", "max_margin", "margin")
        self._positive("scale")
        self._check(self.drw_step >= -1, "drw_step", "must be >= 0 (or -1 = never)")
        if self.label_smoothing and self.name != "softmax":
            raise ValueError(f"loss.label_smoothing={self.label_smoothing} is only supported with "
                             f"loss.name='softmax', not {self.name!r}")


@_section("optimizer")
class OptimizerConfig(Section):
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

    def validate(self):
        from finegrain_tf.train.optim import OPTIMIZERS, SCHEDULES
        self._choice("name", OPTIMIZERS)
        self._choice("schedule", SCHEDULES)
        self._positive("learning_rate", "epsilon", "decay_steps", "decay_rate")
        self._non_negative("momentum", "rho", "weight_decay", "warmup_steps", "clip_value")


@_section("train")
class TrainConfig(Section):
    model_dir: str = "runs/default"
    steps: int = 200
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 20
    eval_every: int = 0  # > 0: evaluate on data.val_split every N steps (and keep the best checkpoint)
    eval_batches: int = 0  # 0 = the whole eval split
    best_metric: str = ""  # metric of the periodic evaluation that picks the best checkpoint ("" = the
    # task's default: top1 for classification, loss (minimised) for pairs; `Task.best_metrics`)
    early_stopping: int = 0  # > 0: stop after this many evaluations without improvement
    many_threshold: int = 100  # head / many-shot classes have >= this many train images (seed: 100)
    few_threshold: int = 20  # few-shot classes have fewer train images than this
    strategy: str = "default"  # default, mirrored, multi_worker, tpu
    tpu: str = ""
    mixed_precision: bool = False  # bfloat16 compute, float32 weights and losses
    jit_compile: bool = False  # XLA-compile the train step
    on_nonfinite: str = "stop"  # non-finite loss / gradient norm: "stop" with an error, or "skip_step"
    plots: bool = True  # PNG curves, per-class accuracy and confusion matrix in the run dir
    seed: int = 0

    def validate(self):
        from finegrain_tf.train.strategy import STRATEGIES
        self._choice("strategy", STRATEGIES)
        self._choice("on_nonfinite", ("stop", "skip_step"))
        self._positive("steps", "checkpoint_every", "keep_checkpoints", "log_every")
        self._non_negative("eval_every", "eval_batches", "early_stopping", "many_threshold",
                           "few_threshold")
        if self.jit_compile and self.strategy not in ("default", "tpu"):
            raise ValueError(f"train.jit_compile=true needs train.strategy 'default' or 'tpu', not "
                             f"{self.strategy!r}")
        if self.on_nonfinite == "skip_step" and self.strategy != "default":
            raise ValueError(f"train.on_nonfinite='skip_step' needs train.strategy 'default' (a "
                             f"skipped update cannot hold the replicas' gradient all-reduce), not "
                             f"{self.strategy!r}")
        if self.early_stopping and not self.eval_every:
            raise ValueError("train.early_stopping needs train.eval_every > 0")


@_section("export")
class ExportConfig(Section):
    model_name: str = "finegrain"  # TF Serving model name: letters, digits, '_', '-', '.'
    top_k: int = 5

    def validate(self):
        import re
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.model_name):
            raise ValueError(f"export.model_name must be letters, digits, '_', '-' or '.' (starting "
                             f"with a letter or digit), got {self.model_name!r}")
        self._positive("top_k")


@_section("sampler")
class SamplerConfig(Section):
    """The quasi-online triplet sampler of the metric-learning task (seed 000 §2.3.2–2.4.1).

    Fields and their validation are owned by the chapter-2 metric-learning task
    (`finegrain_tf/train/tasks/metric.py`). With task.name=metric, data.batch_size counts triplets
    (3 images each; the seed uses 50) and data.hard_negatives adds human hard negatives 1:1.
    """
    refresh_every: int = 100  # steps between two refreshes of the embeddings of the training set
    positive_fraction: float = 0.6  # local positives: nearest fraction of the class (1 = whole class)
    negatives: str = "violating"  # "violating" (uniform among violators), "hardest", "random" (naive)
    triplets_per_anchor: int = 1  # positives drawn per training image at each refresh
    filter_human_negatives: bool = False  # human hard negatives must violate the margin too
    embed_batch_size: int = 256  # images per batch of the refresh's embedding pass
    batchnorm_images: int = 1024  # train images re-estimating batch-norm statistics before each refresh
    # and evaluation ("precise BN"; 0 = keep the moving averages of training)

    def validate(self):
        from finegrain_tf.sampling.triplets import NEGATIVE_MODES
        self._positive("refresh_every", "triplets_per_anchor", "embed_batch_size")
        self._non_negative("batchnorm_images")
        self._check(0 < self.positive_fraction <= 1, "positive_fraction", "must be in (0, 1]")
        self._choice("negatives", NEGATIVE_MODES)


@_section("pairs")
class PairsConfig(Section):
    """The Siamese / double-Siamese pair task on geo-tagged photos (seed 004; `train/tasks/pairs.py`).

    Fields and their validation are owned by the pairs task. The tower's backbone and weights are
    model.backbone / model.weights (V's backbone in the double Siamese), the input size
    data.image_size, the batch data.batch_size.
    """
    # Photos: the embedded synthetic geo set, or a CSV/JSONL manifest (finegrain_tf.data.geo).
    source: str = "synthetic"  # "synthetic" or "manifest"
    manifest: str = ""
    num_places: int = 120  # synthetic: places, photos per place, share of fuzzy photos, seed
    photos_per_place: int = 6
    fuzzy_share: float = 0.1
    synthetic_seed: int = 0
    eval_share: float = 0.2  # share of 1 km map cells whose photos are held out for evaluation
    # Filters (§4.1.1, §5.1): entropy threshold in bits (0 = off), duplicate removal.
    entropy_threshold: float = 0.0
    entropy_channels: str = "chroma"
    duplicates: str = "bytes"  # "none", "bytes" or "phash"
    # Pair sampling (§5.1.1, Table 5.2).
    positive_radius_m: float = 10.0
    location_error_m: float = 10.0
    negatives: str = "far"  # "far" (beyond negative_min_m), "ring", "near"
    negative_min_m: float = 2000.0
    ring_min_m: float = 30.0
    ring_max_m: float = 100.0
    positive_user: str = "any"  # "any", "same", "different"
    negative_user: str = "any"
    max_time_gap_hours: float = 0.0  # > 0: positives taken at most this far apart
    timelapse_min_gap_hours: float = 0.0  # > 0: time-lapse positives (same user, at least this apart)
    years: str = ""  # comma-separated calendar years to keep ("" = all)
    months: str = ""  # comma-separated months 1-12 ("" = all)
    start_date: str = ""  # ISO date, inclusive ("" = open)
    end_date: str = ""  # ISO date, exclusive
    max_positives: int = 0  # > 0: subsample positives
    # Preprocessing and augmentation (§4.1.1-4.1.2).
    mean_subtraction: bool = False
    augment: bool = False
    # Model (§3.2.1, §4.1.3-4.1.4).
    architecture: str = "siamese"  # "siamese" (one tower) or "double" (I, V, B)
    mode: str = "variant"  # double: "variant", "concat", "joint", "blend"
    embedding_dim: int = 128
    hidden_units: str = ""  # siamese head: comma-separated hidden widths
    variant_dim: int = 1024
    invariant_backbone: str = "ResNet50"
    invariant_weights: str = ""  # "" (random), "imagenet" or a weights file
    blend_units: str = "512"  # comma-separated, at most two layers ("" = one linear layer)
    dropout: float = 0.5
    residual: str = "none"  # "none", "variant", "invariant", "both"
    activation: str = "prelu"
    normalize: bool = True
    init_from: str = ""  # a pairs run dir whose invariant / variant / blend weights start this run
    # Loss (eq 4.1.3) and the thesis's gradient-norm clipping.
    margin: float = 1.0
    formulation: str = "thesis"
    clip_norm: float = 1.0  # > 0: clip each replica's gradient to this global norm
    # Labeled pairs for mode "blend" (§4.1.3: the Google/Wang set): a rated-triplet file, or
    # "synthetic" (rated by the synthetic set's ground truth); k-fold cross-validation of B.
    labeled: str = "synthetic"
    labeled_triplets: int = 200
    kfold: int = 0  # > 1: report k-fold cross-validation of B in mode "blend"
    kfold_epochs: int = 5

    def validate(self):
        from finegrain_tf.data.entropy import CHANNELS
        from finegrain_tf.data.geo import DUPLICATE_MODES
        from finegrain_tf.losses.pairwise import FORMULATIONS
        from finegrain_tf.models.backbones import BACKBONES
        from finegrain_tf.models.siamese import ACTIVATIONS, MODES, RESIDUALS
        from finegrain_tf.sampling.geo import NEGATIVE_KINDS, USER_RULES
        choices = {"source": ("synthetic", "manifest"), "entropy_channels": CHANNELS,
                   "duplicates": DUPLICATE_MODES, "negatives": NEGATIVE_KINDS, "positive_user": USER_RULES,
                   "negative_user": USER_RULES, "architecture": ("siamese", "double"), "mode": MODES,
                   "invariant_backbone": BACKBONES, "residual": RESIDUALS, "activation": ACTIVATIONS,
                   "formulation": FORMULATIONS}
        for name, allowed in choices.items():  # checked in this order: the first bad field is reported
            self._choice(name, allowed)
        self._positive("num_places", "photos_per_place", "embedding_dim", "variant_dim",
                       "labeled_triplets", "kfold_epochs")
        self._non_negative("synthetic_seed", "entropy_threshold", "positive_radius_m",
                           "location_error_m", "negative_min_m", "ring_min_m", "max_time_gap_hours",
                           "timelapse_min_gap_hours", "max_positives", "margin", "clip_norm", "kfold")
        self._check(0 <= self.fuzzy_share <= 1, "fuzzy_share", "must be in [0, 1]")
        self._check(0 < self.eval_share < 1, "eval_share", "must be in (0, 1)")
        self._check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        self._check(self.ring_max_m > self.ring_min_m, "ring_max_m", f"must be > ring_min_m={self.ring_min_m}")
        self._check(self.kfold != 1, "kfold", "must be 0 (off) or >= 2")
        if self.source == "manifest" and not self.manifest:
            raise ValueError("pairs.source='manifest' needs pairs.manifest (a CSV or JSONL file)")
        for name in ("years", "months", "hidden_units", "blend_units"):
            parts = [p.strip() for p in getattr(self, name).split(",") if p.strip()]
            self._check(all(p.isdigit() and int(p) > 0 for p in parts), name,
                        "must be comma-separated positive integers")
        self._check(all(1 <= int(m) <= 12 for m in self.months.split(",") if m.strip()), "months",
                    "must be months 1-12")
        self._check(len([u for u in self.blend_units.split(",") if u.strip()]) <= 2, "blend_units",
                    "must have at most two layers (§4.1.4)")
        if self.negatives == "near" and self.positive_user == self.negative_user == "any":
            raise ValueError("pairs.negatives='near' needs pairs.positive_user / pairs.negative_user "
                             "rules that tell positives from negatives (e.g. same / different)")
        if self.mode == "blend" and self.architecture != "double":
            raise ValueError("pairs.mode='blend' needs pairs.architecture='double'")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    pairs: PairsConfig = dataclasses.field(default_factory=PairsConfig)

    def __post_init__(self):
        from finegrain_tf.train.task import best_metric
        best_metric(self)  # train.best_metric must be a metric the task reports
        if self.loss.name in ("hns", "hnm") and not self.data.hard_negatives:
            raise ValueError(f"loss.name={self.loss.name!r} trains on human hard negatives: set "
                             f"data.hard_negatives (a file, or 'simulated' for synthetic data)")
        if self.loss.name in ("hns", "hnm") and self.loss.triplet_weight:
            raise ValueError(f"loss.name={self.loss.name!r} is a softmax baseline; it does not take "
                             f"loss.triplet_weight={self.loss.triplet_weight}")


# --------------------------------------------------------------------------------------------------
# Strict merging: dict of defaults <- YAML <- overrides, then construction (which validates)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(typ) -> str:
    return " | ".join(t.__name__ for t in typing.get_args(typ)) if _is_optional(typ) \
        else typ.__name__


def _is_optional(typ) -> bool:
    return isinstance(typ, types.UnionType) and type(None) in typing.get_args(typ)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Checks (and for ints -> floats, widens) `value` against the field type `typ`."""
    if _is_optional(typ):
        if value is None:
            return None
        inner = [t for t in typing.get_args(typ) if t is not type(None)]
        return _coerce(value, inner[0], where)
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
    raise ValueError(f"{where}: expected {_type_name(typ)}, got {value!r} ({type(value).__name__})")


def _parse_scalar(text: str, typ: Any, where: str) -> Any:
    """The text of a `--set` value as a value of field type `typ` ("none"/"null" for optionals)."""
    if _is_optional(typ):
        if text.strip().lower() in ("none", "null", "~"):
            return None
        typ = [t for t in typing.get_args(typ) if t is not type(None)][0]
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
        return float(text) if typ is float else int(text)
    except ValueError:
        raise ValueError(f"{where}: expected {typ.__name__}, got {text!r}") from None


def _defaults(cls) -> dict:
    """The nested dict of `cls`'s default values (sections as dicts)."""
    return {f.name: _defaults(f.default_factory) if _is_section_field(f) else _default_of(f)
            for f in dataclasses.fields(cls)}


def _is_section_field(field) -> bool:
    return field.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
        field.default_factory)


def _default_of(field):
    return field.default


def _section_types(cls) -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(cls) if _is_section_field(f)}


def merge_dict(tree: dict, cls, updates: Any, source: str, prefix: str = "") -> dict:
    """Applies nested `updates` onto `tree` (a nested dict for dataclass `cls`) in place.

    Unknown keys and wrong types raise ValueError naming the source and the dotted key.
    """
    if not isinstance(updates, dict):
        raise ValueError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {updates!r}")
    types_ = _field_types(cls)
    sections = _section_types(cls)
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in types_:
            raise ValueError(f"{source}: unknown config key '{path}' (valid keys here: {sorted(types_)})")
        if key in sections:
            merge_dict(tree[key], sections[key], value, source, prefix=path + ".")
        else:
            tree[key] = _coerce(value, types_[key], f"{source}: '{path}'")
    return tree


def apply_override_dict(tree: dict, cls, override: str) -> dict:
    """Applies one `a.b.c=value` override to the nested dict `tree` of dataclass `cls`."""
    if "=" not in override:
        raise ValueError(f"--set {override!r}: expected the form section.key=value")
    dotted, text = override.split("=", 1)
    parts = dotted.strip().split(".")
    node, node_cls = tree, cls
    for i, part in enumerate(parts):
        types_ = _field_types(node_cls)
        sections = _section_types(node_cls)
        where = ".".join(parts[:i + 1])
        if part not in types_:
            raise ValueError(f"--set {override!r}: unknown config key '{where}' (valid: {sorted(types_)})")
        if i == len(parts) - 1:
            if part in sections:
                raise ValueError(f"--set {override!r}: '{dotted}' is a section, not a value")
            node[part] = _parse_scalar(text, types_[part], f"--set {override!r}")
        else:
            if part not in sections:
                raise ValueError(f"--set {override!r}: '{where}' is a value, not a section")
            node, node_cls = node[part], sections[part]
    return tree


def from_dict(cls, tree: dict):
    """Constructs dataclass `cls` from a complete nested dict (every section validates itself)."""
    sections = _section_types(cls)
    return cls(**{k: from_dict(sections[k], v) if k in sections else v for k, v in tree.items()})


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys in a mapping."""


def _no_duplicates(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ValueError(f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key {key!r} "
                             f"(first at line {seen[key]})")
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: str) -> Any:
    """Parses a YAML file strictly: duplicate keys and syntax errors are one-line ValueErrors
    naming file:line."""
    if not os.path.exists(path):
        raise ValueError(f"config file not found: {path!r}")
    with open(path) as f:
        loader = _StrictLoader(f)
        loader.name = path
        try:
            return loader.get_single_data() or {}
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = f":{mark.line + 1}" if mark else ""
            raise ValueError(f"{path}{line}: YAML syntax error: {e.problem or e.context}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: YAML error: {str(e).splitlines()[0]}") from None
        finally:
            loader.dispose()


def build_config(config_files=(), overrides=(), cls=None) -> ExperimentConfig:
    """Defaults -> each YAML file in order -> each `a.b=value` override -> validated construction."""
    cls = cls or ExperimentConfig
    tree = _defaults(cls)
    for path in config_files:
        merge_dict(tree, cls, read_yaml(path), source=path)
    for override in overrides:
        apply_override_dict(tree, cls, override)
    return from_dict(cls, tree)


def apply_override(cfg: ExperimentConfig, override: str) -> ExperimentConfig:
    """A copy of `cfg` with one `a.b=value` override applied (validated)."""
    cls = type(cfg)
    return from_dict(cls, apply_override_dict(to_dict(cfg), cls, override))


def replace(cfg: ExperimentConfig, **sections: dict) -> ExperimentConfig:
    """A copy of `cfg` with fields of sections replaced, e.g. `replace(cfg, data={"image_size": 32})`."""
    tree = to_dict(cfg)
    merge_dict(tree, type(cfg), sections, source="replace")
    return from_dict(type(cfg), tree)


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Sections validate themselves on construction; kept for callers that built a config by hand."""
    return from_dict(type(cfg), to_dict(cfg))


def save_params(cfg: ExperimentConfig, model_dir: str) -> str:
    """Writes `<model_dir>/params.yaml` (see `RunDir.save_params`)."""
    from finegrain_tf.train.run_dir import RunDir
    return RunDir(model_dir).save_params(cfg)


def load_params(model_dir: str) -> ExperimentConfig:
    """Reads `<model_dir>/params.yaml` written by the training binary (strictly)."""
    from finegrain_tf.train.run_dir import RunDir
    return RunDir(model_dir).load_params()
