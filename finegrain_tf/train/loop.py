"""The generic training loop of `finegrain-train`: strategy, checkpoints, resume, progress, TensorBoard.

What one kind of training means (data, model, loss, step, evaluation, artifacts) is the `Task` of
`cfg.task.name` (`finegrain_tf.train.task`); this loop only drives it. Keras 3 `model.fit` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585), so the loop is written with `strategy.run` and
`tf.nn.compute_average_loss`; the project's layers and losses still work in a user's own `model.fit`.

Guarantees:
* Exact resume: the checkpoint holds the model, the optimizer, the step AND the input iterator's
  position (shuffle buffer, augmentation counters), so a killed and resumed run follows the same
  per-step losses as an uninterrupted one. The iterator is keyed by a fingerprint of the data
  pipeline: a later stage with other data (e.g. the balanced second stage) restores only the model.
* Damaged checkpoints fall back: an unreadable `checkpoint` state file or a truncated / missing
  ckpt-N file is logged as a warning naming it, and training resumes from the newest intact one.
* Non-finite loss or gradient norm stops training with an error naming the step
  (`train.on_nonfinite=stop`), or skips that update (`skip_step`); model.keras is never written
  from non-finite weights.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import re
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
import yaml
from absl import logging

from finegrain_tf.train import evaluation
from finegrain_tf.train.config import ExperimentConfig
from finegrain_tf.train.optim import build_optimizer, configure_weight_decay
from finegrain_tf.train.run_dir import RunDir
from finegrain_tf.train.strategy import is_chief, make_strategy
from finegrain_tf.train.task import Task, best_metric, get_task
from finegrain_tf.utils.progress import ProgressBar


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, no intact checkpoint); the message says why."""


@dataclasses.dataclass
class TrainResult:
    model_dir: str
    step: int
    resumed_from: int
    seconds: float
    report: dict


# --------------------------------------------------------------------------------------------------
# Set-up


def _worker_dir(model_dir: str, strategy) -> str:
    """Non-chief workers of a multi-worker run write their (identical) checkpoints to a temp dir."""
    if is_chief(strategy):
        return model_dir
    task_id = strategy.cluster_resolver.task_id
    return os.path.join(tempfile.gettempdir(), f"finegrain_worker_{task_id}_{os.getpid()}")


