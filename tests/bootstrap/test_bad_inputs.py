"""Bad inputs of the bootstrapping rounds: clear errors naming the value; corrupt images counted."""

import os
import subprocess
import sys

import numpy as np
import pytest

from finegrain_tf.bootstrap.manifest import read_manifest, write_manifest
from finegrain_tf.bootstrap.pool import CandidatePool, load_pool
from finegrain_tf.bootstrap.rounds import BootstrapPlan
from finegrain_tf.bootstrap.scoring import score_pool, shard_positions
from finegrain_tf.bootstrap.simulate import SimulatedLabeler


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("content,name,message", [
    ("", "empty.csv", "has no rows"),
    ("colour\nred\n", "nopath.csv", "row 2 has no image path"),
    ("path,label\na.png,rose\nb.png,\n", "partial.csv", "row 3 has no label while other rows have one"),
    ("path\na.png\na.png\n", "dup.csv", "candidate id '.*a.png' appears more than once"),
    ('{"path": "a.png"}\nnot json\n', "bad.jsonl", "bad.jsonl:2: not valid JSON"),
])
def test_pool_manifest_rows(tmp_path, content, name, message):
    with pytest.raises(ValueError, match=message):
        load_pool(write(tmp_path / name, content))


def test_pool_sources(tmp_path):
    with pytest.raises(ValueError, match="neither a folder nor a .csv/.jsonl manifest"):
        load_pool(write(tmp_path / "pool.txt", "a.png\n"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        load_pool(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="file not found"):
        load_pool(str(tmp_path / "missing.csv"))


def test_pool_subsets():
    pool = CandidatePool(ids=["a", "b"], paths=["a", "b"])
    with pytest.raises(ValueError, match="cannot split a pool of 2 images into 3 subsets"):
        pool.subsets(3)
    with pytest.raises(ValueError, match="must be a positive int, got 0"):
        pool.subsets(0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(shard_index=2, num_shards=2), "shard_index=2 must be < num_shards=2"),
    (dict(shard_index=0, num_shards=0), "num_shards must be an int >= 1, got 0"),
    (dict(shard_index=-1, num_shards=2), "shard_index must be an int >= 0, got -1"),
])
def test_shard_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        shard_positions(10, **kwargs)


def test_scoring_batch_size(tmp_path):
    pool = CandidatePool(ids=["a"], paths=["a"])
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        score_pool(lambda x: x, pool, str(tmp_path), image_size=8, batch_size=0)


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    pool = CandidatePool(ids=["bad", "gone"], paths=[str(tmp_path / "bad.png"), str(tmp_path / "gone.png")])
    summary = score_pool(lambda x: np.ones((len(x), 2)) / 2, pool, str(tmp_path / "s"), image_size=8,
                         progress=False)
    assert summary.scored == 0 and summary.skipped == 2


def test_manifests(tmp_path):
    with pytest.raises(ValueError, match="m.csv:2: a row needs a path .* and a label"):
        read_manifest(write(tmp_path / "m.csv", "path\na.png\n"))
    with pytest.raises(ValueError, match="2 paths but 1 labels"):
        write_manifest(str(tmp_path / "out.csv"), ["a", "b"], ["x"])


@pytest.fixture
def inputs(tmp_path):
    seed = write(tmp_path / "seed.csv", "path,label\na.png,rose\n")
    pool = write(tmp_path / "pool.csv", "path\nb.png\n")
    return dict(work_dir=str(tmp_path / "w"), seed_manifest=seed, pool=pool)


@pytest.mark.parametrize("change,message", [
    (dict(seed_manifest="/nonexistent/seed.csv"), "seed manifest '/nonexistent/seed.csv' does not exist"),
    (dict(pool=""), "pool is required"),
    (dict(rounds=0), "rounds must be a positive int, got 0"),
    (dict(threshold=1.5), "threshold must be in \\[0, 1\\), got 1.5"),
    (dict(judgements=0), "judgements must be a positive int, got 0"),
    (dict(coarse_run_dir="/nonexistent/run"), "coarse_run_dir '/nonexistent/run' is not a directory"),
    (dict(class_definitions="/nonexistent/defs.csv"), "class_definitions file '/nonexistent/defs.csv'"),
])
def test_plan_settings(inputs, change, message):
    with pytest.raises(ValueError, match=message):
        BootstrapPlan(**{**inputs, **change})


def test_simulated_labeler_arguments():
    with pytest.raises(ValueError, match="error_rate must be in \\[0, 1\\], got 2"):
        SimulatedLabeler(store=None, truth={}, error_rate=2)


@pytest.mark.slow  # two subprocesses importing TensorFlow
def test_cli_usage_errors_are_one_line(inputs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "finegrain_tf.bootstrap.main", f"--work_dir={inputs['work_dir']}",
           f"--seed_manifest={inputs['seed_manifest']}", f"--pool={inputs['pool']}", "--threshold=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert "threshold must be in [0, 1), got 2.0" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(cmd[:4], capture_output=True, text=True, env=env, timeout=120)
    assert "--seed_manifest and --pool are required" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow  # a subprocess importing the binary
def test_help_lists_the_binary_flags():
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "finegrain-bootstrap"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for flag in ("--work_dir", "--seed_manifest", "--pool", "--num_shards", "--simulate", "--error_rate"):
        assert flag in out.stdout + out.stderr
