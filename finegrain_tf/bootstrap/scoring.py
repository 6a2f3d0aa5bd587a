"""Scoring a candidate pool with a classifier: streamed, resumable, shardable (seed 000 §2.2).

A pool of millions of images is split into `num_shards` interleaved shards (item i belongs to shard
i % num_shards), so machines or batch-scheduler jobs can each run `--shard_index`. A shard is scored in
chunks of `chunk_size` items streamed through tf.data (read, decode, centre crop, batch); each chunk's
result is written atomically (temp file + rename) as

    <out_dir>/shard-SSSSS-of-NNNNN/chunk-CCCCCC.npz   (positions, top_class, confidence, skipped)

so a killed pass continues at the first missing chunk. `<out_dir>/meta.json` records the pool's
fingerprint and the chunking, and a pass refuses to mix results of another pool or chunk size.
Corrupt or unreadable images are skipped and counted. `load_scores` gathers every shard's chunks.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from finegrain_tf.bootstrap.pool import CandidatePool
from finegrain_tf.data import preprocessing
from finegrain_tf.utils.progress import ProgressBar

META = "meta.json"


@dataclasses.dataclass
class ScoreSummary:
    """What one `score_pool` call did for its shard."""
    shard_index: int
    num_shards: int
    items: int  # items in this shard
    scored: int  # items scored by this call
    resumed_chunks: int  # chunks found done and skipped
    skipped: int  # corrupt / unreadable images in this shard (over all its chunks)


@dataclasses.dataclass
class PoolScores:
    """Per pool position: the proposed class (top-1), its confidence, and whether it is known."""
    top_class: np.ndarray  # int64 [n], -1 where not scored
    confidence: np.ndarray  # float32 [n], NaN where not scored
    skipped: np.ndarray  # bool [n]: the image could not be read or decoded

    @property
    def scored(self) -> np.ndarray:
        return self.top_class >= 0


def _check_shard(shard_index, num_shards) -> None:
    for name, value, low in (("num_shards", num_shards, 1), ("shard_index", shard_index, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if shard_index >= num_shards:
        raise ValueError(f"shard_index={shard_index} must be < num_shards={num_shards}")


def shard_positions(pool_size: int, shard_index: int, num_shards: int) -> np.ndarray:
    """Pool positions of one shard (interleaved: i % num_shards == shard_index)."""
    _check_shard(shard_index, num_shards)
    return np.arange(shard_index, pool_size, num_shards, dtype=np.int64)


def _shard_dir(out_dir: str, shard_index: int, num_shards: int) -> str:
    return os.path.join(out_dir, f"shard-{shard_index:05d}-of-{num_shards:05d}")


def _write_meta(out_dir: str, pool: CandidatePool, chunk_size: int) -> None:
    meta = {"fingerprint": pool.fingerprint(), "size": len(pool), "chunk_size": chunk_size}
    path = os.path.join(out_dir, META)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != meta:
            raise ValueError(f"{out_dir!r} holds scores of another pool or chunking ({old}); this pass "
                             f"is {meta}: use a fresh output folder")
        return
    os.makedirs(out_dir, exist_ok=True)
    _atomic_write_json(path, meta)


def _atomic_write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _image_dataset(paths, positions, image_size: int, resize_size: int, batch_size: int):
    """(positions [B], images float32 [B, S, S, 3]) with undecodable files dropped."""
    def load(position, path):
        image = preprocessing.decode_image(tf.io.read_file(path))
        return position, preprocessing.preprocess_eval(image, image_size, resize_size)

    ds = tf.data.Dataset.from_tensor_slices((positions, paths))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def score_pool(predict_fn: Callable, pool: CandidatePool, out_dir: str, image_size: int,
               resize_size: int = 0, batch_size: int = 64, shard_index: int = 0, num_shards: int = 1,
               chunk_size: int = 1024, progress: bool = True) -> ScoreSummary:
    """Scores this shard's items with `predict_fn` (float32 images [B, S, S, 3] in [0, 255] ->
    class probabilities [B, C]), resuming after the last completed chunk."""
    _check_shard(shard_index, num_shards)
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    _write_meta(out_dir, pool, chunk_size)
    positions = shard_positions(len(pool), shard_index, num_shards)
    shard_dir = _shard_dir(out_dir, shard_index, num_shards)
    os.makedirs(shard_dir, exist_ok=True)
    chunks = [positions[s:s + chunk_size] for s in range(0, len(positions), chunk_size)]
    done = [os.path.exists(os.path.join(shard_dir, f"chunk-{c:06d}.npz")) for c in range(len(chunks))]
    todo = int(sum(len(ch) for ch, d in zip(chunks, done) if not d))
    scored = skipped = 0
    with ProgressBar(total=todo, desc=f"scoring shard {shard_index}/{num_shards}", unit="img",
                     enabled=progress) as bar:
        for c, chunk in enumerate(chunks):
            path = os.path.join(shard_dir, f"chunk-{c:06d}.npz")
            if done[c]:
                continue
            got_pos, got_cls, got_conf = [], [], []
            paths = [pool.paths[i] for i in chunk]
            for pos, images in _image_dataset(paths, chunk, image_size, resize_size, batch_size):
                probs = np.asarray(predict_fn(images), np.float32)
                got_pos.append(pos.numpy())
                got_cls.append(probs.argmax(axis=1).astype(np.int64))
                got_conf.append(probs.max(axis=1))
                bar.update(len(probs))
            got = np.concatenate(got_pos) if got_pos else np.zeros(0, np.int64)
            bad = np.setdiff1d(chunk, got)
            if len(bad):
                logging.warning("scoring: %d unreadable images skipped in chunk %d (first: %s)",
                                len(bad), c, pool.paths[int(bad[0])])
                bar.update(len(bad))
            tmp = f"{path}.tmp.{os.getpid()}.npz"
            np.savez(tmp, positions=got,
                     top_class=np.concatenate(got_cls) if got_cls else np.zeros(0, np.int64),
                     confidence=np.concatenate(got_conf) if got_conf else np.zeros(0, np.float32),
                     skipped=bad.astype(np.int64))
            os.replace(tmp, path)
            scored += len(got)
    for c in range(len(chunks)):  # skipped images of every chunk of the shard, this call's or not
        with np.load(os.path.join(shard_dir, f"chunk-{c:06d}.npz")) as z:
            skipped += len(z["skipped"])
    return ScoreSummary(shard_index=shard_index, num_shards=num_shards, items=len(positions),
                        scored=scored, resumed_chunks=int(sum(done)), skipped=skipped)


def load_scores(out_dir: str, pool: CandidatePool) -> PoolScores:
    """Every chunk written under `out_dir` (all shards), as per-position arrays over `pool`."""
    path = os.path.join(out_dir, META)
    if not os.path.exists(path):
        raise ValueError(f"no scores in {out_dir!r} (missing {META})")
    with open(path) as f:
        meta = json.load(f)
    if meta["fingerprint"] != pool.fingerprint():
        raise ValueError(f"scores in {out_dir!r} belong to another pool")
    n = len(pool)
    top = np.full(n, -1, np.int64)
    conf = np.full(n, np.nan, np.float32)
    skipped = np.zeros(n, bool)
    for shard in sorted(os.listdir(out_dir)):
        shard_dir = os.path.join(out_dir, shard)
        if not shard.startswith("shard-") or not os.path.isdir(shard_dir):
            continue
        for name in sorted(os.listdir(shard_dir)):
            if not (name.startswith("chunk-") and name.endswith(".npz")) or ".tmp." in name:
                continue
            with np.load(os.path.join(shard_dir, name)) as z:
                top[z["positions"]] = z["top_class"]
                conf[z["positions"]] = z["confidence"]
                skipped[z["skipped"]] = True
    return PoolScores(top_class=top, confidence=conf, skipped=skipped)


def is_complete(scores: PoolScores) -> bool:
    """Every position is scored or known unreadable."""
    return bool(np.all(scores.scored | scores.skipped))
