"""`finegrain-predict`: query TF Serving (or the finegrain-serve harness) and print a table.

    finegrain-predict --server=localhost:8500 --model=finegrain --signature=classify bird1.jpg bird2.png
    finegrain-predict --rest --server=localhost:8501 --model=finegrain --signature=lookup --k=3 query.jpg

gRPC by default, TF Serving's REST API with --rest. A file that cannot be read or that the server
refuses (e.g. not an image) is reported by name on stderr; the others are still answered, and the exit
code is 1 when any file failed.
"""

import sys

from absl import app, flags

from finegrain_tf.utils import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("server", "localhost:8500", "host:port of the gRPC endpoint (of the REST one with --rest).")
flags.DEFINE_bool("rest", False, "Use TF Serving's REST API (--rest_api_port, usually 8501) instead of gRPC.")
flags.DEFINE_string("model", "finegrain", "Model name.")
flags.DEFINE_enum("signature", "classify", ["classify", "serving_default", "embed", "lookup"], "Signature.")
flags.DEFINE_integer("k", None, "Rows per image (default: all the export returns).")
flags.DEFINE_float("timeout", 30.0, "Deadline per request attempt, seconds.")
flags.DEFINE_integer("max_retries", 3, "Retries on UNAVAILABLE (gRPC).")
flags.DEFINE_integer("batch_size", 32, "Images per request.")


def _client():
    from finegrain_tf.serving.client import Client, RestClient

    if FLAGS.rest:
        url = FLAGS.server if "://" in FLAGS.server else f"http://{FLAGS.server}"
        return RestClient(url, FLAGS.model, timeout=FLAGS.timeout)
    return Client(FLAGS.server, FLAGS.model, timeout=FLAGS.timeout, max_retries=FLAGS.max_retries,
                  max_batch_size=FLAGS.batch_size)


def _query(client, images):
    if FLAGS.signature == "embed":
        return {"embeddings": client.embed(images)}
    if FLAGS.signature == "lookup":
        return client.lookup(images)
    return client.classify(images, signature_name=FLAGS.signature)


def _refused(error) -> str | None:
    """The server's message when it refused the input itself (not a transport problem), else None."""
    import grpc

    from finegrain_tf.serving.client import RestError

    if isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return error.details()
    if isinstance(error, RestError) and error.status == 400:
        return error.message
    return None


def _answer(client, paths, images) -> tuple[list, dict | None, dict]:
    """(answered paths, their outputs, {failed path: reason}); a refused batch is retried image by image
    so one bad file does not sink the others."""
    try:
        return paths, _query(client, images), {}
    except Exception as e:  # noqa: BLE001 - classified below; anything else propagates
        if _refused(e) is None or len(paths) == 1:
            if _refused(e) is not None:
                return [], None, {paths[0]: _refused(e)}
            raise
    import numpy as np

    good, parts, failed = [], [], {}
    for path, image in zip(paths, images):
        try:
            parts.append(_query(client, [image]))
            good.append(path)
        except Exception as e:  # noqa: BLE001
            reason = _refused(e)
            if reason is None:
                raise
            failed[path] = reason
    outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else None
    return good, outputs, failed


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files")
    failed, images, readable = {}, [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                images.append(f.read())
            readable.append(path)
        except OSError as e:
            failed[path] = f"cannot read: {e.strerror}"
    answered, outputs = [], None
    if readable:
        with _client() as client:
            try:
                answered, outputs, refused = _answer(client, readable, images)
            except Exception as e:  # noqa: BLE001 - a server problem: one line, no traceback
                sys.stderr.write(f"finegrain-predict: request to {FLAGS.server} failed: "
                                 f"{getattr(e, 'details', lambda: e)()}\n")
                sys.exit(2)
        failed.update(refused)
    for path in paths:
        if path in failed:
            sys.stderr.write(f"finegrain-predict: {path}: {failed[path]}\n")
    if answered:
        from finegrain_tf.serving.client import format_table  # TensorFlow: not needed for --help

        sys.stdout.write(format_table(answered, FLAGS.signature, outputs, FLAGS.k) + "\n")
    if failed:
        sys.exit(1)


def run():
    cli.run(main, __name__)  # --help lists this module's flags and exits 0


if __name__ == "__main__":
    run()
