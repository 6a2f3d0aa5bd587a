"""The training binary end to end: default, 2-device mirrored, 2-worker multi-worker, periodic
evaluation with the best checkpoint and early stopping, plots (kill + exact resume: test_resume.py).

Every run is a subprocess, so the logical-device and TF_CONFIG set-ups do not leak between tests.
"""

import dataclasses
import glob
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import yaml

from train_utils import ENV, TINY, train_cmd as _train_cmd  # noqa: E402 (same test folder)


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


@pytest.mark.slow
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


def test_run_dir_keeps_first_stage_counts(tmp_path):
    from finegrain_tf.train.run_dir import RunDir

    run_dir = RunDir(str(tmp_path))
    run_dir.save_class_counts([40, 20, 5])
    run_dir.save_class_counts([10, 10, 5])  # stage 2: capped by data.balanced_cap
    assert run_dir.load_class_counts() == [40, 20, 5]
    with open(run_dir.stage_class_counts_path) as f:
        assert json.load(f) == [10, 10, 5]


def test_best_checkpoint_and_early_stopping(tmp_path):
    import keras
    import tensorflow as tf

    from finegrain_tf.train import config, loop

    cfg = config.build_config([], ["train.eval_every=1", "train.early_stopping=2",
                                   "train.best_metric=balanced_accuracy"])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = loop._Best(cfg, str(tmp_path / "best"), model)
    stops = []
    for step, value in enumerate([0.5, 0.6, 0.6, 0.4], start=1):
        model.layers[0].bias.assign([float(step)])
        stops.append(best.update({"balanced_accuracy": value}, step))
    assert stops == [False, False, False, True]  # two evaluations without a gain
    model.layers[0].bias.assign([0.0])
    best.restore()
    assert float(model.layers[0].bias.numpy()[0]) == 2.0  # the model of the best evaluation
    assert tf.train.latest_checkpoint(str(tmp_path / "best")).endswith("ckpt-2")


def test_best_checkpoint_of_a_lower_is_better_metric(tmp_path):
    """The pairs task's default best metric is its eval loss, minimised."""
    import keras

    from finegrain_tf.train import config, loop

    cfg = config.build_config([], ["task.name=pairs", "train.eval_every=1", "train.early_stopping=2"])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = loop._Best(cfg, str(tmp_path / "best"), model)
    assert best.metric == "loss"
    stops = []
    for step, value in enumerate([0.5, 0.3, 0.4, 0.3], start=1):
        model.layers[0].bias.assign([float(step)])
        stops.append(best.update({"loss": value, "pair_accuracy": 0.0}, step))
    assert stops == [False, False, False, True]  # 0.3 at step 2, then no lower loss twice
    model.layers[0].bias.assign([0.0])
    best.restore()
    assert float(model.layers[0].bias.numpy()[0]) == 2.0


def test_pairs_task_with_periodic_evaluation(tmp_path):
    """train.eval_every with the pairs task keeps the best checkpoint by its eval loss."""
    model_dir = str(tmp_path / "run")
    out = subprocess.run(
        _train_cmd(model_dir, "task.name=pairs", "model.backbone=small_cnn", "pairs.num_places=30",
                   "pairs.photos_per_place=4", "pairs.embedding_dim=8", "train.steps=2",
                   "train.eval_every=1", "train.eval_batches=1", "train.plots=false"),
        env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "new best loss" in out.stderr
    assert os.listdir(os.path.join(model_dir, "checkpoints", "best"))
    assert "loss" in _report(model_dir)


def test_periodic_evaluation_history_and_plots(tmp_path):
    model_dir = str(tmp_path / "run")
    out = subprocess.run(_train_cmd(model_dir, "train.steps=4", "train.eval_every=2",
                                    "data.val_split=val"),
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    from finegrain_tf.train.run_dir import RunDir

    history = RunDir(model_dir).load_history()
    assert [r["step"] for r in history if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in history if r["kind"] == "eval"] == [2, 4]
    assert os.listdir(os.path.join(model_dir, "checkpoints", "best"))
    for name in ("curves.png", "per_class_accuracy.png", "confusion.png"):
        with open(os.path.join(model_dir, "plots", name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert "training classes" in out.stderr  # the class-count table at the start


def test_images_unreadable_during_training_are_counted_in_the_report(tmp_path, caplog):
    """A file that turns to garbage after indexing: the run completes, skips it, warns, and records
    the count in eval_report.json and TensorBoard (issue 11 item 5)."""
    import logging

    import numpy as np
    import tensorflow as tf

    from finegrain_tf.data import pipeline
    from finegrain_tf.train import config, loop

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(root / f"class_{c}")
        for i in range(4):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            (root / f"class_{c}" / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    model_dir = str(tmp_path / "run")
    cfg = config.build_config([], TINY + [
        "data.name=folder", f"data.data_dir={root}", "data.batch_size=4", "train.steps=4",
        "train.plots=false", f"train.model_dir={model_dir}"])
    pipeline.build_index(cfg.data)  # indexed (and verified) while the file is still good
    (root / "class_1" / "2.png").write_bytes(b"\x89PNG garbage written after indexing")
    with caplog.at_level(logging.WARNING):
        result = loop.train(cfg)
    assert result.step == 4
    skipped = _report(model_dir)["skipped_images"]
    # >= 1 in the training stream (4 steps x 4 > 7 readable files: a whole epoch was read) and
    # exactly 1 in the final evaluation over the same folder.
    assert skipped["total"] >= 2 and skipped["total"] == skipped["unreadable"] + skipped["too_large"]
    assert "skipped" in caplog.text and "images while reading the data so far" in caplog.text
    tags = {value.tag for path in glob.glob(os.path.join(model_dir, "logs", "train", "*"))
            for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value}
    assert "skipped_images" in tags
    # The counts are in the checkpoint: a resumed run (a fresh process: counter at 0) goes on from
    # the count saved at step 4 (the total less the final evaluation's 1), and its own evaluation
    # adds 1 again; without the restore it would count only its 2 steps (<= 2) plus 1.
    pipeline.build_index(cfg.data).counter.reset()
    resumed = loop.train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6)))
    assert resumed.resumed_from == 4
    assert _report(model_dir)["skipped_images"]["total"] >= skipped["total"]
