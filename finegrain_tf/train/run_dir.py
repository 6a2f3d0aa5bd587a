"""The run directory of `finegrain-train`: every artifact name in one place.

    <model_dir>/
      params.yaml            the resolved ExperimentConfig (finegrain-export reads it back)
      model.keras            the trained model (strategy-free copy; written only from finite weights)
      backbone.weights.h5    the backbone alone, for a second stage (model.weights=<this file>)
      class_names.txt        one class name per line, in label order
      class_counts.json      training images per class of the data the model was FIRST trained on
      class_counts_stage.json  the counts of the latest stage when it differs (e.g. capped, §4.2.2)
      eval_report.json       the final evaluation report
      history.jsonl          one JSON line per logged step / periodic evaluation (the plots' source)
      checkpoints/           tf.train.Checkpoint files (ckpt-N.*) and best/ (the best by a metric)
      logs/train, logs/eval  TensorBoard event files
      plots/*.png            curves, per-class accuracy by training count, confusion matrix

Export, analysis, the bootstrap rounds and the demo read runs through `RunDir`, never by typing names.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:
    import keras

    from finegrain_tf.train.config import ExperimentConfig


def register_custom_objects() -> None:
    """Imports every module that registers Keras objects (layers, losses, schedules) for loading."""
    import finegrain_tf.layers  # noqa: F401
    import finegrain_tf.losses  # noqa: F401
    import finegrain_tf.train.optim  # noqa: F401  (the learning-rate schedule)


class _Artifact:
    """A file or folder of the run: `RunDir.X` is its name, `run_dir.X` its path."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run_dir, owner):
        return self.name if run_dir is None else os.path.join(run_dir.path, self.name)


class RunDir:
    """Paths and readers/writers of the artifacts of one training run."""

    params_path = _Artifact("params.yaml")
    model_path = _Artifact("model.keras")
    backbone_weights_path = _Artifact("backbone.weights.h5")
    class_names_path = _Artifact("class_names.txt")
    class_counts_path = _Artifact("class_counts.json")
    stage_class_counts_path = _Artifact("class_counts_stage.json")
    eval_report_path = _Artifact("eval_report.json")
    history_path = _Artifact("history.jsonl")
    checkpoint_dir = _Artifact("checkpoints")
    best_checkpoint_dir = _Artifact(os.path.join("checkpoints", "best"))
    logs_dir = _Artifact("logs")
    plots_dir = _Artifact("plots")

    def __init__(self, path: str):
        if not path:
            raise ValueError("the run directory path is empty")
        self.path = str(path)

    def __repr__(self):
        return f"RunDir({self.path!r})"

    def log_dir(self, which: str = "train") -> str:
        return os.path.join(self.logs_dir, which)

    def plot_path(self, name: str) -> str:
        return os.path.join(self.plots_dir, name)

    def makedirs(self) -> "RunDir":
        os.makedirs(self.path, exist_ok=True)
        return self

    def _require(self, path: str) -> str:
        if not os.path.exists(path):
            raise ValueError(f"no {os.path.basename(path)} in run directory {self.path!r}: is it a "
                             f"finegrain-train run?")
        return path

    # Config ----------------------------------------------------------------------------------------
    def save_params(self, cfg: "ExperimentConfig") -> str:
        from finegrain_tf.train.config import to_dict
        self.makedirs()
        with open(self.params_path, "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        return self.params_path

    def load_params(self) -> "ExperimentConfig":
        """The run's ExperimentConfig, read strictly (unknown keys are errors)."""
        from finegrain_tf.train.config import build_config
        return build_config([self._require(self.params_path)])

    # Model -----------------------------------------------------------------------------------------
    def save_model(self, model: "keras.Model") -> str:
        bad = [w.path for w in model.weights if not np.all(np.isfinite(np.asarray(w)))]
        if bad:
            raise ValueError(f"refusing to write {self.model_path}: non-finite weights in {bad[:3]}")
        model.save(self.model_path)
        return self.model_path

    def load_model(self, compile: bool = False) -> "keras.Model":
        import keras
        register_custom_objects()
        return keras.models.load_model(self._require(self.model_path), compile=compile)

    # Classes and counts ---------------------------------------------------------------------------
    def save_class_names(self, names) -> None:
        with open(self.class_names_path, "w") as f:
            f.write("\n".join(str(n) for n in names) + "\n")

    def load_class_names(self) -> list:
        with open(self._require(self.class_names_path)) as f:
            return [line.rstrip("\n") for line in f if line.strip()]

    def save_class_counts(self, counts) -> None:
        """Records the training counts. The first stage's counts stay in class_counts.json (the
        report's head/tail split follows the data the backbone learnt from); a later stage with
        different counts (e.g. capped by data.balanced_cap) goes to class_counts_stage.json."""
        counts = [int(c) for c in np.asarray(counts).reshape(-1)]
        if os.path.exists(self.class_counts_path) and self.load_class_counts() != counts:
            with open(self.stage_class_counts_path, "w") as f:
                json.dump(counts, f)
            return
        with open(self.class_counts_path, "w") as f:
            json.dump(counts, f)

    def load_class_counts(self) -> list:
        with open(self._require(self.class_counts_path)) as f:
            return [int(c) for c in json.load(f)]

    # Reports and history ---------------------------------------------------------------------------
    def save_eval_report(self, report: dict) -> None:
        with open(self.eval_report_path, "w") as f:
            json.dump(report, f, indent=2)

    def load_eval_report(self) -> dict:
        with open(self._require(self.eval_report_path)) as f:
            return json.load(f)

    def append_history(self, record: dict) -> None:
        with open(self.history_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def load_history(self) -> list:
        """History records; a step logged twice (a resumed run) keeps its latest record."""
        if not os.path.exists(self.history_path):
            return []
        latest: dict = {}
        with open(self.history_path) as f:
            for line in f:
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a killed run
                        continue
                    latest[(record.get("kind"), record.get("step"))] = record
        return sorted(latest.values(), key=lambda r: (r.get("step", 0), r.get("kind", "")))

    def exists(self, name: str = "") -> bool:
        """Whether the run directory (or its artifact `name`, e.g. `RunDir.model_path`) exists."""
        return os.path.exists(os.path.join(self.path, name))
