"""Load test: N concurrent gRPC clients against `finegrain-serve` on loopback, vs the same work in-process.

For each batch size (default 1 and 32) four sides run the same request (the `classify` signature, a
prebuilt batch of encoded JPEGs), each for `--seconds` in total, alternating in `--rounds` slices whose
order rotates every round, so that drifting machine load hits all sides alike. Each side times, per
call, in N client threads:
  client  `Client.predict({"images": batch})`: request building + the stub call + response conversion
          to numpy, against a `finegrain-serve` subprocess (the dev server, session-loaded SavedModel);
  stub    the stock tensorflow_serving stub's `Predict(prebuilt PredictRequest)` on the same server:
          serialisation, loopback transport, the server's parsing, validation, session call and
          response building, and the client's response parsing;
  local   in-process: `SessionServable.run(signature, {"images": batch})` (validation + the session
          call) on the same prebuilt batch, the same SessionServable class the server runs;
  noop    the stock stub against a no-op PredictionService subprocess that returns the prebuilt
          response of this batch: the floor of Python gRPC (both processes) at this payload.
It prints QPS, p50/p90/p99 latency, CPU time per request (psutil: `cpu_here` of this process, i.e. the
clients or the in-process session, `cpu_server` of the server process; `cpu` their sum) and the
ratios to `local`, the per-round p50 ratios, and the floor: local p50 + noop p50 and
local CPU + noop CPU per request, over local. Goal (issue 17 item 4): p50 <= 1.2x in-process.

Like with like: both sessions are `SessionServable`s created as the first TF device of their process
(the demo export and the JPEG encoding run in a child process), so both get the same TF thread pools.

    python benchmarks/load_test.py [--export_dir=<base>/<name>/<version>] [--clients=4 --seconds=12 --rounds=12]

Without --export_dir it exports the demo-sized model (small_cnn, 64 px, 20 classes, random weights).
Loopback only; bounded by 4 x --seconds per batch size plus start-up.
"""

import multiprocessing
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
flags.DEFINE_float("seconds", 12.0, "Duration of each side per batch size (split over --rounds).")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to measure.")
flags.DEFINE_integer("image_size", 64, "Input size of the default model.")
flags.DEFINE_string("signature", "classify", "Signature to load-test (bytes input).")
flags.DEFINE_list("server_flags", [], "Extra finegrain-serve flags (e.g. --tensorflow_session_parallelism=1).")
flags.DEFINE_integer("rounds", 12, "Alternate the sides this many times per batch size (each round runs "
                     "--seconds / rounds per side, in a rotating order).")

SIDES = ("client", "stub", "local", "noop")
SERVED = ("client", "stub", "noop")


# -- set-up in child processes (TF state of this process stays untouched) -------------------------
def _prepare(workdir: str, export_dir: str | None, image_size: int, count: int):
    """(export_dir, `count` encoded JPEGs): exports the demo model unless `export_dir` is given. Runs in
    a child process so that eager TF does not create this process's thread pools before the session."""
    import tensorflow as tf

    from finegrain_tf.serving.layout import read_export_info

    if export_dir is None:
        from finegrain_tf.models.heads import build_classifier
        from finegrain_tf.serving.export import export_model

        model = build_classifier("small_cnn", pooling="avg", num_classes=20, input_size=image_size,
                                 embedding_dim=32)
        export_dir = export_model(model, workdir, "loadtest", 1, class_names=[f"class_{i}" for i in range(20)],
                                  image_size=image_size, top_k=5)
    side = int(read_export_info(export_dir)["image_size"] * 1.25)
    rng = np.random.default_rng(0)
    images = [tf.io.encode_jpeg(rng.integers(0, 256, (side, side + 7, 3), dtype=np.uint8)).numpy()
              for _ in range(count)]
    return export_dir, images


def _noop_server(responses: dict, port_pipe):
    """A PredictionService that answers every Predict with the prebuilt response of its batch size."""
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from finegrain_tf.serving.server import grpc_options

    parsed = {batch: predict_pb2.PredictResponse.FromString(data) for batch, data in responses.items()}

    class NoopServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            return parsed[request.inputs["images"].tensor_shape.dim[0].size]

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=grpc_options())
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(NoopServicer(), server)
    port_pipe.send(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination()


# -- measuring ------------------------------------------------------------------------------------
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


def _cpu_seconds(processes) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)  # user + system, all threads


