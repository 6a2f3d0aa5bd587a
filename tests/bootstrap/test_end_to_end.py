"""finegrain-bootstrap --simulate at toy size: real training rounds, the real SQLite store."""

import os
import subprocess
import sys

import pytest

from finegrain_tf.bootstrap.manifest import read_manifest
from finegrain_tf.bootstrap.simulate import prepare_synthetic
from finegrain_tf.train.run_dir import RunDir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_two_simulated_rounds_train_on_the_grown_set_and_hard_negatives(tmp_path):
    setup = prepare_synthetic(str(tmp_path / "data"), num_superclasses=2, classes_per_superclass=3,
                              seed_per_class=4, train_per_class=10, test_per_class=2, image_size=32)
    work = str(tmp_path / "work")
    cmd = [sys.executable, "-m", "finegrain_tf.bootstrap.main", "--simulate", f"--work_dir={work}",
           f"--seed_manifest={setup.seed_manifest}", f"--pool={setup.pool_manifest}",
           f"--eval_manifest={setup.test_manifest}", "--rounds=2", "--threshold=0.0",
           f"--config={os.path.join(REPO, 'configs', 'bootstrap_synthetic.yaml')}",
           "--set=train.steps=6", "--set=sampler.refresh_every=3", "--set=data.batch_size=4",
           "--set=sampler.embed_batch_size=64", "--progress=false", "--chunk_size=16"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "round_02/dataset.csv" in out.stdout
    s0 = read_manifest(setup.seed_manifest)[0]
    s2_paths, s2_labels = read_manifest(os.path.join(work, "round_02", "dataset.csv"))
    # threshold 0: every candidate is proposed and judged, so S grows by the true positives only
    assert len(s2_paths) > len(s0)
    assert all(setup.truth[p] == label for p, label in zip(s2_paths[len(s0):], s2_labels[len(s0):]))
    # round 2's model trained on S_1 and H_1 through data.name=manifest / data.hard_negatives
    params = RunDir(os.path.join(work, "round_02", "model")).load_params()
    assert params.data.name == "manifest"
    assert params.data.data_dir == os.path.join(work, "round_01", "dataset.csv")
    assert params.data.hard_negatives == os.path.join(work, "round_01", "hard_negatives.csv")
    assert params.task.name == "metric"
    # rerunning the finished loop changes nothing
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert again.returncode == 0 and read_manifest(os.path.join(work, "round_02", "dataset.csv"))[0] == s2_paths