def _set_precision(cfg: ExperimentConfig) -> None:
    """Mixed precision is bfloat16 on every device: it keeps float32's range, so no loss scaling
    (Keras 3.15's LossScaleOptimizer fails inside a tf.function on the TF backend)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if cfg.train.mixed_precision
                                            else "float32")


def _build_optimizer(cfg: ExperimentConfig, model: keras.Model):
    optimizer = build_optimizer(cfg.optimizer, cfg.train.steps)
    if cfg.optimizer.weight_decay:
        configure_weight_decay(optimizer, model, cfg.optimizer.decay_bias, cfg.optimizer.decay_batchnorm)
    optimizer.build(model.trainable_variables)
    return optimizer


def input_fingerprint(cfg: ExperimentConfig, task: Task, replicas: int) -> str:
    """Identifies the input pipeline (the task's `input_sections` of `cfg`), so only a run with the
    same pipeline restores its position."""
    sections = {name: dataclasses.asdict(getattr(cfg, name)) for name in task.input_sections}
    key = yaml.safe_dump({**sections, "task": cfg.task.name, "loss": cfg.loss.name,
                          "replicas": replicas}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# Checkpoints: newest intact one wins


def _checkpoint_number(prefix: str) -> int:
    match = re.search(r"ckpt-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def _candidate_checkpoints(ckpt_dir: str) -> tuple[list, bool]:
    """(checkpoint prefixes newest first, whether the `checkpoint` state file is readable)."""
    state_file = os.path.join(ckpt_dir, "checkpoint")
    listed, state_ok = [], True
    if os.path.exists(state_file):
        try:
            state = tf.train.get_checkpoint_state(ckpt_dir)
            if state is None or not state.model_checkpoint_path:
                raise ValueError("it is empty")
            listed = [os.path.join(ckpt_dir, os.path.basename(p))
                      for p in state.all_model_checkpoint_paths]
        except Exception as e:  # garbage, binary junk, truncated text proto
            state_ok = False
            logging.warning("checkpoint state file %s is damaged (%s: %s); looking for ckpt-N files "
                            "instead", state_file, type(e).__name__, str(e).splitlines()[0][:200]
                            if str(e) else "")
    on_disk = {re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)
               for path in glob.glob(os.path.join(ckpt_dir, "ckpt-*"))}
    prefixes = sorted(set(listed) | on_disk, key=_checkpoint_number, reverse=True)
    return [p for p in prefixes if _checkpoint_number(p) >= 0], state_ok


def restore_newest_intact(checkpoint: tf.train.Checkpoint, ckpt_dir: str) -> str | None:
    """Restores the newest checkpoint of `ckpt_dir` that reads back completely, warning about each
    damaged one (truncated or missing .index / .data, unreadable state file); returns its prefix
    (None when there is none). The state file is rewritten to list the intact checkpoints."""
    candidates, state_ok = _candidate_checkpoints(ckpt_dir)
    if not candidates:
        if not state_ok:
            os.remove(os.path.join(ckpt_dir, "checkpoint"))
        return None
    restored, damaged = None, []
    for prefix in candidates:
        try:
            checkpoint.restore(prefix).expect_partial().assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError, IndexError, UnicodeDecodeError) as e:
            damaged.append(prefix)
            logging.warning("checkpoint %s is damaged (%s: %s); trying an older one", prefix,
                            type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            continue
        restored = prefix
        break
    if restored is None:
        raise TrainingError(f"every checkpoint in {ckpt_dir} is damaged: {damaged}; move the "
                            f"folder away to train from scratch")
    if damaged or not state_ok:
        intact = sorted((p for p in candidates if p not in damaged), key=_checkpoint_number)
        tf.compat.v1.train.update_checkpoint_state(ckpt_dir, restored,
                                                   all_model_checkpoint_paths=intact)
    return restored


# --------------------------------------------------------------------------------------------------
# The loop


class _Best:
    """Tracks the best periodic evaluation (`train.best_metric`, in the task's direction) in
    variables that live in the checkpoint, so early stopping survives a resume."""

    def __init__(self, cfg, checkpoint_dir, model):
        self.metric, higher_is_better = best_metric(cfg)
        self.patience = cfg.train.early_stopping
        self.sign = 1.0 if higher_is_better else -1.0
        # sign * metric: the best evaluation has the largest score whatever the direction
        self.value = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_value")
        self.stale = tf.Variable(0, dtype=tf.int64, trainable=False, name="evals_without_gain")
        self.checkpoint = tf.train.Checkpoint(model=model)
        self.manager = tf.train.CheckpointManager(self.checkpoint, checkpoint_dir, max_to_keep=1)

    def update(self, report: dict, step: int) -> bool:
        """Records an evaluation; returns True when training should stop early."""
        value = float(report[self.metric])
        if self.sign * value > float(self.value.numpy()):
            self.value.assign(self.sign * value)
            self.stale.assign(0)
            self.manager.save(checkpoint_number=step)
            logging.info("step %d: new best %s = %.4f (saved to %s)", step, self.metric, value,
                         self.manager.latest_checkpoint)
        else:
            self.stale.assign_add(1)
        return bool(self.patience) and int(self.stale.numpy()) >= self.patience

    def restore(self) -> None:
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).expect_partial()
            logging.info("restored the best model (%s = %.4f) from %s", self.metric,
                         self.sign * float(self.value.numpy()), self.manager.latest_checkpoint)


def _worker_layout(strategy) -> tuple[int, int, int]:
    """(workers, this worker's index, replicas on this worker) of `strategy`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    workers = [(kind, i) for kind in ("chief", "worker") for i in range(len(spec.get(kind, [])))]
    if len(workers) <= 1:
        return 1, 0, strategy.num_replicas_in_sync
    index = workers.index((resolver.task_type, resolver.task_id))
    return len(workers), index, strategy.num_replicas_in_sync // len(workers)


def _make_train_function(task: Task, strategy, model, optimizer, metrics, jit_compile: bool):
    """A tf.function taking the worker's input iterator: one global step on every replica.

    Each worker reads ONE plain tf.data iterator of worker batches (checkpointable, unlike
    tf.distribute's iterators) and hands consecutive slices to its replicas, so N replicas see the
    same global batch, in the same order, as one device."""
    _, worker, local = _worker_layout(strategy)

    def replica_step(inputs):
        if not task.skip_nonfinite:
            task.train_step(inputs, model, optimizer, metrics)
            return
        # A skipped step must not leave its forward pass behind either (batch-norm statistics).
        state = model.non_trainable_variables
        saved = [tf.identity(v) for v in state]
        task.train_step(inputs, model, optimizer, metrics)

        def restore():
            for variable, value in zip(state, saved):
                variable.assign(value)
            return tf.constant(False)
        tf.cond(task.step_finite, lambda: tf.constant(True), restore)

    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_function(iterator):
        batch = next(iterator)
        if local > 1:
            def replica_slice(ctx):
                i = ctx.replica_id_in_sync_group - worker * local
                return tf.nest.map_structure(
                    lambda t: t[i * (tf.shape(t)[0] // local):(i + 1) * (tf.shape(t)[0] // local)],
                    batch)
            batch = strategy.experimental_distribute_values_from_function(replica_slice)
        strategy.run(replica_step, args=(batch,))

    return train_function


def _worker_inputs(task: Task, strategy) -> tf.data.Dataset:
    """This worker's training batches (global batch / workers examples each)."""
    workers, worker, _ = _worker_layout(strategy)
    if workers == 1:
        return task.build_inputs(training=True)
    context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                         num_replicas_in_sync=workers)
    return task.build_inputs(training=True, input_context=context)


def _scalar(metric) -> float:
    return float(metric.result())


def _learning_rate(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr.numpy()) if hasattr(lr, "numpy") else float(lr)


def _warn_if_batchnorm_not_warmed_up(train_accuracy, report, num_classes, steps) -> None:
    """High train accuracy with eval accuracy near chance: the classic symptom of batch-norm moving
    statistics that have not caught up after a short run (momentum 0.99 ~ a few hundred steps)."""
    chance = 1.0 / max(num_classes, 1)
    top1 = report.get("top1")
    if train_accuracy is None or top1 is None:
        return
    if train_accuracy >= 0.8 and top1 <= 2.0 * chance:
        logging.warning("train accuracy %.2f but eval top-1 %.2f (chance %.2f) after %d steps: the "
                        "batch-norm moving statistics are probably not warmed up yet; train longer "
                        "(a few hundred steps) before trusting eval numbers", train_accuracy, top1,
                        chance, steps)


@dataclasses.dataclass
class Trainer:
    """What one run steps: the task and its model, optimizer, metrics and input iterator."""
    cfg: ExperimentConfig
    strategy: tf.distribute.Strategy
    task: Task
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    metrics: dict
    step: tf.Variable
    iterator: object
    init_dataset: tf.data.Dataset  # unsharded train batches for the data-dependent initialisation
    train_function: object

    def run_step(self) -> int:
        """One global step (the task's hook, then the replicas' step); returns the new step."""
        self.task.on_step(int(self.step.numpy()), self.model)
        self.train_function(self.iterator)
        return int(self.step.assign_add(1).numpy())


def build_trainer(cfg: ExperimentConfig, strategy: tf.distribute.Strategy) -> Trainer:
    """Builds the task of `cfg` with its data, model, optimizer and train step under `strategy`."""
    keras.utils.set_random_seed(cfg.train.seed)
    _set_precision(cfg)
    if cfg.data.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    task = get_task(cfg)
    init_dataset = task.build_inputs(training=True)  # also fills task.data_info
    info = task.data_info
    logging.info("training classes:\n%s", evaluation.format_class_counts(info.class_names,
                                                                        info.train_class_counts))
    train_ds = _worker_inputs(task, strategy)
    with strategy.scope():
        model = task.build_model()
        optimizer = _build_optimizer(cfg, model)
        task.build_losses()
        metrics = task.build_metrics()
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    train_function = _make_train_function(task, strategy, model, optimizer, metrics,
                                          cfg.train.jit_compile)
    return Trainer(cfg, strategy, task, model, optimizer, metrics, step, iter(train_ds),
                   init_dataset, train_function)


class _Recorder:
    """Where a run's numbers go: TensorBoard (logs/train, logs/eval) and, on the chief, history.jsonl."""

    def __init__(self, write_dir: RunDir, run_dir: RunDir, chief: bool):
        self.writers = {kind: tf.summary.create_file_writer(write_dir.log_dir(kind))
                        for kind in ("train", "eval")}
        self.run_dir = run_dir if chief else None

    def record(self, kind: str, step: int, values: dict, prefix: str = "", history: bool = True):
        with self.writers[kind].as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(prefix + name, value)
        if history and self.run_dir is not None:
            self.run_dir.append_history({"kind": kind, "step": step, **values})

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()


def _check_finite(trainer: Trainer, step: int) -> None:
    """Stops (train.on_nonfinite=stop) or warns (skip_step) after a non-finite loss / gradient."""
    metrics = trainer.metrics
    if _scalar(metrics["nonfinite_steps"]) == 0:
        return
    metrics["nonfinite_steps"].reset_state()
    message = (f"step {step}: non-finite loss or gradient norm (loss {_scalar(metrics['loss']):.4g}, "
               f"gradient norm {_scalar(metrics['grad_norm']):.4g})")
    if trainer.cfg.train.on_nonfinite == "stop":
        raise TrainingError(message + "; stopped without saving (lower optimizer.learning_rate, or "
                            "set train.on_nonfinite=skip_step)")
    logging.warning("%s; the update was skipped", message)


def _log_metrics(trainer: Trainer, recorder: _Recorder, step: int) -> dict:
    """The train metrics since the last log (then reset), with the learning rate."""
    values = {name: _scalar(m) for name, m in trainer.metrics.items() if name != "nonfinite_steps"}
    values["lr"] = _learning_rate(trainer.optimizer)
    recorder.record("train", step, values)
    for metric in trainer.metrics.values():
        metric.reset_state()
    return values


def _resume_or_initialize(trainer: Trainer, checkpoint, checkpoint_dir: str) -> int:
    """Restores the newest intact checkpoint, or runs the task's data-dependent initialisation on a
    fresh run; returns the step training starts from."""
    restored = restore_newest_intact(checkpoint, checkpoint_dir)
    step = int(trainer.step.numpy())
    if restored:  # a warning: re-running into an old model_dir continues that run, it does not restart
        logging.warning("%s already holds a run, which this one continues (give a new train.model_dir to "
                        "start over); resumed from %s at step %d", checkpoint_dir, restored, step)
    if step == 0:
        done = trainer.task.initialize(trainer.model, trainer.init_dataset)
        if done:
            logging.info("data-dependent initialisation: %s", done)
    return step


class _SkipWatch:
    """Images the input pipeline dropped while reading (`DatasetInfo.skip_counter`: files changed or
    removed since indexing, images over the decode limits): warned once per epoch, a TensorBoard
    scalar, and `skipped_images` in eval_report.json. Data without a counter reports nothing."""

    def __init__(self, info, batch_size: int):
        self.counter = getattr(info, "skip_counter", None)
        self.steps_per_epoch = max(1, int(getattr(info, "num_train", 0) or 0) // batch_size)

    def on_step(self, step: int, recorder: "_Recorder") -> None:
        if self.counter is None or step % self.steps_per_epoch:
            return
        counts = self.counter.warn_if_new(f"epoch {step // self.steps_per_epoch}")
        recorder.record("train", step, {"skipped_images": float(counts["total"])}, history=False)

    def report(self, report: dict) -> None:
        if self.counter is not None:
            report["skipped_images"] = self.counter.warn_if_new("end of training")


def train(cfg: ExperimentConfig, strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Trains `cfg` to `cfg.train.steps` (resuming from the newest intact checkpoint), evaluates and
    writes the run directory (see `RunDir`)."""
    start_time = time.time()
    strategy = strategy or make_strategy(cfg.train.strategy, cfg.train.tpu)
    chief = is_chief(strategy)
    run_dir = RunDir(cfg.train.model_dir)
    write_dir = RunDir(_worker_dir(cfg.train.model_dir, strategy))
    if chief:
        run_dir.save_params(cfg)
    trainer = build_trainer(cfg, strategy)
    task, model = trainer.task, trainer.model
    eval_ds = task.build_inputs(training=False)
    val_ds = task.build_inputs(training=False, split=cfg.data.val_split or None) \
        if cfg.train.eval_every else None
    best = _Best(cfg, write_dir.best_checkpoint_dir, model)
    skips = _SkipWatch(task.data_info, cfg.data.batch_size)
    fingerprint = input_fingerprint(cfg, task, strategy.num_replicas_in_sync)
    inputs = {f"input_{fingerprint}": trainer.iterator}
    if skips.counter is not None:  # the counts go on across a resume, with the input position
        inputs[f"skipped_{fingerprint}"] = skips.counter
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=trainer.optimizer, step=trainer.step, best_value=best.value,
        stale=best.stale, **inputs)
    resumed_from = _resume_or_initialize(trainer, checkpoint, write_dir.checkpoint_dir)
    manager = tf.train.CheckpointManager(checkpoint, write_dir.checkpoint_dir,
                                         max_to_keep=cfg.train.keep_checkpoints)
    recorder = _Recorder(write_dir, run_dir, chief)
    train_accuracy, current = None, resumed_from
    with ProgressBar(total=cfg.train.steps, desc="train", unit="step", enabled=chief) as bar:
        bar.update(resumed_from)
        while current < cfg.train.steps:
            current = trainer.run_step()
            _check_finite(trainer, current)
            values = {}
            if current % cfg.train.log_every == 0 or current == cfg.train.steps:
                values = _log_metrics(trainer, recorder, current)
                train_accuracy = values.get("accuracy", train_accuracy)
            bar.update(1, **values)
            skips.on_step(current, recorder)
            stop_early = False
            if val_ds is not None and current % cfg.train.eval_every == 0:
                report = task.evaluate(model, val_ds)
                recorder.record("eval", current, {k: v for k, v in report.items()
                                                  if isinstance(v, float)}, prefix="val_")
                stop_early = best.update(report, current)
            if current % cfg.train.checkpoint_every == 0 or current == cfg.train.steps or stop_early:
                manager.save(checkpoint_number=current)
            if stop_early:
                logging.info("early stopping at step %d: no %s gain in %d evaluations", current,
                             best.metric, cfg.train.early_stopping)
                break
    if val_ds is not None:
        best.restore()

    report = task.evaluate(model, eval_ds)
    report["train_steps"] = current
    skips.report(report)
    _warn_if_batchnorm_not_warmed_up(train_accuracy, report, task.data_info.num_classes, current)
    if chief:
        task.save_artifacts(run_dir, model, report)
        recorder.record("eval", current, {k: report[k] for k in ("top1", "top5", "balanced_accuracy")
                                          if isinstance(report.get(k), float)}, history=False)
        if cfg.train.plots:
            _write_plots(run_dir, recorder.writers["eval"], current)
    recorder.flush()
    return TrainResult(cfg.train.model_dir, current, resumed_from, time.time() - start_time, report)


def _write_plots(run_dir: RunDir, writer, step: int) -> None:
    """Loss / accuracy curves from the history, then every PNG of the run as a TensorBoard image."""
    from finegrain_tf.train import plots
    plots.curves(run_dir.plot_path("curves.png"), run_dir.load_history())
    with writer.as_default(step=step):
        for path in sorted(glob.glob(run_dir.plot_path("*.png"))):
            image = tf.io.decode_png(tf.io.read_file(path), channels=3)
            tf.summary.image(os.path.splitext(os.path.basename(path))[0], image[None])
