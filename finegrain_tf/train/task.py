"""The Task API: what one kind of training means (modelled on tensorflow/models `official/core/base_task.py`).

A `Task` is constructed from the whole `ExperimentConfig` and owns the data, the model, the loss, the
data-dependent initialisation, the train step and the evaluation of one kind of training. The generic
loop (`finegrain_tf.train.loop`: strategy, checkpoints, progress, TensorBoard, resume) calls it:

    task = get_task(cfg)                                   # the class registered as cfg.task.name
    dataset = task.build_inputs(training=True)             # fills task.data_info
    with strategy.scope():
        model = task.build_model(); loss = task.build_losses(); metrics = task.build_metrics()
    task.initialize(model, dataset)                        # fresh runs only (gamma, anchors, ...)
    for step in ...:
        task.on_step(step, model)
        strategy.run(task.train_step, args=(next(iterator), model, optimizer, metrics))
    report = task.evaluate(model, task.build_inputs(training=False))
    task.save_artifacts(RunDir(model_dir), model, report)

Register a task with `@register_task("name")` in `finegrain_tf/train/tasks/<name>.py` and add one import
line to `finegrain_tf/train/tasks/__init__.py`; `task.name` in the config picks it, and the config's
choices come from this registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import keras
import tensorflow as tf

if TYPE_CHECKING:  # the config imports this module to validate task.name
    from finegrain_tf.train.config import ExperimentConfig
    from finegrain_tf.train.run_dir import RunDir

TASKS: dict[str, type] = {}


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator: makes a `Task` subclass available as config `task.name: <name>`."""
    def wrap(cls):
        if name in TASKS and TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered by {TASKS[name].__qualname__}")
        TASKS[name] = cls
        cls.name = name
        return cls
    return wrap


def task_names() -> list:
    """The registered task names (importing the task modules registers them)."""
    import finegrain_tf.train.tasks  # noqa: F401
    return sorted(TASKS)


def best_metric(cfg: "ExperimentConfig") -> tuple[str, bool]:
    """(the metric that picks the best checkpoint, whether higher is better): `train.best_metric`,
    or the task's default when it is empty. A metric the task does not report is a ValueError."""
    task_names()  # imports the task modules, which fills TASKS
    choices = TASKS[cfg.task.name].best_metrics
    name = cfg.train.best_metric or next(iter(choices))
    if name not in choices:
        raise ValueError(f"train.best_metric={name!r} is not reported by task.name={cfg.task.name!r}; "
                         f"choose one of {list(choices)}")
    return name, choices[name]


def get_task(cfg: "ExperimentConfig") -> "Task":
    """The task of `cfg.task.name`, constructed from `cfg`."""
    names = task_names()
    if cfg.task.name not in TASKS:
        raise ValueError(f"task.name={cfg.task.name!r} is not one of {names}")
    return TASKS[cfg.task.name](cfg)


class Task:
    """One kind of training. Subclasses implement the methods that raise NotImplementedError."""

    name = ""
    # Config sections that shape the training input stream: a resumed run restores the saved input
    # position only when these (and the replica count) are unchanged.
    input_sections: tuple = ("data",)
    # Scalars of `evaluate` that can pick the best checkpoint (train.best_metric), each with whether
    # higher is better ("loss"-like metrics are minimised); the first is the default.
    best_metrics: dict = {}

    def __init__(self, cfg: "ExperimentConfig"):
        self.cfg = cfg
        self.data_info = None  # the data description, set by the first `build_inputs` call
        # train.on_nonfinite=skip_step: `apply_gradients` leaves a non-finite step's update out.
        self.skip_nonfinite = cfg.train.on_nonfinite == "skip_step"
        self.step_finite = None  # set by `apply_gradients` while the train step is traced

    # -- data, model, loss ----------------------------------------------------------------------

    def build_inputs(self, training: bool, input_context: Optional[tf.distribute.InputContext] = None,
                     split: Optional[str] = None) -> tf.data.Dataset:
        """Train batches (repeated, shuffled; per-replica batches when `input_context` is given) or
        evaluation batches of `split` (default: the config's eval split). Sets `self.data_info`."""
        raise NotImplementedError

    def build_model(self) -> keras.Model:
        """The model trained and saved as model.keras (build it after `build_inputs`)."""
        raise NotImplementedError

    def build_losses(self):
        """One loss object, usable by `train_step` and in a user's `model.fit`."""
        raise NotImplementedError

    def build_metrics(self) -> dict:
        """Train metrics updated by `train_step` (keras.metrics, created under the strategy scope).
        "loss", "grad_norm" and "nonfinite_steps" are read by the loop."""
        return {"loss": keras.metrics.Mean("loss"), "grad_norm": keras.metrics.Mean("grad_norm"),
                "nonfinite_steps": keras.metrics.Sum("nonfinite_steps")}

    def initialize(self, model: keras.Model, dataset: tf.data.Dataset) -> dict:
        """Data-dependent initialisation on fresh runs only; returns what it did (for the log)."""
        return {}

    # -- training ---------------------------------------------------------------------------------

    def on_step(self, step: int, model: keras.Model) -> None:
        """Called by the loop before every step (outside tf.function): LDAM's DRW switch, sampler
        refreshes, ..."""

    def train_step(self, inputs, model: keras.Model, optimizer, metrics: dict) -> None:
        """One step on one replica's batch (runs inside `strategy.run`); updates `metrics`."""
        raise NotImplementedError

    def average_loss(self, per_example: tf.Tensor, model: keras.Model) -> tf.Tensor:
        """This replica's share of the global-batch mean of `per_example` plus its share of the
        model's regularisation losses (summed over replicas, this is the one-device loss)."""
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.cfg.data.batch_size)
        if model.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        return loss

    def apply_gradients(self, tape: tf.GradientTape, loss: tf.Tensor, model: keras.Model, optimizer,
                        metrics: dict) -> None:
        """Gradient of `loss` (this replica's share of the global-batch mean), applied by `optimizer`.

        Records the gradient norm and whether the loss or the gradient norm is non-finite in
        `metrics` ("grad_norm", "nonfinite_steps"; summed over replicas). With `skip_nonfinite`
        (single-replica strategies: a conditional update cannot hold the replicas' gradient
        all-reduce) such a step changes neither the weights nor the optimizer state.
        """
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        grad_norm = tf.linalg.global_norm([g for g in grads if g is not None])
        finite = tf.logical_and(tf.math.is_finite(tf.cast(loss, tf.float32)),
                                tf.math.is_finite(grad_norm))
        self.step_finite = finite  # the loop restores the non-trainable state of a skipped step
        if self.skip_nonfinite:
            def apply():
                optimizer.apply(grads, variables)
                return tf.constant(True)
            tf.cond(finite, apply, lambda: tf.constant(False))
        else:
            optimizer.apply_gradients(list(zip(grads, variables)))
        metrics["grad_norm"].update_state(grad_norm)
        metrics["nonfinite_steps"].update_state(1.0 - tf.cast(finite, tf.float32))

    def evaluate(self, model: keras.Model, dataset: tf.data.Dataset) -> dict:
        """Metrics of `model` on evaluation batches (a JSON-able dict)."""
        raise NotImplementedError

    def save_artifacts(self, run_dir: "RunDir", model: keras.Model, report: dict) -> None:
        """Writes the run's artifacts (model.keras, class names, report, ...) through `run_dir`."""
        raise NotImplementedError
