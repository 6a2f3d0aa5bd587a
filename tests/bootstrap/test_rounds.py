"""Bootstrapping rounds with a stand-in trainer/classifier, the real SQLite label store and the
simulated labeler: the S_i / H_i bookkeeping of §2.2.2, stop-and-resume between stages."""

import os

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.bootstrap.manifest import read_manifest
from finegrain_tf.bootstrap.rounds import Bootstrapper, BootstrapPlan
from finegrain_tf.bootstrap.simulate import SimulatedLabeler, prepare_synthetic
from finegrain_tf.review.store import LabelStore
from finegrain_tf.sampling import load_hard_negatives


def decode(path):
    return tf.io.decode_png(tf.io.read_file(path), channels=3).numpy().astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    return prepare_synthetic(root, num_superclasses=2, classes_per_superclass=3, seed_per_class=3,
                             train_per_class=9, test_per_class=2, image_size=16)


class FakeTraining:
    """Records each round's training overrides; the 'model' proposes a class from the image's mean
    intensity (deterministic), confident for about half of the images."""

    def __init__(self, class_names):
        self.calls, self.names = [], class_names

    def train(self, configs, overrides):
        self.calls.append(dict(o.split("=", 1) for o in overrides))
        os.makedirs(self.calls[-1]["train.model_dir"], exist_ok=True)

    def predictor(self, run_dir):
        names = self.names

        def predict(images):
            m = np.asarray(images).mean(axis=(1, 2, 3))
            cls = (m * 7).astype(int) % len(names)
            conf = 0.3 + 0.6 * ((m * 13) % 1.0)
            probs = np.full((len(m), len(names)), 0.0, np.float32)
            probs[np.arange(len(m)), cls] = conf
            probs[np.arange(len(m)), (cls + 1) % len(names)] = 1 - conf
            return probs
        return predict, names, 16, 16


def make(tmp_path, setup, rounds=2, **kw):
    store = LabelStore(f"sqlite:///{tmp_path}/labels.db")
    store.create_schema()
    fake = FakeTraining(setup.class_names)
    plan = BootstrapPlan(work_dir=str(tmp_path / "work"), seed_manifest=setup.seed_manifest,
                         pool=setup.pool_manifest, rounds=rounds, chunk_size=8, score_batch_size=4, **kw)
    boot = Bootstrapper(plan, store=store, train_fn=fake.train, predictor_fn=fake.predictor, progress=False)
    return boot, store, fake


def test_rounds_grow_s_and_h_from_verdicts(tmp_path, setup):
    boot, store, fake = make(tmp_path, setup)
    labeler = SimulatedLabeler(store, setup.truth, error_rate=0.0)
    states = boot.run([labeler])
    assert [s["stage"] for s in states] == ["done", "done"]
    hn_total = 0
    for i, state in enumerate(states, 1):
        c = state["counts"]
        prev_paths, prev_labels = read_manifest(boot.state(i - 1)["dataset_manifest"])
        paths, labels = read_manifest(state["dataset_manifest"])
        assert paths[:len(prev_paths)] == prev_paths  # S_{i-1} ⊂ S_i, unchanged
        added = dict(zip(paths[len(prev_paths):], labels[len(prev_paths):]))
        assert len(added) == c["yes"] and c["yes"] + c["no"] == c["proposed"] > 0
        # error-free labeler: every added image truly is of its proposed class (T_i), every hard
        # negative truly is not (F_i)
        assert all(setup.truth[p] == label for p, label in added.items())
        hn = load_hard_negatives(state["hard_negatives"], setup.class_names)
        new_hn = list(zip(hn.items, hn.classes))[hn_total:]
        assert len(new_hn) == c["no"] and c["hard_negatives"] == hn_total + c["no"]
        assert all(setup.truth[p] != setup.class_names[k] for p, k in new_hn)
        hn_total = c["hard_negatives"]
        # proposals are exactly the candidates of C_i above the threshold
        subset = boot.subsets[i - 1]
        assert c["candidates"] == len(subset)
        probs = fake.predictor(None)[0](np.stack([decode(p) for p in subset.paths]))
        want = {subset.ids[j]: setup.class_names[int(probs[j].argmax())]
                for j in np.flatnonzero(probs.max(1) > 0.5)}
        queued = {item_id: store.item(item_id)["proposed_class"] for item_id in store.decisions(round=i)}
        assert queued == want
    assert labeler.verdicts == sum(s["counts"]["proposed"] for s in states)
    # round 2 trained on S_1 and H_1
    assert fake.calls[1]["data.data_dir"] == states[0]["dataset_manifest"]
    assert fake.calls[1]["data.hard_negatives"] == states[0]["hard_negatives"]
    assert "data.hard_negatives" not in fake.calls[0]  # H_0 is empty
    # review cards (last set in round 2): exemplars of the class come from S_1
    name = setup.class_names[0]
    s1 = dict(zip(*read_manifest(states[0]["dataset_manifest"])))
    info = store.class_info(name)
    assert info["exemplars"] and all(s1.get(p) == name for p in info["exemplars"])


