"""The training binary end to end: default, 2-device mirrored, 2-worker multi-worker, kill + resume.

Every run is a subprocess, so the logical-device and TF_CONFIG set-ups do not leak between tests.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

TINY = [
    "data.image_size=32", "data.batch_size=8", "data.synthetic.num_classes=4",
    "data.synthetic.num_superclasses=2", "data.synthetic.train_per_class=8",
    "data.synthetic.val_per_class=2", "data.synthetic.test_per_class=4",
    "data.synthetic.image_size=32", "optimizer.learning_rate=0.01", "train.log_every=1",
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _train_cmd(model_dir, *overrides):
    args = [sys.executable, "-m", "finegrain_tf.train.main", f"--model_dir={model_dir}"]
    return args + [f"--set={o}" for o in TINY + list(overrides)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _report(model_dir):
    with open(os.path.join(model_dir, "eval_report.json")) as f:
        return json.load(f)


def test_default_strategy_run_writes_artifacts(tmp_path):
    model_dir = str(tmp_path / "run")
    out = subprocess.run(_train_cmd(model_dir, "train.steps=3", "train.checkpoint_every=2"),
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("params.yaml", "model.keras", "backbone.weights.h5", "class_names.txt",
                 "class_counts.json", "eval_report.json"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    report = _report(model_dir)
    assert report["train_steps"] == 3
    assert report["num_examples"] == 16  # 4 classes x 4 test images
    assert 0.0 <= report["top1"] <= report["top5"] <= 1.0
    assert "top1" in out.stdout and "balanced_accuracy" in out.stdout
    with open(os.path.join(model_dir, "params.yaml")) as f:
        assert yaml.safe_load(f)["train"]["steps"] == 3
    # A fresh process needs only `import finegrain_tf.layers` to load the model file.
    load = subprocess.run(
        [sys.executable, "-c", "import keras, finegrain_tf.layers, sys; "
         f"m = keras.models.load_model({os.path.join(model_dir, 'model.keras')!r}); "
         "print('OUTPUT', m.output.shape)"], env=ENV, capture_output=True, text=True, timeout=120)
    assert "OUTPUT (None, 4)" in load.stdout, load.stderr[-2000:]
    checkpoints = os.listdir(os.path.join(model_dir, "checkpoints"))
    assert any(c.startswith("ckpt-2.") for c in checkpoints)
    assert any(c.startswith("ckpt-3.") for c in checkpoints)
    assert os.listdir(os.path.join(model_dir, "logs", "train"))


def test_mixed_precision_run_with_class_balanced_focal_and_triplet_term(tmp_path):
    model_dir = str(tmp_path / "run")
    out = subprocess.run(
        _train_cmd(model_dir, "train.steps=2", "train.mixed_precision=true",
                   "loss.name=class_balanced", "loss.loss_type=focal", "model.bias_init=prior",
                   "loss.triplet_weight=0.1", "optimizer.weight_decay=0.0001"),
        env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = _report(model_dir)
    assert report["train_steps"] == 2 and 0.0 <= report["top1"] <= 1.0


def test_unknown_override_is_a_usage_error(tmp_path):
    out = subprocess.run(_train_cmd(str(tmp_path), "train.stepz=3"), env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "train.stepz" in out.stderr


def test_two_device_mirrored_strategy(tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from finegrain_tf.train import config, loop
        cfg = config.build_config([], {TINY!r} + ["train.steps=2",
                                  "train.model_dir={tmp_path / 'run'}"])
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        result = loop.train(cfg, strategy=strategy)
        assert result.step == 2, result.step
        print("REPLICAS", strategy.num_replicas_in_sync, "STEP", result.step)
    """)
    out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "REPLICAS 2 STEP 2" in out.stdout


def test_two_worker_multi_worker_mirrored(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    model_dir = str(tmp_path / "run")
    procs = []
    for index in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster,
                                              "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            _train_cmd(model_dir, "train.strategy=multi_worker", "train.steps=3",
                       "train.checkpoint_every=2"),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert _report(model_dir)["train_steps"] == 3  # written by the chief (worker 0) only
    assert any(c.startswith("ckpt-3.") for c in os.listdir(os.path.join(model_dir, "checkpoints")))


def test_killed_run_resumes_from_checkpoint(tmp_path):
    model_dir = str(tmp_path / "run")
    cmd = _train_cmd(model_dir, "train.steps=200", "train.checkpoint_every=5")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(os.path.join(ckpt_dir, "checkpoint")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(model_dir, "eval_report.json"))

    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = [line for line in out.stderr.splitlines() if "resumed from" in line]
    assert resumed, out.stderr[-2000:]
    resumed_step = int(resumed[0].rsplit("step", 1)[1])
    assert resumed_step >= 5 and resumed_step % 5 == 0
    assert _report(model_dir)["train_steps"] == 200
