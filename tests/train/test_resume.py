"""Resume: a killed run continues exactly (same per-step losses and final weights as an uninterrupted
run), and a damaged checkpoint falls back to the newest intact one with a warning naming it."""

import logging
import os
import shutil
import signal
import subprocess
import time

import keras
import numpy as np
import pytest

from finegrain_tf.train import config, loop
from finegrain_tf.train.run_dir import RunDir

from train_utils import ENV, TINY, train_cmd  # noqa: E402 (same test folder)

TINY = TINY + ["train.plots=false"]


def _train_cmd(model_dir, *overrides):
    return train_cmd(model_dir, "train.plots=false", *overrides)


def _losses(model_dir):
    return {r["step"]: r["loss"] for r in RunDir(model_dir).load_history() if r["kind"] == "train"}


def _weights(model_dir):
    return RunDir(model_dir).load_model().get_weights()


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    # Augmentation (random crops and flips), momentum and a cosine schedule all depend on the
    # position in the run, so any slip in the input order or state shows in the losses.
    overrides = ["train.steps=150", "train.checkpoint_every=5", "optimizer.schedule=cosine"]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    out = subprocess.run(_train_cmd(straight, *overrides), env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    proc = subprocess.Popen(_train_cmd(killed, *overrides), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = os.path.join(killed, "checkpoints", "checkpoint")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not os.path.exists(state):
        time.sleep(0.05)
    time.sleep(0.3)  # land between checkpoints
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "model.keras"))
    out = subprocess.run(_train_cmd(killed, *overrides), env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = [line for line in out.stderr.splitlines() if "resumed from" in line]
    assert resumed, out.stderr[-2000:]
    resumed_step = int(resumed[0].rsplit("step", 1)[1])
    assert 5 <= resumed_step < 150

    expected, got = _losses(straight), _losses(killed)
    assert sorted(got) == sorted(expected) == list(range(1, 151))
    np.testing.assert_array_equal([got[s] for s in range(1, 151)],
                                  [expected[s] for s in range(1, 151)])
    max_dw = max(float(np.max(np.abs(a - b))) for a, b in zip(_weights(straight), _weights(killed)))
    assert max_dw <= 1e-6, max_dw


# --------------------------------------------------------------------------------------------------
# Damaged checkpoints


def _cfg(model_dir, steps):
    return config.build_config([], TINY + [f"train.steps={steps}", "train.checkpoint_every=1",
                                           "train.keep_checkpoints=5", f"train.model_dir={model_dir}"])


@pytest.fixture(scope="module")
def four_checkpoints(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("ckpt") / "run")
    keras.backend.clear_session()
    loop.train(_cfg(model_dir, 4))
    return model_dir


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _damage(ckpt_dir, kind):
    """Damages the run's checkpoints; returns (the name a warning must mention, step to resume)."""
    prefix = os.path.join(ckpt_dir, "ckpt-4")
    state = os.path.join(ckpt_dir, "checkpoint")
    if kind == "truncated_data":
        _truncate(prefix + ".data-00000-of-00001")
        return "ckpt-4", 3
    if kind == "truncated_index":
        _truncate(prefix + ".index")
        return "ckpt-4", 3
    if kind == "deleted_index":
        os.remove(prefix + ".index")
        return "ckpt-4", 3
    if kind == "empty_state":
        open(state, "w").close()
        return state, 4
    if kind == "garbage_state":
        with open(state, "wb") as f:
            f.write(b"\xff\xfe garbage {{{ \x00\x01 not a checkpoint state")
        return state, 4
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated_data", "truncated_index", "deleted_index",
                                  "empty_state", "garbage_state"])
def test_damaged_checkpoint_falls_back_to_newest_intact(four_checkpoints, tmp_path, kind, caplog):
    model_dir = str(tmp_path / "run")
    shutil.copytree(four_checkpoints, model_dir)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    named, expected_step = _damage(ckpt_dir, kind)
    keras.backend.clear_session()
    with caplog.at_level(logging.WARNING):
        result = loop.train(_cfg(model_dir, 6))
    assert result.resumed_from == expected_step
    assert result.step == 6
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(named in w and "damaged" in w for w in warnings), warnings
    # The run goes on checkpointing normally afterwards.
    assert os.path.exists(os.path.join(ckpt_dir, "ckpt-6.index"))


def test_running_into_an_existing_run_warns_that_it_continues_it(four_checkpoints, tmp_path, caplog):
    model_dir = str(tmp_path / "run")
    shutil.copytree(four_checkpoints, model_dir)
    keras.backend.clear_session()
    with caplog.at_level(logging.WARNING):
        result = loop.train(_cfg(model_dir, 5))
    assert (result.resumed_from, result.step) == (4, 5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("already holds a run" in w and model_dir in w and "new train.model_dir" in w
               for w in warnings), warnings


@pytest.mark.parametrize("task_name, override", [
    ("pairs", "pairs.negatives=ring"), ("pairs", "pairs.positive_radius_m=50.0"),
    ("metric", "sampler.refresh_every=7"), ("metric", "sampler.negatives=hardest"),
    ("classification", "data.batch_size=4"),
])
def test_input_fingerprint_covers_the_task_input_sections(task_name, override):
    """A changed input-shaping setting of the task invalidates the saved input position."""
    from finegrain_tf.train.task import get_task

    def fingerprint(*overrides):
        base = {"metric": ["model.head=anchor_vote", "loss.triplet_weight=0.5"]}.get(task_name, [])
        cfg = config.build_config([], [f"task.name={task_name}", *base, *overrides])
        return loop.input_fingerprint(cfg, get_task(cfg), replicas=1)

    assert fingerprint() == fingerprint()
    assert fingerprint(override) != fingerprint()
    assert fingerprint("optimizer.learning_rate=0.5") == fingerprint()  # not an input setting
