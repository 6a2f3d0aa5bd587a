"""Dataset bootstrapping rounds with humans in the loop (seed 000 §2.2.2).

Round i = 1..k over the pool subsets C_1..C_k:

1. train a model on S_{i-1} ∪ H_{i-1} with `finegrain-train` (the metric task mixes the hard
   negatives 1:1 into its triplets, §2.3.2 / §2.4.3);
2. score C_i (after the optional coarse filter of §2.2.1) and keep D_i, the images whose top
   confidence exceeds the threshold (0.5 in the seed);
3. queue D_i in the label store with the proposed class (cards show exemplars of S_{i-1});
4. read the verdicts: S_i = S_{i-1} ∪ T_i (yes), H_i = H_{i-1} ∪ F_i (no).

Everything a round produces lives in `<work_dir>/round_NN/`:

    state.json           stage ("trained" -> "queued" (scored, proposals in the store) -> "done"), counts
    model/               the round's finegrain-train run (RunDir)
    coarse_scores/ scores/   resumable, shardable scoring passes (`scoring.py`)
    dataset.csv          S_i (path,label manifest; no image copies)
    hard_negatives.csv   H_i (image_path,proposed_class)

`round_00/` holds S_0 and an empty H_0. Each stage is recorded atomically once it is complete, so a
killed or stopped process resumes at the first unfinished stage (training resumes from its own
checkpoints, scoring from its chunks). `plan.json` pins the settings that define the rounds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional

import numpy as np
from absl import logging

from finegrain_tf.bootstrap import scoring
from finegrain_tf.bootstrap.manifest import read_manifest, write_manifest
from finegrain_tf.bootstrap.pool import CandidatePool, load_pool
from finegrain_tf.data.manifest import read_rows
from finegrain_tf.sampling.hard_negatives import write_hard_negatives

STATE = "state.json"
PLAN = "plan.json"
# Settings that define which images go where; a resumed run must not change them.
_PINNED = ("seed_manifest", "pool", "rounds", "threshold", "coarse_run_dir", "coarse_classes",
           "coarse_threshold", "seed")


@dataclasses.dataclass
class BootstrapPlan:
    """Settings of a bootstrapping run (the `finegrain-bootstrap` flags)."""
    work_dir: str
    seed_manifest: str  # S_0: path,label
    pool: str  # folder or manifest of candidates
    train_configs: tuple = ()  # finegrain-train YAML files for each round's model
    train_overrides: tuple = ()  # and `section.key=value` overrides
    eval_manifest: str = ""  # test images (path,label) each round's model is evaluated on
    rounds: int = 3
    threshold: float = 0.5  # D_i: top confidence > threshold
    coarse_run_dir: str = ""  # optional coarse-category classifier run (§2.2.1)
    coarse_classes: tuple = ()  # its classes that count as the coarse category (empty: all)
    coarse_threshold: float = 0.5
    store_url: str = ""  # label store ("" = sqlite:///<work_dir>/labels.db)
    judgements: int = 1  # labelers per item (k; majority verdict)
    exemplars: int = 4  # exemplar images per class on the review card
    class_definitions: str = ""  # CSV/JSONL with class,definition columns
    image_root: str = ""  # root for pool manifests that list ids only
    score_batch_size: int = 64
    chunk_size: int = 1024
    seed: int = 0

    def __post_init__(self):
        for name in ("seed_manifest", "pool"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required")
        if not os.path.exists(self.seed_manifest):
            raise ValueError(f"seed manifest {self.seed_manifest!r} does not exist")
        if not os.path.exists(self.pool):
            raise ValueError(f"pool {self.pool!r} does not exist")
        for name in ("rounds", "judgements", "score_batch_size", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.exemplars, bool) or not isinstance(self.exemplars, int) or self.exemplars < 0:
            raise ValueError(f"exemplars must be an int >= 0, got {self.exemplars!r}")
        for name in ("threshold", "coarse_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.coarse_run_dir and not os.path.isdir(self.coarse_run_dir):
            raise ValueError(f"coarse_run_dir {self.coarse_run_dir!r} is not a directory")
        if self.class_definitions and not os.path.isfile(self.class_definitions):
            raise ValueError(f"class_definitions file {self.class_definitions!r} does not exist")
        self.train_configs = tuple(self.train_configs)
        self.train_overrides = tuple(self.train_overrides)
        self.coarse_classes = tuple(self.coarse_classes)

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{os.path.abspath(os.path.join(self.work_dir, 'labels.db'))}"


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def data_overrides(manifest: str, eval_manifest: str = "", hard_negatives: str = "") -> list:
    """finegrain-train overrides that train on a path,label manifest (+ a hard-negatives file)."""
    overrides = ["data.name=manifest", f"data.data_dir={manifest}"]
    if eval_manifest:
        overrides.append(f"data.eval_manifest={eval_manifest}")
    if hard_negatives:
        overrides.append(f"data.hard_negatives={hard_negatives}")
    return overrides


def default_train(configs, overrides) -> None:
    """Trains one round's model with the `finegrain-train` machinery."""
    from finegrain_tf.train import loop
    from finegrain_tf.train.config import build_config

    loop.train(build_config(list(configs), list(overrides)))


