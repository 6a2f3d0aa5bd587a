"""Benchmark: IVF vs exact gallery search through a SavedModel (TF1 session loader), beside faiss-cpu.

Goal (issue 17): on a 1,000,000 x 128 float32 clustered gallery with 1,000 queries, recall@10 against exact
search >= 0.95 at the default nprobe, and per-query latency through the SavedModel <= 0.1x exact search's.
faiss-cpu `IndexIVFFlat` at the same nlist / nprobe is printed beside it (recall and latency ratio).

Data: unit-normalised embeddings from n // 1000 clusters of lognormal sizes; each cluster is a random
16-dimensional Gaussian subspace around its centre plus isotropic noise (learned embeddings have a low
intrinsic dimension; isotropic 128-D blobs would make every neighbour equidistant). Queries are fresh
draws from the same clusters, not gallery items.

Latency = median wall time of one session.run per query (batch 1), 2 intra-op threads for TF and 2 OpenMP
threads for faiss; "batch 32" is the wall time of 32-query calls divided by 32. The machine running it is
shared, so absolute times are noisy; the ratios are the point.

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
flags.DEFINE_integer("queries", 1000, "queries (recall over all; batch-1 latency over all for IVF / faiss)")
flags.DEFINE_integer("exact_timed", 200, "queries timed one by one for the exact index (it is slow)")
flags.DEFINE_integer("k", 10, "neighbours per query (recall@k)")
flags.DEFINE_integer("nlist", None, "IVF lists (default: the library's default for n)")
flags.DEFINE_integer("nprobe", None, "IVF lists probed (default: the library's default for nlist)")
flags.DEFINE_integer("threads", 2, "intra-op threads (TF) / OpenMP threads (faiss)")
flags.DEFINE_integer("intrinsic_dim", 16, "dimension of each synthetic cluster's subspace")
flags.DEFINE_string("workdir", None, "where the SavedModels are written (default: a temporary dir)")


def clustered_embeddings(n, dim, seed, intrinsic_dim=16, noise=0.1):
    """Unit vectors from n // 1000 low-dimensional Gaussian clusters (the cluster layout is fixed)."""
    n_clusters = max(1, n // 1000) if seed == 0 else max(1, FLAGS.n // 1000)
    layout = np.random.default_rng(1234)
    centers = layout.normal(size=(n_clusters, dim)).astype(np.float32)
    bases = (layout.normal(size=(n_clusters, dim, intrinsic_dim)) / np.sqrt(intrinsic_dim)).astype(np.float32)
    weights = layout.lognormal(0.0, 1.0, size=n_clusters)
    rng = np.random.default_rng(seed)
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 65536):
        lab = labels[start:start + 65536]
        z = rng.standard_normal((len(lab), intrinsic_dim), dtype=np.float32)
        x[start:start + 65536] = (centers[lab] + np.einsum("ndm,nm->nd", bases[lab], z)
                                  + noise * rng.standard_normal((len(lab), dim), dtype=np.float32))
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


def batch1_latency(fn, queries):
    """Median seconds per query over one call per query (after two warm-up calls)."""
    fn(queries[:1])
    fn(queries[1:2])
    times = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        fn(queries[i:i + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def batched_latency(fn, queries, batch=32):
    fn(queries[:batch])
    t0 = time.perf_counter()
    for start in range(0, len(queries), batch):
        fn(queries[start:start + batch])
    return (time.perf_counter() - t0) / len(queries)


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
    gallery = clustered_embeddings(n, dim, seed=0, intrinsic_dim=FLAGS.intrinsic_dim)
    queries = clustered_embeddings(FLAGS.queries, dim, seed=1, intrinsic_dim=FLAGS.intrinsic_dim)
    ids = np.array([f"item-{i}" for i in range(n)], dtype=object)
    print(f"# IVF benchmark: gallery {n} x {dim} float32 (clustered, {max(1, n // 1000)} clusters), "
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
    truth = np.concatenate([exact(queries[s:s + 100]) for s in range(0, len(queries), 100)])
    t_exact = batch1_latency(exact, queries[:FLAGS.exact_timed])
    t_exact_b = batched_latency(exact, queries[:max(64, FLAGS.exact_timed)])
    exact.sess.close()
    ivf = SessionLookup(paths["ivf"], FLAGS.threads)
    print(f"peak RSS after loading both exports through the TF1 session loader: {peak_rss_gb():.2f} GB")

    truth_pos = np.array([[int(i[5:]) for i in row] for row in truth.astype(str)])
    quantizer = faiss.IndexFlatL2(dim)
    fivf = faiss.IndexIVFFlat(quantizer, dim, nlist)
    t0 = time.perf_counter()
    fivf.train(gallery[np.random.default_rng(0).choice(n, min(n, ivf_lib.TRAIN_SAMPLES_PER_LIST * nlist),
                                                          replace=False)])
    fivf.add(gallery)
    t_faiss_build = time.perf_counter() - t0

    def faiss_search(q, probe):
        fivf.nprobe = probe
        return fivf.search(q, k)[1]

    print(f"faiss IndexIVFFlat build {t_faiss_build:.1f} s (ours: {build_s['ivf']:.1f} s)")
    print(f"exact (SavedModel, session loader): {t_exact * 1e3:8.3f} ms/query at batch 1, "
          f"{t_exact_b * 1e3:8.3f} ms/query at batch 32")
    print(f"{'nprobe':>6s} {'recall@%d' % k:>10s} {'ms/q b1':>9s} {'vs exact':>9s} {'ms/q b32':>9s} "
          f"{'vs exact':>9s} | {'faiss recall':>12s} {'faiss ms/q':>10s} {'ours/faiss':>10s}")
    for probe in sorted({max(1, nprobe // 4), max(1, nprobe // 2), nprobe, min(nlist, 2 * nprobe)}):
        found = np.concatenate([ivf(queries[s:s + 100], probe) for s in range(0, len(queries), 100)])
        r_ivf = recall(found, truth)
        t_ivf = batch1_latency(lambda q: ivf(q, probe), queries)
        t_ivf_b = batched_latency(lambda q: ivf(q, probe), queries)
        r_faiss = recall(faiss_search(queries, probe), truth_pos)
        t_faiss = batch1_latency(lambda q: faiss_search(q, probe), queries)
        mark = "  <- default" if probe == nprobe else ""
        print(f"{probe:6d} {r_ivf:10.4f} {t_ivf * 1e3:9.3f} {t_ivf / t_exact:9.4f} {t_ivf_b * 1e3:9.3f} "
              f"{t_ivf_b / t_exact_b:9.4f} | {r_faiss:12.4f} {t_faiss * 1e3:10.3f} {t_ivf / t_faiss:10.2f}{mark}")
    print(f"peak RSS of this process: {peak_rss_gb():.2f} GB")
    ivf.sess.close()
    if not FLAGS.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
