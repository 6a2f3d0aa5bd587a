"""Kernel pooling cost relative to the backbone (seed 000 §3.3.1: ~10 % of ResNet-50 on a K40).

Protocol (issue 16): every candidate is ONE `tf.function` computing forward + backward, with
gradients with respect to the input map AND all trainable variables (the layer as a user trains
it: `KernelPooling(order=4, dims=4096)` with its default arguments, so the learned coefficients
alpha get a gradient too). After two warm-up calls, candidates are called in turn (interleaved, so
the load of a shared machine hits all alike) for --rounds rounds of --calls timed calls; each
round reports the median of its calls, and the summary the median over rounds of the ratio.

    python benchmarks/bench_kernel_pooling.py                      # 14x14 and 28x28, ResNet-50 @448
    python benchmarks/bench_kernel_pooling.py --xla                # also the layer jit-compiled
    python benchmarks/bench_kernel_pooling.py --profile --xla --sizes 14 --noresnet  # per-op times
    python benchmarks/bench_kernel_pooling.py --baselines          # count sketch / gradient variants
    python benchmarks/bench_kernel_pooling.py --noresnet --sizes 14 --xla_variants  # XLA alternatives

Printed: ResNet-50 (weights=None, include_top=False) fwd+bwd at 448 (batch 2), the layer on 14x14
(448 / 32) and 28x28 maps of 2048 channels, and the ratio. All float32.
"""

from __future__ import annotations