def run_dir_predictor(run_dir: str):
    """(predict_fn, class names, image_size, resize_size) of a finegrain-train run: class
    probabilities = softmax of the saved model's logits (eq 2.3 for an anchor-vote head)."""
    import tensorflow as tf

    from finegrain_tf.train.run_dir import RunDir

    run = RunDir(run_dir)
    model = run.load_model()
    cfg = run.load_params()

    def predict(images):
        return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32), axis=-1).numpy()

    return predict, run.load_class_names(), cfg.data.image_size, cfg.data.resize_size


class Bootstrapper:
    """Runs (and resumes) the rounds of a `BootstrapPlan`.

    Args:
      plan: the settings.
      store: a `finegrain_tf.review.store.LabelStore` (default: opened from `plan.store`).
      train_fn: (config files, overrides) -> None, trains a run into the overrides' train.model_dir.
      predictor_fn: run dir -> (predict_fn, class names, image_size, resize_size).
    """

    def __init__(self, plan: BootstrapPlan, store=None, train_fn: Callable = default_train,
                 predictor_fn: Callable = run_dir_predictor, progress: bool = True):
        self.plan = plan
        os.makedirs(plan.work_dir, exist_ok=True)
        self._pin_plan()
        if store is None:
            from finegrain_tf.review.store import LabelStore

            store = LabelStore(plan.store)
            store.create_schema()
        self.store = store
        self.train_fn, self.predictor_fn, self.progress = train_fn, predictor_fn, progress
        self.pool = load_pool(plan.pool, plan.image_root)
        if len(self.pool) < plan.rounds:
            raise ValueError(f"pool of {len(self.pool)} images is too small for {plan.rounds} rounds")
        self.subsets = self.pool.subsets(plan.rounds, plan.seed)
        self._init_round_zero()

    # ---- state ------------------------------------------------------------------------------------

    def _pin_plan(self) -> None:
        path = os.path.join(self.plan.work_dir, PLAN)
        pinned = {k: v if not isinstance(v, tuple) else list(v)
                  for k, v in dataclasses.asdict(self.plan).items() if k in _PINNED}
        pinned["seed_manifest"] = os.path.abspath(pinned["seed_manifest"])
        pinned["pool"] = os.path.abspath(pinned["pool"])
        if os.path.exists(path):
            old = _read_json(path)
            changed = sorted(k for k in pinned if old.get(k) != pinned[k])
            if changed:
                raise ValueError(f"{self.plan.work_dir!r} was started with other settings ({', '.join(f'{k}={old.get(k)!r}' for k in changed)}); "
                                 f"use a new work_dir or the same settings")
        else:
            _write_json(path, pinned)

    def round_dir(self, i: int) -> str:
        return os.path.join(self.plan.work_dir, f"round_{i:02d}")

    def state(self, i: int) -> dict:
        path = os.path.join(self.round_dir(i), STATE)
        return _read_json(path) if os.path.exists(path) else {"round": i, "stage": None, "counts": {}}

    def _save_state(self, i: int, state: dict) -> None:
        os.makedirs(self.round_dir(i), exist_ok=True)
        _write_json(os.path.join(self.round_dir(i), STATE), state)

    def _init_round_zero(self) -> None:
        if self.state(0)["stage"] == "done":
            return
        paths, labels = read_manifest(self.plan.seed_manifest)
        d = self.round_dir(0)
        os.makedirs(d, exist_ok=True)
        manifest = write_manifest(os.path.join(d, "dataset.csv"), paths, labels)
        negatives = write_hard_negatives(os.path.join(d, "hard_negatives.csv"), [], [])
        self._save_state(0, {"round": 0, "stage": "done", "dataset_manifest": manifest,
                             "hard_negatives": negatives,
                             "counts": {"dataset": len(paths), "hard_negatives": 0}})

    # ---- stages -----------------------------------------------------------------------------------

    def _train(self, i: int, prev: dict) -> str:
        model_dir = os.path.join(self.round_dir(i), "model")
        overrides = list(self.plan.train_overrides) + data_overrides(
            prev["dataset_manifest"], self.plan.eval_manifest,
            prev["hard_negatives"] if prev["counts"]["hard_negatives"] else "") + [
            f"train.model_dir={model_dir}", f"train.seed={self.plan.seed + i}"]
        logging.info("round %d: training on %d images + %d hard negatives", i,
                     prev["counts"]["dataset"], prev["counts"]["hard_negatives"])
        self.train_fn(self.plan.train_configs, overrides)
        return model_dir

    def _score(self, i: int, run_dir: str, subset: CandidatePool, out: str, shard_index: int,
               num_shards: int) -> Optional[scoring.PoolScores]:
        predict, names, size, resize = self.predictor_fn(run_dir)
        scoring.score_pool(predict, subset, out, image_size=size, resize_size=resize,
                           batch_size=self.plan.score_batch_size, shard_index=shard_index,
                           num_shards=num_shards, chunk_size=self.plan.chunk_size,
                           progress=self.progress)
        scores = scoring.load_scores(out, subset)
        return scores if scoring.is_complete(scores) else None

    def _candidates(self, i: int, shard_index: int, num_shards: int) -> Optional[tuple]:
        """C_i after the coarse filter (None while other shards of the coarse pass are missing)."""
        subset = self.subsets[i - 1]
        if not self.plan.coarse_run_dir:
            return subset, len(subset)
        out = os.path.join(self.round_dir(i), "coarse_scores")
        scores = self._score(i, self.plan.coarse_run_dir, subset, out, shard_index, num_shards)
        if scores is None:
            return None
        names = self.predictor_fn(self.plan.coarse_run_dir)[1]
        wanted = set(self.plan.coarse_classes or names)
        unknown = sorted(wanted - set(names))
        if unknown:
            raise ValueError(f"coarse_classes {unknown} are not classes of {self.plan.coarse_run_dir!r} "
                             f"({names})")
        in_category = np.isin(scores.top_class, [names.index(n) for n in wanted])
        keep = scores.scored & in_category & (scores.confidence > self.plan.coarse_threshold)
        return subset.take(np.flatnonzero(keep)), int(keep.sum())

    def _queue(self, i: int, state: dict, prev: dict, subset: CandidatePool,
               scores: scoring.PoolScores, names: list) -> dict:
        keep = np.flatnonzero(scores.scored & (scores.confidence > self.plan.threshold))
        self._set_classes(prev, names)
        items = [{"item_id": subset.ids[p], "image_path": subset.paths[p],
                  "proposed_class": names[int(scores.top_class[p])], "round": i,
                  "score": float(scores.confidence[p]), "judgements": self.plan.judgements}
                 for p in keep]
        self.store.enqueue(items)
        _write_json(os.path.join(self.round_dir(i), "proposed.json"), items)
        state["counts"]["proposed"] = len(items)
        return state

    def _set_classes(self, prev: dict, names: list) -> None:
        paths, labels = read_manifest(prev["dataset_manifest"])
        definitions = {}
        if self.plan.class_definitions:
            for line, row in read_rows(self.plan.class_definitions):
                cls = row.get("class") or row.get("class_name") or row.get("name")
                if not cls:
                    raise ValueError(f"{self.plan.class_definitions}: row {line} has no class column")
                definitions[str(cls)] = str(row.get("definition", ""))
        for name in names:
            exemplars = [p for p, label in zip(paths, labels) if label == name][:self.plan.exemplars]
            self.store.set_class(name, definitions.get(name, ""), exemplars)

    def _decide(self, i: int, state: dict, prev: dict) -> dict:
        items = _read_json(os.path.join(self.round_dir(i), "proposed.json"))
        decisions = self.store.decisions(round=i)
        paths, labels = read_manifest(prev["dataset_manifest"])
        hn_rows = [row for _, row in read_rows(prev["hard_negatives"])]
        hn_items = [row["image_path"] for row in hn_rows]
        hn_names = [row["proposed_class"] for row in hn_rows]
        yes = [it for it in items if decisions.get(it["item_id"]) == "yes"]
        no = [it for it in items if decisions.get(it["item_id"]) == "no"]
        d = self.round_dir(i)
        manifest = write_manifest(os.path.join(d, "dataset.csv"), paths + [it["image_path"] for it in yes],
                                  labels + [it["proposed_class"] for it in yes])
        negatives = write_hard_negatives(os.path.join(d, "hard_negatives.csv"),
                                         hn_items + [it["image_path"] for it in no],
                                         hn_names + [it["proposed_class"] for it in no])
        state.update(dataset_manifest=manifest, hard_negatives=negatives)
        state["counts"].update(yes=len(yes), no=len(no), dataset=len(paths) + len(yes),
                               hard_negatives=len(hn_items) + len(no))
        return state

    # ---- driving ----------------------------------------------------------------------------------

    def run_round(self, i: int, labelers=(), wait_seconds: float = 0.0, poll_seconds: float = 5.0,
                  shard_index: int = 0, num_shards: int = 1) -> dict:
        """Advances round i as far as it can; returns its state (stage "done" when finished).

        `labelers` (e.g. simulated ones) are asked to answer the queue; otherwise verdicts come from
        the review app and the round waits up to `wait_seconds` for them (0: return at once)."""
        if not 1 <= i <= self.plan.rounds:
            raise ValueError(f"round must be in [1, {self.plan.rounds}], got {i!r}")
        prev = self.state(i - 1)
        if prev["stage"] != "done":
            raise ValueError(f"round {i - 1} is not done (stage {prev['stage']!r}); run it first")
        state = self.state(i)
        if state["stage"] is None:
            state["model_dir"] = self._train(i, prev)
            state["stage"] = "trained"
            self._save_state(i, state)
        if state["stage"] == "trained":
            found = self._candidates(i, shard_index, num_shards)
            if found is None:
                logging.info("round %d: coarse scoring has shards left; rerun when they are done", i)
                return state
            subset, kept = found
            scores = self._score(i, state["model_dir"], subset, os.path.join(self.round_dir(i), "scores"),
                                 shard_index, num_shards) if len(subset) else None
            if len(subset) and scores is None:
                logging.info("round %d: scoring has shards left; rerun when they are done", i)
                return state
            names = self.predictor_fn(state["model_dir"])[1]
            state["counts"].update(candidates=len(self.subsets[i - 1]), after_coarse_filter=kept,
                                   unreadable=int(scores.skipped.sum()) if scores else 0)
            state = self._queue(i, state, prev, subset, scores, names) if scores else \
                dict(state, counts=dict(state["counts"], proposed=0))
            state["stage"] = "queued"
            self._save_state(i, state)
        if state["stage"] == "queued":
            deadline = time.monotonic() + wait_seconds
            while True:
                for labeler in labelers:
                    labeler.answer_all()
                if self.store.pending(round=i) == 0:
                    break
                if time.monotonic() >= deadline:
                    logging.info("round %d: %d items await verdicts", i, self.store.pending(round=i))
                    return state
                time.sleep(poll_seconds)
            state = self._decide(i, state, prev)
            state["stage"] = "done"
            self._save_state(i, state)
            logging.info("round %d done: %s", i, state["counts"])
        return state

    def run(self, labelers=(), wait_seconds: float = 0.0, poll_seconds: float = 5.0,
            shard_index: int = 0, num_shards: int = 1) -> list:
        """Runs rounds 1..k in order, stopping at the first that cannot finish now."""
        states = []
        for i in range(1, self.plan.rounds + 1):
            state = self.run_round(i, labelers, wait_seconds, poll_seconds, shard_index, num_shards)
            states.append(state)
            if state["stage"] != "done":
                break
        return states
