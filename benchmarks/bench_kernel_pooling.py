"""Kernel pooling cost relative to the backbone (seed 000 §3.3.1: ~10 % of ResNet-50 on a K40).

Prints, side by side, forward+backward times (minimum of --repeats, after a warm-up) of
  * ResNet-50 (weights=None, include_top=False) at 448x448,
  * KernelPooling (d = 4096, p = 4, C = 2048) on 14x14 and 28x28 maps, as a fraction of ResNet-50,
  * the tensor-sketch chain with TF's autodiff gradient vs the layer's hand-written one,
  * count sketch methods alone: unsorted_segment_sum (the layer's), sparse matmul, dense ±1 matmul,
  * CompactBilinearPooling at the same output size (14336 ~ 1 + 2048 + 3 * 4096),
and peak accelerator memory of each pooling (GPU only; on CPU the size of the tensors kept for the
backward pass is printed instead). All float32.

    python benchmarks/bench_kernel_pooling.py --batch 2            # CPU (slow: ResNet-50 at 448)
    python benchmarks/bench_kernel_pooling.py --batch 16           # GPU
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 2, "Images per step.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (minimum reported).")
flags.DEFINE_list("sizes", ["14", "28"], "Feature map sides (448 / 32 = 14; 28 = stride 16).")
flags.DEFINE_integer("dim", 4096, "d_i of every order.")
flags.DEFINE_integer("order", 4, "p.")
flags.DEFINE_integer("channels", 2048, "C.")
flags.DEFINE_boolean("resnet", True, "Time ResNet-50 fwd+bwd at 448 (the denominator).")
flags.DEFINE_boolean("dense", True, "Include the dense count sketch baseline (14x14 only).")
flags.DEFINE_boolean("xla", False, "jit_compile the pooling steps.")
flags.DEFINE_enum("clock", "wall", ["wall", "cpu"],
                  "wall: time.perf_counter; cpu: time.process_time (CPU seconds of this process, all "
                  "threads), far less sensitive than wall time to other users of a shared machine.")


def _clock():
    return time.process_time() if FLAGS.clock == "cpu" else time.perf_counter()


def _min_time(fn, repeats):
    """Minimum wall time over `repeats` calls after two warm-up calls: on a shared machine the
    minimum is the least contended estimate (medians drift with the other users' load)."""
    fn()  # warm-up / trace
    fn()
    times = []
    for _ in range(repeats):
        start = _clock()
        fn()
        times.append(_clock() - start)
    return float(min(times))


def _interleaved_min(fns, repeats):
    """Like `_min_time` for several functions called in turn, so all see the same load."""
    for fn in fns:
        fn()
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = _clock()
            fn()
            best[i] = min(best[i], _clock() - start)
    return best


def _gpu():
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def _peak_mb(fn):
    import tensorflow as tf
    if not _gpu():
        return None
    tf.config.experimental.reset_memory_stats("GPU:0")
    fn()
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from finegrain_tf.layers import kernel_pooling as kp

    b, c, d, p = FLAGS.batch, FLAGS.channels, FLAGS.dim, FLAGS.order
    device = "GPU " + tf.config.experimental.get_device_details(
        tf.config.list_physical_devices("GPU")[0]).get("device_name", "") if _gpu() else \
        f"CPU ({os.cpu_count()} cores visible; shared machine, timings noisy)"
    print(f"device: {device}; batch {b}; TF {tf.__version__}; clock {FLAGS.clock}; "
          f"min of {FLAGS.repeats}")

    def fwd_bwd(f, x, variables=()):
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = f(x)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
            return tape.gradient(loss, [x] + list(variables))
        compiled = tf.function(step, jit_compile=FLAGS.xla)
        return lambda: [g.numpy() if g is not None else None for g in compiled()][0]

    resnet_time = None
    if FLAGS.resnet:
        net = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(448, 448, 3))
        images = tf.random.uniform((b, 448, 448, 3))

        @tf.function
        def resnet_step():
            with tf.GradientTape() as tape:
                y = net(images, training=True)
                loss = tf.reduce_mean(y ** 2)
            return tape.gradient(loss, net.trainable_variables)

        resnet_fn = lambda: [g.numpy() for g in resnet_step()][:1]  # noqa: E731
        resnet_time = _min_time(resnet_fn, FLAGS.repeats)
        peak = _peak_mb(lambda: [g.numpy() for g in resnet_step()][:1])
        print(f"ResNet-50 fwd+bwd @448: {1000 * resnet_time:9.1f} ms"
              + (f"   peak {peak:8.0f} MiB" if peak else ""))

    def report(name, fn, kept_mb=None):
        t = _min_time(fn, FLAGS.repeats)
        peak = _peak_mb(fn)
        ratio = f"{100 * t / resnet_time:7.2f} % of ResNet-50" if resnet_time else ""
        mem = f"peak {peak:7.0f} MiB" if peak is not None else (
            f"~{kept_mb:6.0f} MiB kept for bwd" if kept_mb else "")
        print(f"  {name:44s} {1000 * t:9.2f} ms  {ratio}  {mem}")
        return t

    rows, layer_fns = {}, {}
    for side in [int(s) for s in FLAGS.sizes]:
        print(f"-- feature map {side}x{side}x{c}, d={d}, p={p}")
        x = tf.random.uniform((b, side, side, c))
        n = b * side * side
        layer = kp.KernelPooling(order=p, dims=d, gamma=1.0 / c)
        layer(x)
        hashes = [tf.convert_to_tensor(h) for h in layer._hash_vars]
        signs = [tf.convert_to_tensor(s) for s in layer._sign_vars]
        # tensors kept for the backward pass: input, spectra and prefix products [N, p, d/2+1] c64
        kept = (n * c * 4 + 2 * n * p * (d // 2 + 1) * 8) / 2 ** 20
        layer_fns[side] = fwd_bwd(layer, x, [layer.alpha])
        rows[(side, "kernel")] = report("KernelPooling (the layer)", layer_fns[side], kept)
        flat = lambda v: tf.reshape(v, [b, -1, c])  # noqa: E731
        rows[(side, "autodiff")] = report(
            "  tensor sketches, TF autodiff gradient",
            fwd_bwd(lambda v: kp.pooled_tensor_sketches(flat(v), hashes, signs, [d], [list(range(2, p + 1))],
                                                        custom_gradient=False), x))
        rows[(side, "custom")] = report(
            "  tensor sketches, hand-written gradient",
            fwd_bwd(lambda v: kp.pooled_tensor_sketches(flat(v), hashes, signs, [d], [list(range(2, p + 1))]), x))
        methods = ["segment_sum"] + ([] if FLAGS.xla else ["sparse"])  # no XLA kernel for sparse
        for method in methods + (["dense"] if FLAGS.dense and side <= 14 else []):
            rows[(side, method)] = report(
                f"  count sketch only, {method}",
                fwd_bwd(lambda v, m=method: kp.count_sketch(tf.reshape(v, [-1, c]), hashes, signs,
                                                            [d], m)[0], x))
        cbp = kp.CompactBilinearPooling(dim=1 + c + (p - 1) * d - 1)
        cbp(x)
        rows[(side, "cbp")] = report(f"CompactBilinearPooling (d={cbp.dim})", fwd_bwd(cbp, x),
                                     (n * c * 4 + 2 * n * 2 * (cbp.dim // 2 + 1) * 8) / 2 ** 20)
        cbp_pow2 = kp.CompactBilinearPooling(dim=16384)
        cbp_pow2(x)
        report("CompactBilinearPooling (d=16384)", fwd_bwd(cbp_pow2, x))
    if resnet_time:
        fns = [resnet_fn] + [layer_fns[side] for side in sorted(layer_fns)]
        best = _interleaved_min(fns, FLAGS.repeats)
        print("interleaved (ResNet-50 and KernelPooling steps alternating, min of each):")
        for side, t in zip(sorted(layer_fns), best[1:]):
            print(f"  {side}x{side}: KernelPooling {1000 * t:.1f} ms / ResNet-50 {1000 * best[0]:.1f} ms"
                  f" = {100 * t / best[0]:.2f} %")
    print("summary (fraction of ResNet-50 fwd+bwd at 448):" if resnet_time else "summary:")
    for side in [int(s) for s in FLAGS.sizes]:
        kt = rows[(side, "kernel")]
        line = f"  {side}x{side}: KernelPooling {1000 * kt:.1f} ms"
        if resnet_time:
            line += f" = {100 * kt / resnet_time:.2f} %"
        line += f"; CBP/KP time {rows[(side, 'cbp')] / kt:.2f}"
        line += (f"; autodiff/hand-written gradient "
                 f"{rows[(side, 'autodiff')] / rows[(side, 'custom')]:.2f}x")
        if (side, "sparse") in rows:
            line += (f"; count sketch sparse-matmul/segment-sum "
                     f"{rows[(side, 'sparse')] / rows[(side, 'segment_sum')]:.2f}x")
        if (side, "dense") in rows:
            line += f", dense/segment-sum {rows[(side, 'dense')] / rows[(side, 'segment_sum')]:.1f}x"
        print(line)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
