"""Benchmark: what bounded decoding and skip counting cost in the input pipeline.

Times one pass over an image folder three ways, interleaved in one process (rounds, shuffled order,
medians), and prints images/s side by side with the ratio to the plain pipeline:
  plain     read_file -> tf.io.decode_image -> preprocess_eval (what the loaders did before)
  bounded   read_file -> data.decode.decode_image (header checked against the limits first)
  pipeline  build_datasets' eval stream (bounded decode, skip counting with a sentinel, centre crop)
Also times the refusal of the 429-byte 1 x 120000 PNG of issue 11 against decoding it without bounds.

Issue 16 (the input pipeline must never be the bottleneck of ResNet-50 at 224 on 2 cores): the
train stream of the image-folder loader (`build_datasets`: read, bounded decode, skip counting,
random-resized-crop / flip augmentation at 224, batching; --train_batches batches of --step_batch)
against ResNet-50 (weights=None) train steps at 224 on the same batch size (forward, backward, SGD
update in one tf.function), alternated in one process for --rounds rounds; prints images/s of each
(median over rounds) and their ratio, with the load average.

Usage: python benchmarks/bench_input_pipeline.py [--images=200 --size=256 --rounds=3]
       python benchmarks/bench_input_pipeline.py --noresnet   # pipeline figures only
"""

import os
import random
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app, flags

from finegrain_tf.data import decode, pipeline, preprocessing
from finegrain_tf.train.config import DataConfig

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 200, "JPEG files in the folder (two classes)")
flags.DEFINE_integer("size", 256, "image side")
flags.DEFINE_integer("rounds", 3, "interleaved rounds")
flags.DEFINE_boolean("resnet", True, "time the train stream against ResNet-50 train steps at 224")
flags.DEFINE_integer("step_batch", 8, "batch size of the train stream and the ResNet-50 step")
flags.DEFINE_integer("train_batches", 8, "train-stream batches per timed pass")
flags.DEFINE_integer("resnet_steps", 2, "ResNet-50 steps per round")


def _folder(root: str) -> list:
    rng = np.random.default_rng(0)
    files = []
    for i in range(FLAGS.images):
        cls = os.path.join(root, f"c{i % 2}")
        os.makedirs(cls, exist_ok=True)
        path = os.path.join(cls, f"{i:05d}.jpg")
        pixels = rng.integers(0, 255, (FLAGS.size, FLAGS.size + 32, 3), dtype=np.uint8)
        tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=90))
        files.append(path)
    return files


def _pass(ds) -> float:
    start = time.perf_counter()
    for _ in ds:
        pass
    return time.perf_counter() - start


def _train_stream_vs_resnet(root: str) -> None:
    """images/s of the folder loader's train stream vs ResNet-50 train steps at 224, alternated."""
    import keras
    batch = FLAGS.step_batch
    train, _, _ = pipeline.build_datasets(DataConfig(name="folder", data_dir=root, image_size=224,
                                                     batch_size=batch))
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=2)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=False)
    images = tf.random.uniform((batch, 224, 224, 3))
    labels = tf.zeros((batch,), tf.int64)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    def stream() -> float:  # a fresh iterator each pass: its start-up is part of the cost
        start = time.perf_counter()
        for _ in train.take(FLAGS.train_batches):
            pass
        return FLAGS.train_batches * batch / (time.perf_counter() - start)

    def steps() -> float:
        start = time.perf_counter()
        for _ in range(FLAGS.resnet_steps):
            float(train_step(images, labels))
        return FLAGS.resnet_steps * batch / (time.perf_counter() - start)

    stream(), steps()  # warm-up: tracing
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    rates = {"train stream": [], "ResNet-50 step": []}
    for r in range(FLAGS.rounds):
        for name, fn in (("train stream", stream), ("ResNet-50 step", steps))[::1 if r % 2 == 0 else -1]:
            rates[name].append(fn())
    load_after = " ".join(f"{v:.1f}" for v in os.getloadavg())
    pipe, step = (float(np.median(rates[k])) for k in ("train stream", "ResNet-50 step"))
    print(f"train stream (decode + augment at 224, batch {batch}) vs ResNet-50 train step at 224, "
          f"{FLAGS.rounds} alternating rounds, load average {load_before} -> {load_after}:")
    for name, values in rates.items():
        print(f"  {name:15s} {float(np.median(values)):8.1f} images/s   (rounds: "
              + ", ".join(f"{v:.1f}" for v in values) + ")")
    print(f"  the pipeline delivers {pipe / step:.0f}x the images/s the ResNet-50 step consumes")


def _png_1x120000() -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"\x00" + bytes(3 * 120000)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 120000, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        files = _folder(root)
        crop = lambda image: preprocessing.preprocess_eval(image, 224)  # noqa: E731
        plain = tf.data.Dataset.from_tensor_slices(files).map(
            lambda p: crop(tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)),
            num_parallel_calls=tf.data.AUTOTUNE).batch(32)
        bounded = tf.data.Dataset.from_tensor_slices(files).map(
            lambda p: crop(decode.decode_image(tf.io.read_file(p))), num_parallel_calls=tf.data.AUTOTUNE).batch(32)
        _, full, _ = pipeline.build_datasets(DataConfig(name="folder", data_dir=root, image_size=224, batch_size=32))
        candidates = {"plain": plain, "bounded": bounded, "pipeline": full}
        times = {name: [] for name in candidates}
        for name, ds in candidates.items():
            _pass(ds)  # warm-up: tracing, file cache
        for _ in range(FLAGS.rounds):
            order = list(candidates)
            random.shuffle(order)
            for name in order:
                times[name].append(_pass(candidates[name]))
        base = np.median(times["plain"])
        print(f"{FLAGS.images} JPEGs of {FLAGS.size}x{FLAGS.size + 32}, centre crop 224, {FLAGS.rounds} rounds")
        for name, t in times.items():
            med = float(np.median(t))
            print(f"  {name:9s} {FLAGS.images / med:8.1f} images/s   x{med / base:.2f} of plain")
        if FLAGS.resnet:
            _train_stream_vs_resnet(root)

    bomb = tf.constant(_png_1x120000())
    refuse = tf.function(lambda b: decode.decode_image(b))
    unbounded = tf.function(lambda b: tf.io.decode_image(b, channels=3, expand_animations=False))
    for fn in (refuse, unbounded):  # trace
        try:
            fn(bomb)
        except tf.errors.InvalidArgumentError:
            pass
    t_refuse, t_decode = [], []
    for _ in range(FLAGS.rounds):
        start = time.perf_counter()
        try:
            refuse(bomb)
        except tf.errors.InvalidArgumentError:
            pass
        t_refuse.append(time.perf_counter() - start)
        start = time.perf_counter()
        unbounded(bomb)
        t_decode.append(time.perf_counter() - start)
    print(f"429-byte 1x120000 PNG: refused in {1000 * np.median(t_refuse):.2f} ms; "
          f"decoded without bounds in {1000 * np.median(t_decode):.2f} ms (x{np.median(t_decode) / np.median(t_refuse):.0f})")


if __name__ == "__main__":
    app.run(main)