def test_stop_while_waiting_for_verdicts_then_resume(tmp_path, setup):
    boot, store, fake = make(tmp_path, setup)
    first = boot.run()  # nobody answers: round 1 stops once its items are queued
    assert len(first) == 1 and first[0]["stage"] == "queued" and store.pending(round=1) > 0
    # a new process (same settings) picks up at the queue: no retraining, no rescoring
    boot2, _, fake2 = make(tmp_path, setup)
    states = boot2.run([SimulatedLabeler(store, setup.truth, name="later")])
    assert [s["stage"] for s in states] == ["done", "done"]
    assert len(fake2.calls) == 1  # only round 2 trained in the second process
    assert states[0]["counts"]["proposed"] == first[0]["counts"]["proposed"]


def test_resume_refuses_other_settings(tmp_path, setup):
    make(tmp_path, setup)
    with pytest.raises(ValueError, match="threshold"):
        make(tmp_path, setup, threshold=0.7)


def test_threshold_controls_proposals(tmp_path, setup):
    boot, store, _ = make(tmp_path, setup, rounds=1, threshold=0.0)
    state = boot.run()[0]
    assert state["counts"]["proposed"] == state["counts"]["candidates"]  # every confidence > 0


def test_coarse_filter_keeps_confident_members_of_the_coarse_category(tmp_path, setup):
    coarse_dir = tmp_path / "coarse_run"
    coarse_dir.mkdir()
    fake = FakeTraining(setup.class_names)

    def coarse(images):  # "flower" when the image is bright, confidence from the brightness
        m = np.asarray(images).mean(axis=(1, 2, 3)) / 255.0
        p_flower = np.clip(2 * m, 0, 1).astype(np.float32)
        return np.stack([p_flower, 1 - p_flower], axis=1)

    def predictor(run_dir):
        if run_dir == str(coarse_dir):
            return coarse, ["flower", "other"], 16, 16
        return fake.predictor(run_dir)

    store = LabelStore(f"sqlite:///{tmp_path}/labels.db")
    store.create_schema()
    plan = BootstrapPlan(work_dir=str(tmp_path / "work"), seed_manifest=setup.seed_manifest,
                         pool=setup.pool_manifest, rounds=1, chunk_size=8, threshold=0.0,
                         coarse_run_dir=str(coarse_dir), coarse_classes=("flower",), coarse_threshold=0.6)
    boot = Bootstrapper(plan, store=store, train_fn=fake.train, predictor_fn=predictor, progress=False)
    state = boot.run()[0]
    subset = boot.subsets[0]
    p = coarse(np.stack([decode(path) for path in subset.paths]))
    keep = (p.argmax(1) == 0) & (p.max(1) > 0.6)
    assert 0 < keep.sum() < len(subset)  # the filter does something here
    assert state["counts"]["after_coarse_filter"] == keep.sum()
    queued = {it["item_id"] for it in store.lease(store.add_labeler("x"), 100)}
    assert queued == {subset.ids[j] for j in np.flatnonzero(keep)}  # threshold 0: all kept are proposed


def test_sharded_scoring_waits_for_every_shard(tmp_path, setup):
    boot, store, fake = make(tmp_path, setup, rounds=1, threshold=0.0)
    first = boot.run(shard_index=0, num_shards=2)[0]
    assert first["stage"] == "trained" and store.pending(round=1) == 0  # nothing queued yet
    # another machine scores shard 1 (same work dir, its own process)
    boot2, _, fake2 = make(tmp_path, setup, rounds=1, threshold=0.0)
    done = boot2.run(shard_index=1, num_shards=2)[0]
    assert done["stage"] == "queued" and not fake2.calls  # no retraining
    assert done["counts"]["proposed"] == done["counts"]["candidates"] == len(boot.subsets[0])
