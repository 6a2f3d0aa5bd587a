"""Training-binary overhead (issue 16 item 4): images/s of `finegrain-train`'s step loop vs a plain
Keras `model.fit` on the same task, model, optimizer, input pipeline and batch, and the XLA speed-up
of the step.

For each backbone, the same `ExperimentConfig` (configs/demo.yaml with size overrides, synthetic
data, weights=None) builds:
  * the binary's `Trainer` (`finegrain_tf.train.loop.build_trainer`), timed over --steps iterations
    of the per-step body of `train()`: `run_step()` (the task's hook, the step, the step counter),
    the non-finite check and the progress bar update; with and without `train.jit_compile`;
  * the task's dataset, model and loss compiled into `model.fit`, with the optimizer the binary
    builds for the config (`train.optim.build_optimizer` + `configure_weight_decay`: same schedule,
    momentum and weight decay), timed over one `fit` of --steps steps.
Candidates alternate for --rounds rounds after a warm-up (the order reversed every other round);
each round gives batch / median step time, wall and process CPU time (fit's steps timed by a
callback between batch ends). Printed: the medians over rounds of images/s, the ratio to
`model.fit` (goal >= 0.95) and the XLA speed-up (XLA step vs the same loop without XLA), with the
load average of the machine.

    python benchmarks/bench_train_loop.py                          # small CNN at 64 px
    python benchmarks/bench_train_loop.py --backbones ResNet50 --image_size 224 --batch 8 --steps 3
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("backbones", ["small_cnn"], "Backbones (small_cnn, ResNet50, ...: the config choices).")
flags.DEFINE_integer("image_size", 64, "Input size.")
flags.DEFINE_integer("batch", 32, "Global batch size.")
flags.DEFINE_integer("steps", 10, "Timed steps per candidate and round.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds (after one warm-up round).")
flags.DEFINE_boolean("xla", True, "Also time the binary's step with train.jit_compile=true.")


def _config(backbone: str, model_dir: str, jit: bool):
    from finegrain_tf.train.config import build_config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return build_config([os.path.join(root, "configs", "demo.yaml")], [
        f"model.backbone={backbone}", f"data.image_size={FLAGS.image_size}",
        f"data.synthetic.image_size={FLAGS.image_size}", f"data.batch_size={FLAGS.batch}",
        f"train.model_dir={model_dir}", f"train.jit_compile={'true' if jit else 'false'}"])


def _loop_runner(cfg):
    import tensorflow as tf

    from finegrain_tf.train.loop import _check_finite, build_trainer
    from finegrain_tf.utils.progress import ProgressBar
    trainer = build_trainer(cfg, tf.distribute.get_strategy())
    bar = ProgressBar(total=None, desc="train", unit="step", mode="log", log_interval_s=3600.0)

    def run(steps):
        durations = []
        for _ in range(steps):  # the per-step body of loop.train() (logging every log_every aside)
            start, start_cpu = time.perf_counter(), time.process_time()
            current = trainer.run_step()
            _check_finite(trainer, current)
            bar.update(1)
            durations.append((time.perf_counter() - start, time.process_time() - start_cpu))
        return durations
    return run


def _fit_runner(cfg):
    import keras

    from finegrain_tf.train.optim import build_optimizer, configure_weight_decay
    from finegrain_tf.train.task import get_task
    task = get_task(cfg)
    dataset = task.build_inputs(training=True)
    model = task.build_model()
    optimizer = build_optimizer(cfg.optimizer, cfg.train.steps)  # what the binary trains with
    if cfg.optimizer.weight_decay:
        configure_weight_decay(optimizer, model, cfg.optimizer.decay_bias, cfg.optimizer.decay_batchnorm)
    model.compile(optimizer=optimizer, loss=task.build_losses(), jit_compile=False)

    class StepTimes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append((time.perf_counter(), time.process_time()))

    times = StepTimes()

    def run(steps):
        # Step durations between consecutive batch ends: fit's per-call set-up (a new epoch
        # iterator over the dataset) and its first batch are left out, as the loop's are not paid
        # per step either.
        model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[times])
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(times.ends, times.ends[1:])]
    return run


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    print(f"TF {tf.__version__}; {os.cpu_count()} CPUs visible (shared machine: compare the ratios); "
          f"batch {FLAGS.batch}, {FLAGS.image_size} px, {FLAGS.steps} steps per timing, "
          f"{FLAGS.rounds} interleaved rounds")
    for backbone in FLAGS.backbones:
        with tempfile.TemporaryDirectory() as tmp:
            runners = {"model.fit": _fit_runner(_config(backbone, os.path.join(tmp, "fit"), False)),
                       "finegrain-train loop": _loop_runner(_config(backbone, os.path.join(tmp, "a"), False))}
            if FLAGS.xla:
                runners["finegrain-train loop, XLA"] = _loop_runner(
                    _config(backbone, os.path.join(tmp, "b"), True))
            for run in runners.values():  # warm-up: tracing, compilation, pipeline start
                run(2)
            print(f"-- {backbone}: load average before timing {_load()}")
            rates = {name: [] for name in runners}
            cpu_rates = {name: [] for name in runners}
            names = list(runners)
            for r in range(FLAGS.rounds):
                for name in (names if r % 2 == 0 else names[::-1]):
                    durations = np.asarray(runners[name](FLAGS.steps))
                    rates[name].append(FLAGS.batch / float(np.median(durations[:, 0])))
                    cpu_rates[name].append(FLAGS.batch / float(np.median(durations[:, 1])))
            print(f"   load average after timing {_load()}")
        for label, values_by_name in (("wall", rates), ("CPU", cpu_rates)):
            fit = float(np.median(values_by_name["model.fit"]))
            print(f"  {label} time:")
            for name, values in values_by_name.items():
                med = float(np.median(values))
                ratios = [v / f for v, f in zip(values, values_by_name["model.fit"])]
                print(f"    {name:28s} {med:8.2f} images/s  {med / fit:5.2f}x model.fit   (rounds: "
                      + ", ".join(f"{v:.2f}" for v in values) + "; per-round ratios: "
                      + ", ".join(f"{v:.2f}" for v in ratios) + ")")
            if FLAGS.xla:
                speedups = [x / p for x, p in zip(values_by_name["finegrain-train loop, XLA"],
                                                   values_by_name["finegrain-train loop"])]
                print(f"    XLA speed-up of the step (XLA loop / loop): {np.median(speedups):.2f}x "
                      "(per-round: " + ", ".join(f"{v:.2f}" for v in speedups) + ")")


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    app.run(main)