class _Side:
    """Latencies, errors, wall and CPU time of one side, accumulated over rounds."""

    def __init__(self):
        self.latencies, self.round_p50, self.errors, self.wall = [], [], 0, 0.0
        self.cpu_here, self.cpu_server = 0.0, 0.0  # CPU seconds of this process / of the server process

    def add(self, latencies, errors, wall, cpu_here, cpu_server):
        self.latencies.extend(latencies)
        self.round_p50.append(float(np.percentile(latencies, 50)) if len(latencies) else float("nan"))
        self.errors += len(errors)
        self.wall += wall
        self.cpu_here += cpu_here
        self.cpu_server += cpu_server

    def stats(self, batch: int) -> dict:
        lat, n = np.array(self.latencies), len(self.latencies)
        if n == 0:
            return {"n": 0, "errors": self.errors, **{k: float("nan") for k in
                    ("qps", "images_per_s", "p50_ms", "p90_ms", "p99_ms", "cpu_ms", "cpu_here_ms", "cpu_server_ms")}}
        return {"n": n, "errors": self.errors, "qps": n / self.wall, "images_per_s": n * batch / self.wall,
                **{f"p{q}_ms": 1e3 * float(np.percentile(lat, q)) for q in (50, 90, 99)},
                "cpu_ms": 1e3 * (self.cpu_here + self.cpu_server) / n, "cpu_here_ms": 1e3 * self.cpu_here / n,
                "cpu_server_ms": 1e3 * self.cpu_server / n}


def _measure(calls: dict, processes: dict, batch: int) -> dict:
    """Runs the sides in rotating order for --rounds rounds; returns {side: _Side}."""
    import psutil

    me = psutil.Process()
    sides = {side: _Side() for side in calls}
    for call in calls.values():  # warm every path
        for _ in range(3):
            call()
    for r in range(FLAGS.rounds):
        for side in SIDES[r % len(SIDES):] + SIDES[:r % len(SIDES)]:
            server = processes.get(side, [])
            here0, server0 = _cpu_seconds([me]), _cpu_seconds(server)
            lat, err, wall = _hammer(calls[side], FLAGS.clients, FLAGS.seconds / FLAGS.rounds)
            sides[side].add(lat, err, wall, _cpu_seconds([me]) - here0, _cpu_seconds(server) - server0)
    return sides


