"""`finegrain-serve`: the TF Serving protocol dev server for one model (flags as tensorflow_model_server).

    finegrain-serve --port=8500 --model_name=finegrain --model_base_path=/models/finegrain

`--model_base_path` holds integer version directories; the highest one is served and a newer one is
picked up while serving. SIGTERM / SIGINT shut down gracefully (in-flight requests finish).
"""

import os
import signal
import threading

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_integer("port", 8500, "gRPC port (0 = pick a free one; see --port_file).")
flags.DEFINE_string("host", "127.0.0.1", "Interface to bind (loopback by default; 0.0.0.0 for all).")
flags.DEFINE_string("model_name", "default", "Name of the model in model_spec.name.")
flags.DEFINE_string("model_base_path", None, "Directory of integer version subdirectories.")
flags.DEFINE_integer("file_system_poll_wait_seconds", 1, "Seconds between polls for new versions.")
flags.DEFINE_bool("enable_model_warmup", True, "Replay assets.extra/tf_serving_warmup_requests on load.")
flags.DEFINE_integer("max_batch_size", 64, "Requests with a larger batch are INVALID_ARGUMENT (0 = no limit).")
flags.DEFINE_integer("grpc_max_threads", 8, "gRPC handler threads.")
flags.DEFINE_integer("tensorflow_session_parallelism", 0, "Session intra/inter-op threads (0 = auto).")
flags.DEFINE_float("grace_seconds", 10.0, "On SIGTERM, how long in-flight requests may take to finish.")
flags.DEFINE_string("port_file", "", "If set, the bound port is written there once serving.")
flags.mark_flag_as_required("model_base_path")


def main(argv):
    del argv
    from finegrain_tf.serving.server import DevModelServer

    if not os.path.isdir(FLAGS.model_base_path):
        raise app.UsageError(f"--model_base_path {FLAGS.model_base_path!r} is not a directory")
    server = DevModelServer(FLAGS.model_name, FLAGS.model_base_path, port=FLAGS.port, host=FLAGS.host,
                            max_batch_size=FLAGS.max_batch_size,
                            poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
                            enable_warmup=FLAGS.enable_model_warmup, max_workers=FLAGS.grpc_max_threads,
                            num_threads=FLAGS.tensorflow_session_parallelism)
    stop = threading.Event()

    def on_signal(signum, frame):
        del frame
        logging.info("signal %d: shutting down gracefully (grace %.1fs)", signum, FLAGS.grace_seconds)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    if FLAGS.port_file:
        tmp = FLAGS.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(server.port))
        os.replace(tmp, FLAGS.port_file)
    logging.info("serving model %r from %s on %s (version %s)", FLAGS.model_name, FLAGS.model_base_path,
                 server.target, server.manager.current_version)
    while not stop.wait(0.5):
        pass
    server.stop(FLAGS.grace_seconds)
    logging.info("stopped")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
