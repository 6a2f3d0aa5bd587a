"""Shared by the training tests: the toy-size overrides ($TINY of the issues) and the binary's command."""

import os
import sys

TINY = [
    "data.image_size=32", "data.batch_size=8", "data.synthetic.num_classes=4",
    "data.synthetic.num_superclasses=2", "data.synthetic.train_per_class=8",
    "data.synthetic.val_per_class=2", "data.synthetic.test_per_class=4",
    "data.synthetic.image_size=32", "optimizer.learning_rate=0.01", "train.log_every=1",
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def train_cmd(model_dir, *overrides, config_files=()):
    """`finegrain-train` (as `python -m`) on the toy data with `overrides`."""
    args = [sys.executable, "-m", "finegrain_tf.train.main", f"--model_dir={model_dir}"]
    args += [f"--config={path}" for path in config_files]
    return args + [f"--set={o}" for o in TINY + list(overrides)]
