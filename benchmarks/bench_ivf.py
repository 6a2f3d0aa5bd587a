"""Benchmark: IVF vs exact gallery search through a SavedModel (TF1 session loader), beside faiss-cpu.

Goal (issue 17): on a 1,000,000 x 128 float32 clustered gallery with 1,000 queries, recall@10 against exact
search >= 0.95 at the default nprobe, and per-query latency through the SavedModel <= 0.1x exact search's.
faiss-cpu `IndexIVFFlat` at the same nlist / nprobe is printed beside it (recall and latency ratio).

Data: unit-normalised embeddings from n // 10,000 clusters of lognormal sizes; each cluster is a random
16-dimensional Gaussian subspace around its centre plus isotropic noise (learned embeddings have a low
intrinsic dimension; isotropic 128-D blobs would make every neighbour equidistant). A cluster spans ~20
IVF lists at 1M, so list boundaries cut through neighbourhoods (with clusters of ~1,000 items, about
one list each, recall is ~1.0 at any nprobe and says nothing). Queries are fresh draws from the same
clusters, not gallery items.

Latency = median wall time of one session.run per query (batch 1), 2 intra-op threads for TF and 2 OpenMP
threads for faiss; "batch 32" is the wall time of 32-query calls divided by 32. Exact, IVF and faiss are
timed in turn on each query, so load from other processes on a shared machine hits them alike; absolute
times are still noisy, the ratios are the point.

Usage: python benchmarks/bench_ivf.py [--n=1000000 --dim=128 --queries=1000 --nlist= --nprobe=]
Develop with --n=100000; the 1M run needs about 4 GB of RAM and a few minutes.
"""

import gc
import os
import resource
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("n", 1_000_000, "gallery size")
flags.DEFINE_integer("dim", 128, "embedding dimension")
flags.DEFINE_integer("queries", 1000, "queries (recall over all of them)")
flags.DEFINE_integer("timed", 256, "queries whose latency is timed (exact search is slow)")
flags.DEFINE_integer("k", 10, "neighbours per query (recall@k)")
flags.DEFINE_integer("nlist", None, "IVF lists (default: the library's default for n)")
flags.DEFINE_integer("nprobe", None, "IVF lists probed (default: the library's default for nlist)")
flags.DEFINE_integer("threads", 2, "intra-op threads (TF) / OpenMP threads (faiss)")
flags.DEFINE_integer("intrinsic_dim", 16, "dimension of each synthetic cluster's subspace")
flags.DEFINE_integer("cluster_size", 10_000, "mean items per synthetic cluster (n // cluster_size clusters); "
                     "clusters much larger than an IVF list make list boundaries cut through neighbourhoods")
flags.DEFINE_string("workdir", None, "where the SavedModels are written (default: a temporary dir)")


def clustered_embeddings(n, dim, n_clusters, seed, intrinsic_dim=16, noise=0.1):
    """n unit vectors from n_clusters low-dimensional Gaussian clusters (the layout depends on n_clusters
    only, so gallery and queries share it)."""
    layout = np.random.default_rng(1234)
    centers = layout.normal(size=(n_clusters, dim)).astype(np.float32)
    bases = (layout.normal(size=(n_clusters, dim, intrinsic_dim)) / np.sqrt(intrinsic_dim)).astype(np.float32)
    weights = layout.lognormal(0.0, 1.0, size=n_clusters)
    rng = np.random.default_rng(seed)
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    x = noise * rng.standard_normal((n, dim), dtype=np.float32)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        z = rng.standard_normal((len(members), intrinsic_dim), dtype=np.float32)
        x[members] += centers[c] + z @ bases[c].T
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def dir_size_mb(path):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files) / 2**20


class SessionLookup:
    """An export loaded the way TF Serving loads it (TF1 session loader)."""

    def __init__(self, path, threads):
        import tensorflow as tf

        self.graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
        self.sess = tf.compat.v1.Session(graph=self.graph, config=config)
        with self.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], path)
        sig = meta.signature_def["lookup"]
        self.q, self.nprobe = sig.inputs["queries"].name, sig.inputs["nprobe"].name
        self.ids = sig.outputs["ids"].name
        self.call = self.sess.make_callable([self.ids], [self.q, self.nprobe])

    def __call__(self, queries, nprobe=1):
        return self.call(queries, nprobe)[0]


def interleaved_latency(contenders, queries, batch):
    """Median seconds per query of each contender, timing them in turn on the same batch of queries
    (so load from other processes on a shared machine hits them alike)."""
    for fn in contenders.values():
        fn(queries[:batch])  # warm-up
    times = {name: [] for name in contenders}
    for start in range(0, len(queries) - batch + 1, batch):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn(queries[start:start + batch])
            times[name].append((time.perf_counter() - t0) / batch)
    return {name: float(np.median(t)) for name, t in times.items()}


