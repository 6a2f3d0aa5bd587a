"""`finegrain-predict`: query a TF Serving (or finegrain-serve) gRPC endpoint and print a table.

    finegrain-predict --server=localhost:8500 --model=finegrain --signature=classify bird1.jpg bird2.png
    finegrain-predict --server=localhost:8500 --model=finegrain --signature=lookup --k=3 query.jpg
"""

import sys

from absl import app, flags

from finegrain_tf.serving.client import format_table

FLAGS = flags.FLAGS
flags.DEFINE_string("server", "localhost:8500", "host:port of the gRPC endpoint.")
flags.DEFINE_string("model", "finegrain", "Model name.")
flags.DEFINE_enum("signature", "classify", ["classify", "serving_default", "embed", "lookup"], "Signature.")
flags.DEFINE_integer("k", None, "Rows per image (default: all the export returns).")
flags.DEFINE_float("timeout", 30.0, "Deadline per request attempt, seconds.")
flags.DEFINE_integer("max_retries", 3, "Retries on UNAVAILABLE.")
flags.DEFINE_integer("batch_size", 32, "Images per request.")


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files")
    from finegrain_tf.serving.client import Client

    images = []
    for path in paths:
        with open(path, "rb") as f:
            images.append(f.read())
    with Client(FLAGS.server, FLAGS.model, timeout=FLAGS.timeout, max_retries=FLAGS.max_retries,
                max_batch_size=FLAGS.batch_size) as client:
        if FLAGS.signature == "embed":
            outputs = {"embeddings": client.embed(images)}
        elif FLAGS.signature == "lookup":
            outputs = client.lookup(images)
        else:
            outputs = client.classify(images, signature_name=FLAGS.signature)
    sys.stdout.write(format_table(paths, FLAGS.signature, outputs, FLAGS.k) + "\n")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
