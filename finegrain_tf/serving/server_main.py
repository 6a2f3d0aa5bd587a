"""`finegrain-serve`: a development/test harness speaking TF Serving's gRPC and REST protocols (flags as
tensorflow_model_server's). For tests, demos and machines without the TF Serving binary; in production
run the stock TF Serving server (export/README.md).

    finegrain-serve --port=8500 --rest_api_port=8501 --model_name=finegrain --model_base_path=/models/finegrain
    finegrain-serve --port=8500 --model_config_file=export/models.config

`--model_base_path` holds integer version directories; the policy's versions are served and new ones
picked up while serving; a version that fails to load is retried with back-off. SIGTERM / SIGINT shut
down gracefully (in-flight requests finish). Loopback by default; another --host logs a warning, and
--ssl_server_cert/--ssl_server_key turn on TLS for gRPC.
"""

import json
import os
import signal
import threading

from absl import app, flags, logging

from finegrain_tf.utils import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("port", 8500, "gRPC port (0 = pick a free one; see --port_file).")
flags.DEFINE_integer("rest_api_port", None, "Also serve TF Serving's REST API on this port (0 = a free one).")
flags.DEFINE_string("host", "127.0.0.1", "Interface to bind (loopback by default; 0.0.0.0 for all, with a warning).")
flags.DEFINE_string("model_name", "default", "Name of the model in model_spec.name (with --model_base_path).")
flags.DEFINE_string("model_base_path", None, "Directory of integer version subdirectories.")
flags.DEFINE_string("model_config_file", None, "Text-format ModelServerConfig with several models, version "
                    "policies and version labels (as tensorflow_model_server reads it); replaces "
                    "--model_name/--model_base_path.")
flags.DEFINE_integer("file_system_poll_wait_seconds", 1, "Seconds between polls for new versions.")
flags.DEFINE_bool("enable_model_warmup", True, "Replay assets.extra/tf_serving_warmup_requests on load.")
flags.DEFINE_integer("max_num_load_retries", 5, "Retries of a version that failed to load.")
flags.DEFINE_integer("load_retry_interval_micros", 60_000_000, "Wait before the first retry of a failed "
                     "load (microseconds, as tensorflow_model_server); doubles after each failure.")
flags.DEFINE_integer("max_batch_size", 64, "Requests with a larger batch are INVALID_ARGUMENT (0 = no limit).")
flags.DEFINE_integer("grpc_max_threads", 8, "gRPC handler threads.")
flags.DEFINE_integer("tensorflow_session_parallelism", 0, "Session intra/inter-op threads (0 = auto).")
flags.DEFINE_float("grace_seconds", 10.0, "On SIGTERM, how long in-flight requests may take to finish.")
flags.DEFINE_string("ssl_server_cert", None, "PEM certificate chain: serve gRPC over TLS (with --ssl_server_key).")
flags.DEFINE_string("ssl_server_key", None, "PEM private key of --ssl_server_cert.")
flags.DEFINE_string("ssl_custom_ca", None, "PEM CA certificate: require client certificates signed by it.")
flags.DEFINE_string("port_file", "", "If set, {\"grpc\": port, \"rest\": port} is written there once serving.")


def _models():
    from finegrain_tf.serving.model_config import ModelConfig, read_model_config

    if FLAGS.model_config_file:
        if FLAGS.model_base_path:
            raise app.UsageError("give either --model_config_file or --model_base_path, not both")
        models = read_model_config(FLAGS.model_config_file)
    elif FLAGS.model_base_path:
        models = [ModelConfig(FLAGS.model_name, FLAGS.model_base_path)]
    else:
        raise app.UsageError("give --model_base_path (with --model_name) or --model_config_file")
    for model in models:
        if not os.path.isdir(model.base_path):
            raise app.UsageError(f"base path {model.base_path!r} of model {model.name!r} is not a directory")
    return models


def _credentials():
    if not (FLAGS.ssl_server_cert or FLAGS.ssl_server_key or FLAGS.ssl_custom_ca):
        return None
    if not (FLAGS.ssl_server_cert and FLAGS.ssl_server_key):
        raise app.UsageError("TLS needs both --ssl_server_cert and --ssl_server_key")
    from finegrain_tf.serving.server import ssl_credentials

    return ssl_credentials(FLAGS.ssl_server_cert, FLAGS.ssl_server_key, FLAGS.ssl_custom_ca)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from finegrain_tf.serving.server import DevModelServer

    try:
        models, credentials = _models(), _credentials()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    server = DevModelServer(models, port=FLAGS.port, host=FLAGS.host, rest_api_port=FLAGS.rest_api_port,
                            max_batch_size=FLAGS.max_batch_size,
                            poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
                            enable_warmup=FLAGS.enable_model_warmup, max_workers=FLAGS.grpc_max_threads,
                            num_threads=FLAGS.tensorflow_session_parallelism,
                            max_num_load_retries=FLAGS.max_num_load_retries,
                            load_retry_interval=FLAGS.load_retry_interval_micros / 1e6, credentials=credentials)
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
            json.dump({"grpc": server.port, "rest": server.rest_api_port}, f)
        os.replace(tmp, FLAGS.port_file)
    for name, manager in sorted(server.core.managers.items()):
        logging.info("serving model %r from %s on %s (versions %s)", name, manager.config.base_path,
                     server.target, manager.loaded_versions)
    while not stop.wait(0.5):
        pass
    server.stop(FLAGS.grace_seconds)
    logging.info("stopped")


def run():
    cli.run(main, __name__)  # --help lists this module's flags and exits 0


if __name__ == "__main__":
    run()
