"""Training-binary overhead (issue 16 item 4): images/s of `finegrain-train`'s step loop vs a plain
Keras `model.fit` on the same task, model, input pipeline and batch, and the XLA speed-up of the step.

For each backbone, the same `ExperimentConfig` (configs/demo.yaml with size overrides, synthetic
data, weights=None) builds:
  * the binary's `Trainer` (`finegrain_tf.train.loop.build_trainer`), timed over --steps calls of
    `run_step()` (what `finegrain-train` runs between checkpoints), with and without
    `train.jit_compile`;
  * the task's dataset, model and loss object compiled into `model.fit` (SGD with the config's
    learning rate and momentum), timed over one `fit` of --steps steps.
Candidates alternate for --rounds rounds after a warm-up; each round gives batch / median step time
(fit's steps timed by a callback between batch ends), and the medians over rounds of images/s are
printed with the ratio to `model.fit` (goal >= 0.95).

    python benchmarks/bench_train_loop.py                          # small CNN at 64 px
    python benchmarks/bench_train_loop.py --backbones ResNet50 --image_size 224 --batch 16
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

    from finegrain_tf.train.loop import build_trainer
    trainer = build_trainer(cfg, tf.distribute.get_strategy())

    def run(steps):
        durations = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.run_step()
            durations.append(time.perf_counter() - start)
        return durations
    return run


def _fit_runner(cfg):
    import keras
    import numpy as np

    from finegrain_tf.train.task import get_task
    task = get_task(cfg)
    dataset = task.build_inputs(training=True)
    model = task.build_model()
    optimizer = keras.optimizers.SGD(cfg.optimizer.learning_rate, momentum=cfg.optimizer.momentum)
    model.compile(optimizer=optimizer, loss=task.build_losses(), jit_compile=False)

    class StepTimes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    times = StepTimes()

    def run(steps):
        # Step durations between consecutive batch ends: fit's per-call set-up (a new epoch
        # iterator over the dataset) and its first batch are left out, as the loop's are not paid
        # per step either.
        model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[times])
        return list(np.diff(times.ends))
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
            rates = {name: [] for name in runners}
            for _ in range(FLAGS.rounds):
                for name, run in runners.items():
                    rates[name].append(FLAGS.batch / float(np.median(run(FLAGS.steps))))
        fit = float(np.median(rates["model.fit"]))
        print(f"-- {backbone}")
        for name, values in rates.items():
            med = float(np.median(values))
            print(f"  {name:28s} {med:8.1f} images/s  {med / fit:5.2f}x model.fit   (rounds: "
                  + ", ".join(f"{v:.1f}" for v in values) + ")")


if __name__ == "__main__":
    app.run(main)
