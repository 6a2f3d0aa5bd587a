"""finegrain-train: trains an experiment config under a tf.distribute strategy.

  finegrain-train --config configs/demo.yaml --set train.steps=500 --model_dir runs/demo

--config may be repeated (applied in order) and so may --set (typed `section.key=value` overrides).
The resolved config is written to <model_dir>/params.yaml; finegrain-export reads it back. A killed
run resumes from its newest intact checkpoint when started again with the same command.
"""

import sys

from absl import app, flags, logging

from finegrain_tf.train.config import build_config
from finegrain_tf.utils import cli

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("config", [], "YAML config file(s), applied in order.")
flags.DEFINE_multi_string("set", [], "Override `section.key=value`, coerced to the field's type.")
flags.DEFINE_string("model_dir", None, "Shortcut for --set train.model_dir=...")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    overrides = list(FLAGS.set)
    if FLAGS.model_dir:
        overrides.append(f"train.model_dir={FLAGS.model_dir}")
    try:
        cfg = build_config(FLAGS.config, overrides)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    from finegrain_tf.train import evaluation, loop  # heavy imports after flag validation
    try:
        result = loop.train(cfg)
    except (ValueError, loop.TrainingError) as e:  # bad data, non-finite loss, no intact checkpoint
        sys.exit(f"finegrain-train: error: {e}")
    logging.info("trained %d steps in %.1f s (resumed from step %d)", result.step, result.seconds,
                 result.resumed_from)
    print(evaluation.format_report(result.report))
    print(f"model dir: {result.model_dir}")


def run():
    cli.run(main, __name__)


if __name__ == "__main__":
    run()
