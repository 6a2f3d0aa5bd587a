"""Pool scoring: interrupted passes resume where they stopped; shards partition the pool exactly."""

import os

import numpy as np
import pytest
import tensorflow as tf

from finegrain_tf.bootstrap.pool import load_pool
from finegrain_tf.bootstrap.scoring import is_complete, load_scores, score_pool, shard_positions

SIZE = 8


def write_pool(root, n=23, corrupt=(5,)):
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        path = os.path.join(root, f"img{i:03d}.png")
        if i in corrupt:
            with open(path, "wb") as f:
                f.write(b"not an image")
            continue
        # mean brightness encodes the index, so the fake classifier's answer is checkable
        img = np.full((SIZE, SIZE, 3), 10 * i, np.uint8)
        img[0, 0] = rng.integers(0, 255, 3)
        tf.io.write_file(path, tf.io.encode_png(img))
    return load_pool(root)


def brightness_classifier(calls=None, fail_after=None):
    """probabilities [B, 3]: class = round(mean / 10) % 3, confidence from the index."""
    def predict(images):
        if calls is not None:
            calls.append(len(images))
            if fail_after is not None and len(calls) > fail_after:
                raise KeyboardInterrupt("simulated kill")
        idx = np.round(np.asarray(images)[:, 1:, 1:].mean(axis=(1, 2, 3)) / 10).astype(int)
        probs = np.full((len(idx), 3), 0.0, np.float32)
        probs[np.arange(len(idx)), idx % 3] = 0.5 + idx / 100
        probs[np.arange(len(idx)), (idx + 1) % 3] = 0.5 - idx / 100
        return probs
    return predict


def expected(n=23, corrupt=(5,)):
    idx = np.arange(n)
    return idx % 3, 0.5 + idx / 100, np.isin(idx, corrupt)


def test_full_pass_scores_every_readable_image(tmp_path):
    pool = write_pool(str(tmp_path / "pool"))
    summary = score_pool(brightness_classifier(), pool, str(tmp_path / "s"), image_size=SIZE,
                         resize_size=SIZE, batch_size=4, chunk_size=6, progress=False)
    assert summary.items == 23 and summary.scored == 22 and summary.skipped == 1
    scores = load_scores(str(tmp_path / "s"), pool)
    cls, conf, bad = expected()
    assert is_complete(scores)
    np.testing.assert_array_equal(scores.skipped, bad)
    np.testing.assert_array_equal(scores.top_class[~bad], cls[~bad])
    np.testing.assert_allclose(scores.confidence[~bad], conf[~bad], rtol=1e-6)
    assert scores.top_class[5] == -1


def test_interrupted_pass_resumes_without_rescoring(tmp_path):
    pool = write_pool(str(tmp_path / "pool"))
    out = str(tmp_path / "s")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        # chunks of 6 in batches of 4: calls 1-2 score chunk 0 (5 readable), the kill hits chunk 1
        score_pool(brightness_classifier(calls, fail_after=3), pool, out, image_size=SIZE,
                   resize_size=SIZE, batch_size=4, chunk_size=6, progress=False)
    partial = load_scores(out, pool)
    assert not is_complete(partial) and (partial.scored | partial.skipped).sum() == 6  # chunk 0 only
    calls2 = []
    summary = score_pool(brightness_classifier(calls2), pool, out, image_size=SIZE, resize_size=SIZE,
                         batch_size=4, chunk_size=6, progress=False)
    assert summary.resumed_chunks == 1 and summary.scored == 17 and summary.skipped == 1
    assert sum(calls2) == 17  # nothing of chunk 0 scored twice
    scores = load_scores(out, pool)
    cls, _, bad = expected()
    assert is_complete(scores)
    np.testing.assert_array_equal(scores.top_class[~bad], cls[~bad])
    assert not any(".tmp." in name for _, _, files in os.walk(out) for name in files)


def test_shards_partition_the_pool(tmp_path):
    pool = write_pool(str(tmp_path / "pool"))
    out = str(tmp_path / "s")
    seen = []
    for k in range(3):
        seen.append(shard_positions(len(pool), k, 3))
        score_pool(brightness_classifier(), pool, out, image_size=SIZE, resize_size=SIZE, batch_size=4,
                   chunk_size=5, shard_index=k, num_shards=3, progress=False)
        partial = load_scores(out, pool)
        assert is_complete(partial) == (k == 2)
    allpos = np.concatenate(seen)
    assert len(allpos) == len(pool) and len(np.unique(allpos)) == len(pool)
    scores = load_scores(out, pool)
    cls, _, bad = expected()
    np.testing.assert_array_equal(scores.top_class[~bad], cls[~bad])


def test_refuses_to_resume_on_another_pool(tmp_path):
    pool = write_pool(str(tmp_path / "pool"))
    out = str(tmp_path / "s")
    score_pool(brightness_classifier(), pool, out, image_size=SIZE, resize_size=SIZE, chunk_size=6,
               progress=False)
    with pytest.raises(ValueError, match="another pool"):
        score_pool(brightness_classifier(), pool.take(np.arange(10)), out, image_size=SIZE,
                   resize_size=SIZE, chunk_size=6, progress=False)
    with pytest.raises(ValueError, match="another pool or chunking"):
        score_pool(brightness_classifier(), pool, out, image_size=SIZE, resize_size=SIZE, chunk_size=7,
                   progress=False)
