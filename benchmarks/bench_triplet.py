"""TripletLoss mining cost vs a plain softmax CE, and quasi-online sampler refresh time.

Prints forward+backward milliseconds per call at B = 256 / 1024, D = 64 for every mining mode, the
ratio to a softmax cross-entropy of the same batch (logits = embeddings @ W, 100 classes), and a dense
B x B x B semi-hard reference (the masking scheme of tfa's TripletSemiHardLoss, written here as a
broadcasted [B, B, B] mask) where it fits in memory. Then the sampler refresh time for 50k embeddings.

    python benchmarks/bench_triplet.py [--sizes 256,1024] [--refresh_n 50000] [--repeats 5]
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On a shared, oversubscribed CPU OpenBLAS' spinning threads make small numpy matmuls ~100x slower;
# one BLAS thread is the honest setting there (override by exporting OPENBLAS_NUM_THREADS).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from finegrain_tf.losses.metric import pairwise_distances, triplet_loss  # noqa: E402
from finegrain_tf.sampling.triplets import sample_triplets  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("sizes", "256,1024", "batch sizes")
flags.DEFINE_integer("dim", 64, "embedding dimension")
flags.DEFINE_integer("classes", 100, "classes in the batch labels / softmax")
flags.DEFINE_integer("repeats", 5, "timed calls per measurement (after one warm-up)")
flags.DEFINE_integer("dense_max", 512, "largest B for the dense B^3 semi-hard reference")
flags.DEFINE_integer("refresh_n", 50000, "embeddings for the sampler refresh timing (0 = skip)")
flags.DEFINE_integer("refresh_classes", 500, "classes for the sampler refresh timing")


def dense_semi_hard(labels, emb, margin):
    """Semi-hard mining with an explicit [B, B, B] mask (the cost profile of tfa's implementation)."""
    d = pairwise_distances(emb, "squared_l2")
    same = tf.equal(labels[:, None], labels[None, :])
    pos = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))
    neg = tf.logical_not(same)
    # mask[a, p, n]: n negative of a and farther than p
    farther = tf.logical_and(neg[:, None, :], d[:, None, :] > d[:, :, None])
    big = tf.reduce_max(d) + 1.0
    outside = tf.reduce_min(tf.where(farther, d[:, None, :], big), axis=2)
    inside = tf.reduce_max(tf.where(neg, d, 0.0), axis=1, keepdims=True)
    semi = tf.where(tf.reduce_any(farther, axis=2), outside, inside)
    loss = tf.where(pos, tf.nn.relu(margin + d - semi), 0.0)
    return tf.reduce_sum(loss) / tf.reduce_sum(tf.cast(pos, tf.float32))


def timed(fn, *args, repeats):
    fn(*args)  # trace + warm up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = fn(*args)
        _ = [x.numpy() for x in tf.nest.flatten(r)]
        out.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(out))


def interleaved(steps: dict, *args, repeats: int) -> dict:
    """Median ms per step; steps are called in turn (in a shuffled order each round) so load changes
    hit all alike."""
    for step in steps.values():
        [x.numpy() for x in tf.nest.flatten(step(*args))]
    times = {name: [] for name in steps}
    names, order = list(steps), np.random.default_rng(0)
    for _ in range(repeats):
        for k in order.permutation(len(names)):  # a fresh order each round: no position bias
            name, step = names[k], steps[names[k]]
            t0 = time.perf_counter()
            [x.numpy() for x in tf.nest.flatten(step(*args))]
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def fwd_bwd(loss_fn):
    @tf.function(jit_compile=False)
    def step(labels, emb):
        with tf.GradientTape() as tape:
            tape.watch(emb)
            loss = loss_fn(labels, emb)
        return loss, tape.gradient(loss, emb)
    return step


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(FLAGS.dim, FLAGS.classes)).astype(np.float32))
    print(f"TripletLoss forward+backward, D={FLAGS.dim}, median of {FLAGS.repeats} (ms); "
          f"ratio = time / softmax CE time "
          "and / distance-matrix fwd+bwd time")
    for b in [int(s) for s in FLAGS.sizes.split(",")]:
        labels = tf.constant(rng.integers(0, FLAGS.classes, size=b))
        emb = tf.math.l2_normalize(tf.constant(rng.normal(size=(b, FLAGS.dim)).astype(np.float32)), 1)
        steps = {"softmax CE": fwd_bwd(lambda y, e: tf.reduce_mean(
                     tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf.matmul(e, w)))),
                 "distance matrix": fwd_bwd(lambda y, e: tf.reduce_sum(pairwise_distances(e)))}
        for mining in ("violating", "all", "semi_hard", "hard"):
            steps[mining] = fwd_bwd(lambda y, e, m=mining: tf.reduce_mean(triplet_loss(y, e, 0.2, m)))
        ms = interleaved(steps, labels, emb, repeats=FLAGS.repeats)
        ce, dist = ms["softmax CE"], ms["distance matrix"]
        row = [f"B={b:5d}", f"softmax CE {ce:8.2f}", f"distance matrix {dist:8.2f} ({dist / ce:5.1f}x CE)"]
        for mining in ("violating", "all", "semi_hard", "hard"):
            row.append(f"{mining:10s} {ms[mining]:8.2f} ms ({ms[mining] / ce:5.1f}x CE, "
                       f"{ms[mining] / dist:5.1f}x the distance matrix; goal <= 20x for semi_hard/violating)")
        if b <= FLAGS.dense_max:
            dense = timed(fwd_bwd(lambda y, e: dense_semi_hard(y, e, 0.2)), labels, emb,
                          repeats=FLAGS.repeats)
            ours = timed(fwd_bwd(lambda y, e: tf.reduce_mean(triplet_loss(y, e, 0.2, "semi_hard"))),
                         labels, emb, repeats=FLAGS.repeats)
            val_dense = float(dense_semi_hard(labels, emb, 0.2))
            val_ours = float(tf.reduce_mean(triplet_loss(labels, emb, 0.2, "semi_hard")))
            row.append(f"dense B^3 semi_hard {dense:8.2f} -> ours is {dense / ours:5.1f}x faster "
                       f"(|diff| {abs(val_dense - val_ours):.1e})")
        print("\n  ".join(row))
    print("reference (issue 7): tfa TripletSemiHardLoss fwd+bwd ~95 ms at B=256, ~5800 ms at B=1024 "
          "(TF 2.15, tfa 0.23); goal: >= 20x faster at B=1024, i.e. <= 290 ms")

    if FLAGS.refresh_n:
        n, c = FLAGS.refresh_n, FLAGS.refresh_classes
        labels = np.arange(n) % c
        x = rng.normal(size=(n, FLAGS.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        hn_cls = np.arange(n // 10) % c
        hn_x = rng.normal(size=(len(hn_cls), FLAGS.dim)).astype(np.float32)
        hn_x /= np.linalg.norm(hn_x, axis=1, keepdims=True)
        t0 = time.perf_counter()
        t = sample_triplets(x, labels, 0.6, 0.2, hard_negative_embeddings=hn_x,
                            hard_negative_classes=hn_cls)
        dt = time.perf_counter() - t0
        print(f"sampler refresh: {n} embeddings, {c} classes, {len(hn_cls)} human negatives -> "
              f"{len(t)} triplets in {dt:.2f} s ({1e6 * dt / n:.1f} us per reference image)")


if __name__ == "__main__":
    app.run(main)
