"""`make demo` end to end at toy size: data -> train -> export -> session loader -> gRPC."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["data.synthetic.num_classes=4", "data.synthetic.num_superclasses=2",
        "data.synthetic.train_per_class=8", "data.synthetic.test_per_class=4",
        "data.synthetic.val_per_class=2", "data.batch_size=8", "data.imbalance_factor=2",
        "train.steps=2", "train.log_every=1", "model.init_batches=2",
        "model.kernel_pooling.dims=64"]


def test_demo_runs_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "finegrain_tf.demo", f"--workdir={tmp_path / 'demo'}", "--show=4"]
    cmd += [f"--set={o}" for o in TINY]
    cmd += ["--bootstrap_args=--pretrain_set=train.steps=2", "--bootstrap_args=--set=train.steps=2",
            "--bootstrap_args=--set=model.init_batches=2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    for stage in ("1/6 data", "2/6 train", "3/6 export", "4/6 classify", "5/6 serve", "6/6 bootstrap"):
        assert stage in out.stdout
    assert "stage 2: small_cnn + kernel pooling, loss class_balanced" in out.stdout
    assert "head_accuracy" in out.stdout
    assert "gRPC classify == session loader: True" in out.stdout
    assert "embedding lookup precision@5" in out.stdout
    assert "demo finished" in out.stdout
    export_dir = tmp_path / "demo" / "serving" / "finegrain" / "1"
    assert (export_dir / "saved_model.pb").exists()
    assert (tmp_path / "demo" / "stage1" / "backbone.weights.h5").exists()
    # The bootstrapping round wrote S_1 and H_1 for the next round.
    round_dir = tmp_path / "demo" / "bootstrap" / "round_01"
    assert "dataset manifest:" in out.stdout
    assert (round_dir / "dataset.csv").exists() and (round_dir / "hard_negatives.csv").exists()