def recall(found, truth):
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def main(argv):
    del argv
    import faiss
    import tensorflow as tf

    from finegrain_tf import retrieval
    from finegrain_tf.retrieval import ivf as ivf_lib

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    faiss.omp_set_num_threads(FLAGS.threads)
    n, dim, k = FLAGS.n, FLAGS.dim, FLAGS.k
    nlist = FLAGS.nlist or ivf_lib.default_nlist(n)
    nprobe = FLAGS.nprobe or ivf_lib.default_nprobe(nlist)
    t0 = time.perf_counter()
    n_clusters = max(1, n // FLAGS.cluster_size)
    gallery = clustered_embeddings(n, dim, n_clusters, seed=0, intrinsic_dim=FLAGS.intrinsic_dim)
    queries = clustered_embeddings(FLAGS.queries, dim, n_clusters, seed=1, intrinsic_dim=FLAGS.intrinsic_dim)
    ids = np.array([f"item-{i}" for i in range(n)], dtype=object)
    print(f"# IVF benchmark: gallery {n} x {dim} float32 (clustered: {n_clusters} clusters of intrinsic "
          f"dimension {FLAGS.intrinsic_dim}), "
          f"{len(queries)} queries, k={k}, nlist={nlist}, nprobe={nprobe}, {FLAGS.threads} threads; "
          f"data in {time.perf_counter() - t0:.1f} s")
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="bench_ivf_")
    paths = {"exact": os.path.join(workdir, "exact"), "ivf": os.path.join(workdir, "ivf")}
    build_s = {}
    for kind in ("exact", "ivf"):
        t0 = time.perf_counter()
        index = retrieval.build_index(gallery, ids, kind=kind, **({"nlist": nlist, "nprobe": nprobe}
                                                                  if kind == "ivf" else {}))
        build_s[kind] = time.perf_counter() - t0
        t0 = time.perf_counter()
        retrieval.save_index(index, paths[kind], k)
        print(f"{kind:5s} index: build {build_s[kind]:6.1f} s, SavedModel written in "
              f"{time.perf_counter() - t0:5.1f} s, {dir_size_mb(paths[kind]):7.1f} MB on disk; "
              f"peak RSS so far {peak_rss_gb():.2f} GB")
        del index
        gc.collect()

    exact = SessionLookup(paths["exact"], FLAGS.threads)
    ivf = SessionLookup(paths["ivf"], FLAGS.threads)
    print(f"peak RSS after loading both exports through the TF1 session loader: {peak_rss_gb():.2f} GB")
    truth = np.concatenate([exact(queries[s:s + 100]) for s in range(0, len(queries), 100)])
    truth_pos = np.array([[int(i[5:]) for i in row] for row in truth.astype(str)])

    quantizer = faiss.IndexFlatL2(dim)
    fivf = faiss.IndexIVFFlat(quantizer, dim, nlist)
    t0 = time.perf_counter()
    fivf.train(gallery[np.random.default_rng(0).choice(n, min(n, ivf_lib.TRAIN_SAMPLES_PER_LIST * nlist),
                                                          replace=False)])
    fivf.add(gallery)
    print(f"faiss IndexIVFFlat build {time.perf_counter() - t0:.1f} s (ours: {build_s['ivf']:.1f} s)")

    def faiss_search(q, probe):
        fivf.nprobe = probe
        return fivf.search(q, k)[1]

    probes = sorted({max(1, nprobe // 4), max(1, nprobe // 2), nprobe, min(nlist, 2 * nprobe)})
    contenders = {"exact": exact}
    for p in probes:
        contenders[f"ivf{p}"] = lambda q, p=p: ivf(q, p)
        contenders[f"faiss{p}"] = lambda q, p=p: faiss_search(q, p)
    timed = queries[:FLAGS.timed]
    b1 = interleaved_latency(contenders, timed, 1)
    b32 = interleaved_latency(contenders, timed, 32)
    print(f"latency: median over {len(timed)} queries, contenders timed in turn on each query (batch 1) or "
          f"each 32 queries (batch 32)")
    print(f"exact (SavedModel, session loader): {b1['exact'] * 1e3:8.3f} ms/query at batch 1, "
          f"{b32['exact'] * 1e3:8.3f} ms/query at batch 32")
    print(f"{'nprobe':>6s} {'recall@%d' % k:>10s} {'ms/q b1':>9s} {'vs exact':>9s} {'ms/q b32':>9s} "
          f"{'vs exact':>9s} | {'faiss recall':>12s} {'faiss ms/q':>10s} {'ours/faiss':>10s}")
    for p in probes:
        found = np.concatenate([ivf(queries[s:s + 100], p) for s in range(0, len(queries), 100)])
        r_ivf, r_faiss = recall(found, truth), recall(faiss_search(queries, p), truth_pos)
        t_ivf, t_faiss = b1[f"ivf{p}"], b1[f"faiss{p}"]
        mark = "  <- default" if p == nprobe else ""
        print(f"{p:6d} {r_ivf:10.4f} {t_ivf * 1e3:9.3f} {t_ivf / b1['exact']:9.4f} {b32[f'ivf{p}'] * 1e3:9.3f} "
              f"{b32[f'ivf{p}'] / b32['exact']:9.4f} | {r_faiss:12.4f} {t_faiss * 1e3:10.3f} "
              f"{t_ivf / t_faiss:10.2f}{mark}")
    exact.sess.close()
    print(f"peak RSS of this process: {peak_rss_gb():.2f} GB")
    ivf.sess.close()
    if not FLAGS.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
