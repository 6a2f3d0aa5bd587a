"""Seed 000 §6.4.5 / Fig. 6.12: granularity vs nuisance factors on the synthetic dataset.

Test images are corrupted before feature extraction with the (fixed) coarse-trained small CNN of
`granularity_common`: additive Gaussian noise (sigma on the 0-255 scale), salt & pepper noise
(fraction of pixels set to 0 or 255) and reduced resolution (area downsampling of the 32x32 image to
r x r, bilinear upsampling back).  RankM is computed with the 40 fine labels and with the 8 coarse
labels.  The seed finds granularity rises with noise and with lower resolution.

    python studies/granularity_nuisance.py --output_dir runs/studies/granularity_nuisance
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import granularity_common as common  # noqa: E402
from finegrain_tf.analysis.dataset_granularity import granularity  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/studies/granularity_nuisance", "where PNG + JSON go")
flags.DEFINE_string("cache_dir", "runs/studies/_cache", "shared CNN / feature cache")
flags.DEFINE_list("sigmas", ["0", "8", "16", "32", "64"], "Gaussian noise std (0-255 scale)")
flags.DEFINE_list("salt_pepper", ["0", "0.02", "0.05", "0.1", "0.2"], "salt & pepper pixel fraction")
flags.DEFINE_list("resolutions", ["32", "24", "16", "12", "8"], "reduced resolutions (pixels)")


def gaussian(images, sigma, rng):
    return np.clip(images.astype(np.float32) + rng.normal(0, sigma, images.shape), 0, 255)


def salt_pepper(images, frac, rng):
    out = images.astype(np.float32).copy()
    mask = rng.random(images.shape[:3])
    out[mask < frac / 2] = 0.0
    out[(mask >= frac / 2) & (mask < frac)] = 255.0
    return out


def low_res(images, r):
    import tensorflow as tf

    size = images.shape[1]
    small = tf.image.resize(images.astype(np.float32), (r, r), method="area")
    return tf.image.resize(small, (size, size), method="bilinear").numpy()


def main(argv):
    del argv
    t0 = time.time()
    data, model, _ = common.coarse_setup(FLAGS.cache_dir)
    images, fine = data.images["test"], data.labels["test"]
    coarse = data.superclass_of[fine]
    rng = np.random.default_rng(0)
    result = {"features": "small CNN trained on the 8 coarse labels (clean train images)"}
    sweeps = {"gaussian_sigma": ([float(s) for s in FLAGS.sigmas], lambda im, v: gaussian(im, v, rng)),
              "salt_pepper_fraction": ([float(s) for s in FLAGS.salt_pepper], lambda im, v: salt_pepper(im, v, rng)),
              "resolution": ([int(s) for s in FLAGS.resolutions], lambda im, v: low_res(im, v))}
    for name, (levels, fn) in sweeps.items():
        rows = []
        for level in levels:
            feats = common.embed(model, fn(images, level))
            rows.append({"level": level, "rankm_fine": granularity(feats, fine, "rankm"),
                         "rankm_coarse": granularity(feats, coarse, "rankm")})
        result[name] = rows
    result["seconds"] = time.time() - t0
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "granularity_nuisance.json"), "w") as f:
        json.dump(result, f, indent=2)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, name in zip(axes, sweeps):
        lv = [r["level"] for r in result[name]]
        ax.plot(lv, [r["rankm_fine"] for r in result[name]], marker="o", label="40 fine labels")
        ax.plot(lv, [r["rankm_coarse"] for r in result[name]], marker="s", label="8 coarse labels")
        ax.set_xlabel(name.replace("_", " "))
        if name == "resolution":
            ax.invert_xaxis()
        ax.set_ylabel("granularity (RankM)")
        ax.legend(fontsize=8)
    fig.suptitle("Fig 6.12 analogue: nuisance factors (synthetic test split)")
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.output_dir, "granularity_nuisance.png"), dpi=100)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main)
