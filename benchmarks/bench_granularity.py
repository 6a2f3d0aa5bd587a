"""Benchmark: granularity measures at scale (seed 000 §6.2; issue 5 goals).

* RankM and RSM at n = 100,000, k = 1,000, D = 512 (goal < 10 s on 2 cores).
* RS, Rank and our silhouette at n = 20,000 vs ``sklearn.metrics.silhouette_score`` (ratio).

Usage: python benchmarks/bench_granularity.py [--n_large=100000 --k_large=1000 --dim=512 --n_small=20000]
"""

import time

import numpy as np
from absl import app, flags

from finegrain_tf.analysis.dataset_granularity import granularity

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_large", 100_000, "samples for RSM / RankM")
flags.DEFINE_integer("k_large", 1_000, "classes for RSM / RankM")
flags.DEFINE_integer("dim", 512, "feature dimension")
flags.DEFINE_integer("n_small", 20_000, "samples for RS / Rank / silhouette")
flags.DEFINE_integer("k_small", 100, "classes for RS / Rank / silhouette")
flags.DEFINE_float("signal", 0.15, "class-centre scale relative to the unit within-class noise")
flags.DEFINE_bool("skip_rank", False, "skip the O(n^2 log n) Rank index")


def _data(n, k, dim, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = (rng.standard_normal((n, dim), dtype=np.float32)
         + FLAGS.signal * rng.standard_normal((k, dim), dtype=np.float32)[y])
    return x, y


def _timed(fn):
    """(result, wall seconds); also prints process CPU seconds (all threads) for loaded machines."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _timed.cpu = cpu
    return out, wall


def main(argv):
    del argv
    import os

    print(f"# cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    x, y = _data(FLAGS.n_large, FLAGS.k_large, FLAGS.dim)
    print(f"# large: n={FLAGS.n_large} k={FLAGS.k_large} D={FLAGS.dim} (float32 features, float64 math)")
    for m in ("rankm", "rsm"):
        val, sec = _timed(lambda: granularity(x, y, m))
        print(f"{m:>10s}: {sec:7.2f} s wall, {_timed.cpu:7.2f} s CPU  (goal < 10 s on 2 cores)  value={val:.6f}")
    del x, y

    import sklearn.metrics

    x, y = _data(FLAGS.n_small, FLAGS.k_small, FLAGS.dim, seed=1)
    print(f"# small: n={FLAGS.n_small} k={FLAGS.k_small} D={FLAGS.dim}")
    ref, t_sk = _timed(lambda: sklearn.metrics.silhouette_score(x, y))
    print(f"{'sklearn':>10s}: {t_sk:7.2f} s wall, {_timed.cpu:7.2f} s CPU  silhouette_score={ref:.6f}")
    measures = ["silhouette", "rs"] + ([] if FLAGS.skip_rank else ["rank"])
    for m in measures:
        val, sec = _timed(lambda: granularity(x, y, m))
        print(f"{m:>10s}: {sec:7.2f} s wall, {_timed.cpu:7.2f} s CPU  ratio vs sklearn = {sec / t_sk:5.2f}x  "
              f"value={val:.6f}")
    for m in ("rankm", "rsm"):
        val, sec = _timed(lambda: granularity(x, y, m))
        print(f"{m:>10s}: {sec:7.2f} s wall, {_timed.cpu:7.2f} s CPU  ratio vs sklearn = {sec / t_sk:5.3f}x  "
              f"value={val:.6f}")


if __name__ == "__main__":
    app.run(main)