def _report(results: dict, model_name: str, image_size: int):
    print(f"\nload test: {FLAGS.clients} clients, {FLAGS.seconds:g} s per side and batch size in {FLAGS.rounds} "
          f"rounds, signature {FLAGS.signature!r}, model {model_name!r} ({image_size} px)")
    print("client = Client.predict, stub = stock stub with a prebuilt request (both to finegrain-serve over "
          "loopback gRPC), local = SessionServable.run in-process, noop = stock stub to a no-op server")
    header = f"{'batch':>5} {'metric':>13}" + "".join(f"{s:>9}" for s in SIDES) + "".join(
        f"{s + '/local':>13}" for s in SERVED)
    print(header)
    print("-" * len(header))
    for batch, sides in results.items():
        stats = {side: sides[side].stats(batch) for side in SIDES}
        for key in ("qps", "images_per_s", "p50_ms", "p90_ms", "p99_ms", "cpu_ms", "cpu_here_ms", "cpu_server_ms"):
            local = stats["local"][key]
            print(f"{batch:>5} {key:>13}" + "".join(f"{stats[s][key]:>9.2f}" for s in SIDES) + "".join(
                f"{stats[s][key] / local if local else float('nan'):>13.2f}" for s in SERVED))
        print(f"{batch:>5} {'requests':>13}" + "".join(f"{stats[s]['n']:>9d}" for s in SIDES)
              + "   errors " + "/".join(str(stats[s]["errors"]) for s in SIDES))
        for side in ("client", "stub"):
            ratios = np.array(sides[side].round_p50) / np.array(sides["local"].round_p50)
            print(f"{batch:>5} per-round p50 {side}/local: " + " ".join(f"{x:.2f}" for x in ratios))
        floor_p50 = 1 + stats["noop"]["p50_ms"] / stats["local"]["p50_ms"]
        floor_cpu = 1 + stats["noop"]["cpu_ms"] / stats["local"]["cpu_ms"]
        print(f"{batch:>5} floor (Python gRPC at this payload): (local + noop) / local = {floor_p50:.2f} (p50), "
              f"{floor_cpu:.2f} (CPU per request)")
    for batch, sides in results.items():
        local = sides["local"].stats(batch)
        for side in ("client", "stub"):
            s = sides[side].stats(batch)
            ratio = s["p50_ms"] / local["p50_ms"]
            print(f"goal p50(batch {batch}) {side} / local <= 1.2: {ratio:.2f} (p90 {s['p90_ms'] / local['p90_ms']:.2f})"
                  f" -> {'met' if ratio <= 1.2 else 'NOT met'}")
    print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv):
    del argv
    import psutil

    workdir = tempfile.mkdtemp(prefix="finegrain-load-")
    spawn = multiprocessing.get_context("spawn")
    noop = None
    try:
        batch_sizes = [int(b) for b in FLAGS.batch_sizes]
        with spawn.Pool(1) as pool:
            export_dir, images = pool.apply(_prepare, (workdir, FLAGS.export_dir, FLAGS.image_size,
                                                       max(batch_sizes)))

        from tensorflow_serving.apis import model_pb2, predict_pb2

        from finegrain_tf.serving import Client, start_server_process
        from finegrain_tf.serving.layout import read_export_info
        from finegrain_tf.serving.servable import SessionServable
        from finegrain_tf.serving.tensors import to_tensor_proto

        info = read_export_info(export_dir)
        model_name = info["model_name"]
        servable = SessionServable(export_dir)  # first TF device of this process, as in the server
        payloads = {batch: np.array(images[:batch], dtype=object) for batch in batch_sizes}
        responses = {}
        for batch, payload in payloads.items():
            response = predict_pb2.PredictResponse()
            for key, value in servable.run(FLAGS.signature, {"images": payload}).items():
                to_tensor_proto(value, response.outputs[key])
            responses[batch] = response.SerializeToString()
        receive_port, send_port = spawn.Pipe(duplex=False)
        noop = spawn.Process(target=_noop_server, args=(responses, send_port), daemon=True)
        noop.start()
        noop_port = receive_port.recv()
        server = start_server_process(os.path.dirname(export_dir), model_name,
                                      extra_flags=[f"--max_batch_size={max(batch_sizes)}",
                                                   "--file_system_poll_wait_seconds=3600", *FLAGS.server_flags])
        processes = {"client": [psutil.Process(server.process.pid)], "stub": [psutil.Process(server.process.pid)],
                     "noop": [psutil.Process(noop.pid)]}
        results = {}
        try:
            with Client(server.target, model_name, max_batch_size=0, max_retries=0, timeout=60) as client, \
                    Client(f"127.0.0.1:{noop_port}", model_name, max_batch_size=0, max_retries=0) as floor:
                for batch, payload in payloads.items():
                    request = predict_pb2.PredictRequest(
                        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=FLAGS.signature))
                    to_tensor_proto(payload, request.inputs["images"])
                    calls = {"client": lambda: client.predict({"images": payload}, FLAGS.signature),
                             "stub": lambda: client.prediction.Predict(request, timeout=60),
                             "local": lambda: servable.run(FLAGS.signature, {"images": payload}),
                             "noop": lambda: floor.prediction.Predict(request, timeout=60)}
                    results[batch] = _measure(calls, processes, batch)
        finally:
            server.stop()
            servable.close()
    finally:
        if noop is not None:
            noop.terminate()
            noop.join()
        shutil.rmtree(workdir, ignore_errors=True)
    _report(results, model_name, info["image_size"])


if __name__ == "__main__":
    app.run(main)
