"""Load test: N concurrent gRPC clients for T seconds against `finegrain-serve` on loopback, vs in-process.

For each batch size (default 1 and 32) it runs the same work twice, each for `--seconds` in total
(alternating in `--rounds` slices so that drifting machine load affects both alike):
  served      N client threads -> gRPC (real tensorflow_serving stubs) -> finegrain-serve subprocess
              -> session-loaded SavedModel (the `classify` signature, encoded JPEG bytes in)
  in-process  N threads calling the same session-loaded SavedModel directly (SessionServable.run)
and prints QPS (requests/s), images/s, p50 and p99 latency side by side with served / in-process ratios.
Goals (issue 17 item 4): p50 <= 1.2x in-process at batch 1 and at batch 32. A third side, the stock
stub with a prebuilt request, separates the client's tensor conversion from gRPC + server cost.
Loopback only; bounded by 3 x --seconds per batch size plus start-up.

    python benchmarks/load_test.py [--export_dir=<base>/<name>/<version>] [--clients=4 --seconds=10]

Without --export_dir it exports the demo-sized model (small_cnn, 64 px, 20 classes, random weights).
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
flags.DEFINE_string("export_dir", None, "An export (<base>/<model_name>/<version>); default: export a demo model.")
flags.DEFINE_integer("clients", 4, "Concurrent clients (threads).")
flags.DEFINE_float("seconds", 10.0, "Duration of each measurement.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to measure.")
flags.DEFINE_integer("image_size", 64, "Input size of the default model.")
flags.DEFINE_string("signature", "classify", "Signature to load-test (bytes input).")
flags.DEFINE_list("server_flags", [], "Extra finegrain-serve flags (e.g. --tensorflow_session_parallelism=1).")
flags.DEFINE_integer("rounds", 4, "Alternate served / in-process this many times per batch size (each round "
                     "runs --seconds / rounds), so a change of machine load hits both sides alike.")


def _demo_export(workdir: str) -> str:
    from finegrain_tf.models.heads import build_classifier
    from finegrain_tf.serving.export import export_model

    model = build_classifier("small_cnn", pooling="avg", num_classes=20, input_size=FLAGS.image_size,
                             embedding_dim=32)
    return export_model(model, workdir, "loadtest", 1, class_names=[f"class_{i}" for i in range(20)],
                        image_size=FLAGS.image_size, top_k=5)


def _images(count: int, size: int) -> list:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    side = int(size * 1.25)
    return [tf.io.encode_jpeg(rng.integers(0, 256, (side, side + 7, 3), dtype=np.uint8)).numpy()
            for _ in range(count)]


def _hammer(call, clients: int, seconds: float):
    """Runs `call()` in `clients` threads for `seconds`; returns (latencies in s, errors, wall time)."""
    latencies, errors, lock = [], [], threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def worker():
        local = []
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                call()
            except Exception as e:  # counted and reported, never hidden
                with lock:
                    errors.append(repr(e))
                continue
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.array(latencies), errors, time.perf_counter() - start


def _stats(latencies, wall, batch):
    if latencies.size == 0:
        return {"qps": 0.0, "images_per_s": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    return {"qps": latencies.size / wall, "images_per_s": latencies.size * batch / wall,
            "p50_ms": 1e3 * float(np.percentile(latencies, 50)), "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
            "n": int(latencies.size)}


def _stub_call(client, payload, model_name):
    """A prebuilt PredictRequest on the stock stub: gRPC + server cost without client-side conversion."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name,
                                                                        signature_name=FLAGS.signature))
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(payload))
    return lambda: client.prediction.Predict(request, timeout=60)


SIDES = ("client", "stub", "local")  # Client.predict | stock stub, prebuilt request | in-process session


def main(argv):
    del argv
    from finegrain_tf.serving import Client, start_server_process
    from finegrain_tf.serving.layout import read_export_info
    from finegrain_tf.serving.servable import SessionServable

    workdir = tempfile.mkdtemp(prefix="finegrain-load-")
    try:
        export_dir = FLAGS.export_dir or _demo_export(workdir)
        info = read_export_info(export_dir)
        model_name = info["model_name"]
        batch_sizes = [int(b) for b in FLAGS.batch_sizes]
        images = _images(max(batch_sizes), info["image_size"])
        results = {}
        servable = SessionServable(export_dir)
        server = start_server_process(os.path.dirname(export_dir), model_name,
                                      extra_flags=[f"--max_batch_size={max(batch_sizes)}",
                                                   "--file_system_poll_wait_seconds=3600", *FLAGS.server_flags])
        try:
            with Client(server.target, model_name, max_batch_size=0, max_retries=0, timeout=60) as client:
                for batch in batch_sizes:
                    payload = np.array(images[:batch], dtype=object)
                    calls = {"client": lambda: client.predict({"images": payload}, FLAGS.signature),
                             "stub": _stub_call(client, payload, model_name),
                             "local": lambda: servable.run(FLAGS.signature, {"images": payload})}
                    for call in calls.values():  # warm every path
                        call()
                    acc = {side: ([], [], 0.0) for side in SIDES}
                    for _ in range(FLAGS.rounds):
                        for side in SIDES:
                            lat, err, wall = _hammer(calls[side], FLAGS.clients, FLAGS.seconds / FLAGS.rounds)
                            lats, errs, total = acc[side]
                            acc[side] = (lats + list(lat), errs + err, total + wall)
                    results[batch] = {k: dict(_stats(np.array(acc[k][0]), acc[k][2], batch), errors=len(acc[k][1]))
                                      for k in SIDES}
        finally:
            server.stop()
            servable.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nload test: {FLAGS.clients} clients x {FLAGS.seconds:.0f} s per cell, signature {FLAGS.signature!r}, "
          f"model {model_name!r} ({info['image_size']} px); served = finegrain-serve over loopback gRPC "
          "(client: Client.predict; stub: stock stub, prebuilt request), in-process = SessionServable.run")
    header = (f"{'batch':>5} {'metric':>12} {'client':>9} {'stub':>9} {'in-process':>11} "
              f"{'client/in-proc':>15} {'stub/in-proc':>13}")
    print(header)
    print("-" * len(header))
    for batch, r in results.items():
        for key in ("qps", "images_per_s", "p50_ms", "p99_ms"):
            local = r["local"][key]
            ratios = [r[side][key] / local if local else float("nan") for side in ("client", "stub")]
            print(f"{batch:>5} {key:>12} {r['client'][key]:>9.2f} {r['stub'][key]:>9.2f} {local:>11.2f} "
                  f"{ratios[0]:>15.2f} {ratios[1]:>13.2f}")
        print(f"{batch:>5} {'requests':>12} {r['client']['n']:>9d} {r['stub']['n']:>9d} {r['local']['n']:>11d}   "
              f"errors {r['client']['errors']}/{r['stub']['errors']}/{r['local']['errors']}")
    for batch in results:
        ratio = results[batch]["client"]["p50_ms"] / results[batch]["local"]["p50_ms"]
        print(f"goal p50(batch {batch}) Client / in-process <= 1.2: {ratio:.2f} -> {'met' if ratio <= 1.2 else 'NOT met'}")


if __name__ == "__main__":
    app.run(main)