import collections
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 2, "Images per step.")
flags.DEFINE_integer("calls", 5, "Timed calls per candidate and round (median reported).")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds (the ratio's median over rounds is the summary).")
flags.DEFINE_list("sizes", ["14", "28"], "Feature map sides (448 / 32 = 14; 28 = stride 16).")
flags.DEFINE_integer("dim", 4096, "d_i of every order.")
flags.DEFINE_integer("order", 4, "p.")
flags.DEFINE_integer("channels", 2048, "C.")
flags.DEFINE_boolean("resnet", True, "Time ResNet-50 fwd+bwd at 448 (the denominator).")
flags.DEFINE_boolean("xla", False, "Also time the layer step with jit_compile=True.")
flags.DEFINE_boolean("resnet_xla", False, "Also time ResNet-50 with jit_compile=True (slow to compile).")
flags.DEFINE_boolean("baselines", False, "Also time count-sketch and gradient variants (14x14 only).")
flags.DEFINE_boolean("profile", False, "Print per-op times of the layer step (tf.profiler trace; "
                     "with --xla also of the jit-compiled step).")
flags.DEFINE_boolean("xla_variants", False, "Also time, jit-compiled, the alternatives to the library's "
                     "XLA count sketch (row scatter + transposes, one-hot matmul) and to rfft (a DFT "
                     "matmul), 14x14 only.")


def xla_variants(x, layer, b, c, d):
    """jit-compiled candidates for the count sketch of all sketches (fwd+bwd, location-major
    [N, d] outputs as the FFT needs them) and for rfft at length d over all N locations."""
    import numpy as np
    import tensorflow as tf

    from finegrain_tf.ops import tensor_sketch as ts
    hashes = [tf.convert_to_tensor(h) for h in layer._hash_vars]
    signs = [tf.convert_to_tensor(s) for s in layer._sign_vars]
    h, s = hashes[0], signs[0]
    m = int(h.shape[0])
    rows = lambda v: tf.reshape(v, [-1, c])  # noqa: E731

    def row_scatter(v):  # the previous XLA path: rows of x^T scattered into [m d, N], transposed
        xt = tf.transpose(rows(v))
        updates = tf.reshape(xt[None] * s[:, :, None], [m * c, -1])
        bins = tf.reshape(h + tf.range(m)[:, None] * d, [-1])
        fused = tf.math.unsorted_segment_sum(updates, bins, m * d)
        return tf.transpose(tf.reshape(fused, [m, d, -1]), [2, 0, 1])

    def one_hot_matmul(v):  # a dense +-1 [c, m d] matrix: 2 c m d flops per location
        dense = tf.concat([tf.one_hot(h[t], d) * s[t][:, None] for t in range(m)], 1)
        return tf.matmul(rows(v), dense)

    angles = 2 * np.pi * np.outer(np.arange(d), np.arange(d // 2 + 1)) / d
    dft = tf.constant(np.concatenate([np.cos(angles), -np.sin(angles)], 1), tf.float32)  # [d, 2F]
    signal = tf.random.uniform((b * x.shape[1] * x.shape[2], d))
    fns = {
        "  xla count sketch, library": fwd_bwd(lambda v: ts.count_sketch(rows(v), hashes, signs, [d])[0],
                                               x, [], jit=True),
        "  xla count sketch, rows + transpose": fwd_bwd(row_scatter, x, [], jit=True),
        "  xla count sketch, one-hot matmul": fwd_bwd(one_hot_matmul, x, [], jit=True),
        "  xla rfft [N, d]": fwd_bwd(lambda v: tf.abs(tf.signal.rfft(v)), signal, [], jit=True),
        "  xla DFT matmul [N, d] x [d, 2F]": fwd_bwd(lambda v: tf.matmul(v, dft), signal, [], jit=True),
    }
    return fns


def fwd_bwd(fn, x, variables, jit=False):
    """One tf.function: forward, then gradients w.r.t. x and `variables`; returns a callable."""
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def step(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = fn(v)
            loss = tf.reduce_sum(tf.square(tf.cast(y, tf.float32)))
        grads = tape.gradient(loss, [v] + list(variables))
        return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])  # forces every gradient

    return lambda: float(step(x))


def interleaved_medians(fns: dict, calls: int, rounds: int) -> tuple[list[dict], list[dict]]:
    """Per round {name: median wall seconds of `calls` calls} and {name: median CPU seconds}.

    Candidates are called in turn, in reversed order every other call. The process CPU time
    (`time.process_time`, all threads) is the work a call did; on a shared machine it is far less
    sensitive than the wall time to other jobs taking the cores away mid-call.
    """
    import numpy as np
    for fn in fns.values():
        fn()
        fn()
    walls, cpus = [], []
    names = list(fns)
    for _ in range(rounds):
        wall = {name: [] for name in fns}
        cpu = {name: [] for name in fns}
        for i in range(calls):
            for name in (names if i % 2 == 0 else names[::-1]):
                start, start_cpu = time.perf_counter(), time.process_time()
                fns[name]()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        walls.append({name: float(np.median(t)) for name, t in wall.items()})
        cpus.append({name: float(np.median(t)) for name, t in cpu.items()})
    return walls, cpus


def profile_ops(step, repeats=5, top=14):
    """Per-op time of `step` (a zero-argument callable running one compiled fwd+bwd) from a
    tf.profiler trace: TF kernels grouped by op type, XLA by its thunks (fusions, FFTs, scatter).
    Sums of op durations over the threads, per call; on a loaded machine they include time spent
    descheduled, so read the shares."""
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    wrappers = ("step", "TFE_", "Eager", "KernelAndDevice", "ExecutorState", "CpuExecutable",
                "ThunkExecutor", "BlockUntil", "__inference", "ParallelFor", "FunctionRun",
                "ExecutorDoneCallback", "end: ", "<lambda>", "__wrapped__")
    step()
    log_dir = tempfile.mkdtemp()
    tf.profiler.experimental.start(log_dir)
    for _ in range(repeats):
        step()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    per_op = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if name.startswith(wrappers):
                    continue
                # "scope/name:OpType" for TF kernels; XLA thunks: "rfft.11", "wrapped_scatter"
                op = name.rsplit(":", 1)[1] if ":" in name else name.rsplit(".", 1)[0]
                per_op[op] += event.duration_ps / 1e9 / repeats
    total = sum(per_op.values())
    print(f"  per-op time (sum of op durations, {total:.1f} ms per call; ops overlap on 2 cores):")
    for op, ms in per_op.most_common(top):
        print(f"    {op:40s} {ms:8.2f} ms  {100 * ms / total:5.1f} %")


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks import sketch_baselines as baselines
    from finegrain_tf.layers import CompactBilinearPooling, KernelPooling
    from finegrain_tf.ops import tensor_sketch as ts

    b, c = FLAGS.batch, FLAGS.channels
    print(f"TF {tf.__version__}; {os.cpu_count()} CPUs visible (shared machine: ratios of interleaved "
          f"runs are meaningful, absolute times are not); batch {b}; median of {FLAGS.calls} calls per "
          f"round, {FLAGS.rounds} interleaved rounds; gradients w.r.t. input and all trainable variables")
    fns = {}
    if FLAGS.resnet:
        net = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(448, 448, 3))
        images = tf.random.uniform((b, 448, 448, 3))
        fns["resnet50@448"] = fwd_bwd(lambda v: net(v, training=True), images, net.trainable_variables)
        if FLAGS.resnet_xla:
            fns["resnet50@448 xla"] = fwd_bwd(lambda v: net(v, training=True), images,
                                              net.trainable_variables, jit=True)
    for side in [int(s) for s in FLAGS.sizes]:
        x = tf.random.uniform((b, side, side, c))
        layer = KernelPooling(order=FLAGS.order, dims=FLAGS.dim)  # default arguments
        layer.build(x.shape)
        layer.set_gamma(1.0 / c)  # as after adapt(); the cost does not depend on gamma
        call = lambda v, layer=layer: layer(v, training=True)  # noqa: E731
        fns[f"kernel {side}x{side}"] = fwd_bwd(call, x, layer.trainable_variables)
        if FLAGS.xla:
            fns[f"kernel {side}x{side} xla"] = fwd_bwd(call, x, layer.trainable_variables, jit=True)
        if FLAGS.profile:
            for name in [n for n in fns if n.startswith(f"kernel {side}x{side}")]:
                print(f"-- profile of {name}, {side}x{side}x{c}, d={FLAGS.dim}, p={FLAGS.order}, "
                      f"load average {_load()}")
                profile_ops(fns[name])
        if FLAGS.baselines and side == 14:
            hashes = [tf.convert_to_tensor(h) for h in layer._hash_vars]
            signs = [tf.convert_to_tensor(s) for s in layer._sign_vars]
            orders = [list(range(2, FLAGS.order + 1))]
            flat = lambda v: tf.reshape(v, [b, -1, c])  # noqa: E731
            fns["  sketches, hand-written grad"] = fwd_bwd(
                lambda v: ts.pooled_tensor_sketches(flat(v), hashes, signs, [FLAGS.dim], orders), x, [])
            fns["  sketches, autodiff grad"] = fwd_bwd(
                lambda v: baselines.autodiff_pooled_tensor_sketches(flat(v), hashes, signs, [FLAGS.dim],
                                                                    orders), x, [])
            rows = lambda v: tf.reshape(v, [-1, c])  # noqa: E731
            fns["  count sketch, library"] = fwd_bwd(
                lambda v: ts.count_sketch(rows(v), hashes, signs, [FLAGS.dim])[0], x, [])
            fns["  count sketch, sparse matmul"] = fwd_bwd(
                lambda v: baselines.sparse_count_sketch(rows(v), hashes, signs, [FLAGS.dim])[0], x, [])
            fns["  count sketch, dense"] = fwd_bwd(
                lambda v: baselines.dense_count_sketch(rows(v), hashes, signs, [FLAGS.dim])[0], x, [])
            cbp = CompactBilinearPooling(dim=c + (FLAGS.order - 1) * FLAGS.dim)
            cbp.build(x.shape)
            fns[f"compact bilinear d={cbp.dim}"] = fwd_bwd(cbp, x, [])
        if FLAGS.xla_variants and side == 14:
            fns.update(xla_variants(x, layer, b, c, FLAGS.dim))
    print("load average before timing:", _load())
    rounds, cpu_rounds = interleaved_medians(fns, FLAGS.calls, FLAGS.rounds)
    print("load average after timing:", _load())
    ref = "resnet50@448" if FLAGS.resnet else None
    for i, (medians, cpus) in enumerate(zip(rounds, cpu_rounds)):
        print(f"round {i + 1} (median wall / median CPU time per call):")
        for name, sec in medians.items():
            ratio = ""
            if ref and name != ref:
                ratio = (f"  {100 * sec / medians[ref]:6.2f} % of ResNet-50 (wall), "
                         f"{100 * cpus[name] / cpus[ref]:6.2f} % (CPU)")
            print(f"  {name:36s} {1000 * sec:9.1f} ms {1000 * cpus[name]:9.1f} ms CPU{ratio}")
    if ref:
        print("summary (median over rounds of the per-round ratio to ResNet-50 fwd+bwd @448):")
        for name in fns:
            if name == ref:
                continue
            ratios = [100 * r[name] / r[ref] for r in rounds]
            cpu_ratios = [100 * r[name] / r[ref] for r in cpu_rounds]
            print(f"  {name:36s} wall {np.median(ratios):6.2f} %  (rounds: "
                  + ", ".join(f"{v:.2f}" for v in ratios)
                  + f");  CPU {np.median(cpu_ratios):6.2f} %  (rounds: "
                  + ", ".join(f"{v:.2f}" for v in cpu_ratios) + ")")


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    app.run(main)
