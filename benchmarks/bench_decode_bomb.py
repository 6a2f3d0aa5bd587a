"""Decompression-bomb benchmark: a few hundred bytes of PNG declaring 1 x W pixels sent to `classify`
of a `finegrain-serve` subprocess, with the export's decode limits (default 40 MP, 1:50) and without
them (limits raised so far that the header check always passes: the pre-issue-11 behaviour).

For each side it prints the answer (status code and message), the latency of the request and the
rise of the server's resident memory during it (VmRSS sampled every 2 ms, peak minus the value
before), side by side. Issue 11's goal: INVALID_ARGUMENT in < 100 ms with < 50 MB memory rise.

    python benchmarks/bench_decode_bomb.py [--widths=60000,120000] [--image_size=224] [--skip_unbounded]

The unbounded side really decodes and resizes the image (about 1 GB and several seconds at
W = 60000, 224 px); --skip_unbounded leaves it out on a crowded machine.
"""

import os
import shutil
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["60000", "120000"], "Widths of the 1 x W PNGs sent.")
flags.DEFINE_integer("image_size", 224, "Model input size (the resize before the crop scales the bomb).")
flags.DEFINE_bool("skip_unbounded", False, "Only measure the bounded export.")
flags.DEFINE_integer("repeats", 3, "Requests per image (the median latency and the largest rise are printed).")


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _export(workdir: str, name: str, limits) -> str:
    import keras

    from finegrain_tf.serving.export import export_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((FLAGS.image_size, FLAGS.image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs))
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    return export_model(keras.Model(inputs, outputs), workdir, name, 1, class_names=[f"c{i}" for i in range(10)],
                        image_size=FLAGS.image_size, top_k=3, decode_limits=limits)


def _measure(stub, pid: int, model_name: str, png: bytes) -> dict:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name="classify"))
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.array([png], dtype=object)))
    before = _rss_kb(pid)
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kb(pid))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        stub.Predict(request, timeout=300)
        answer = "OK (decoded and classified)"
    except grpc.RpcError as e:
        answer = f"{e.code().name}: {e.details()[:110]}"
    latency = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"answer": answer, "ms": 1e3 * latency, "rise_mb": (peak[0] - before) / 1024}


def main(argv):
    del argv
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from finegrain_tf.data.decode import DecodeLimits
    from finegrain_tf.serving.server_process import start_server_process

    workdir = tempfile.mkdtemp(prefix="finegrain-bomb-")
    sides = {"bounded": DecodeLimits()}
    if not FLAGS.skip_unbounded:
        sides["unbounded"] = DecodeLimits(max_pixels=10 ** 15, max_aspect_ratio=1e12)
    results = {}
    try:
        for side, limits in sides.items():
            _export(workdir, side, limits)
            server = start_server_process(os.path.join(workdir, side), side,
                                          extra_flags=["--file_system_poll_wait_seconds=3600"])
            try:
                with grpc.insecure_channel(server.target) as channel:
                    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                    for width in map(int, FLAGS.widths):
                        png = tf.io.encode_png(np.zeros((1, width, 1), np.uint8)).numpy()
                        runs = [_measure(stub, server.process.pid, side, png) for _ in range(FLAGS.repeats)]
                        results[(side, width)] = {"bytes": len(png), "answer": runs[0]["answer"],
                                                  "ms": float(np.median([r["ms"] for r in runs])),
                                                  "rise_mb": max(r["rise_mb"] for r in runs)}
            finally:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n1 x W PNG sent to classify ({FLAGS.image_size} px model), finegrain-serve over gRPC, "
          f"median latency of {FLAGS.repeats}, largest server RSS rise")
    print(f"{'width':>7} {'bytes':>6} {'side':>10} {'latency ms':>11} {'RSS rise MB':>12}  answer")
    for (side, width), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{width:>7} {r['bytes']:>6} {side:>10} {r['ms']:>11.1f} {r['rise_mb']:>12.1f}  {r['answer']}")
    for width in map(int, FLAGS.widths):
        if ("unbounded", width) in results:
            b, u = results[("bounded", width)], results[("unbounded", width)]
            print(f"width {width}: latency unbounded / bounded = {u['ms'] / b['ms']:.0f}x; "
                  f"RSS rise bounded {b['rise_mb']:.1f} MB, unbounded {u['rise_mb']:.1f} MB")


if __name__ == "__main__":
    app.run(main)
