"""Benchmark: what bounded decoding and skip counting cost in the input pipeline.

Times one pass over an image folder three ways, interleaved in one process (rounds, shuffled order,
medians), and prints images/s side by side with the ratio to the plain pipeline:
  plain     read_file -> tf.io.decode_image -> preprocess_eval (what the loaders did before)
  bounded   read_file -> data.decode.decode_image (header checked against the limits first)
  pipeline  build_datasets' eval stream (bounded decode, skip counting with a sentinel, centre crop)
Also times the refusal of the 429-byte 1 x 120000 PNG of issue 11 against decoding it without bounds.

Usage: python benchmarks/bench_input_pipeline.py [--images=200 --size=256 --rounds=3]
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
