"""CPU-scale reproduction of seed 000 Tables 2.1 / 2.3 through `finegrain-train` and its configs.

Every method is one config, `configs/metric_<method>.yaml` (they differ exactly where the methods
differ; tests/train/test_metric_configs.py checks it), trained by the training binary's loop:

  softmax                    classification task, softmax over the N classes
  softmax_hns / softmax_hnm  + human hard negatives as 1 / N extra classes (Table 2.3)
  triplet_naive              metric task: random triplets; anchors by k-means after training
  triplet_hn                 + only margin-violating negatives (§2.3.2)
  triplet_m                  + local positives, nearest 60% of the class (§2.3.3)
  triplet_a                  + anchors learned with eq 2.5, omega = 0.1 (§2.3.5)
  triplet_a_hn               + human hard negatives mixed 1:1 (§2.4.3)

The "human" hard negatives are simulated from the synthetic hierarchy (`data.hard_negatives:
simulated`: val images of a class proposed for a sibling class). Every method starts from the same
coarse pre-training (configs/metric_pretrain.yaml: the shape family of an independent rendering, a
stand-in for the seed's ImageNet pre-training), per seed. Results: mean ± std over seeds.

    python studies/metric_learning_study.py --output_dir studies/results --seeds 0,1,2
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see benchmarks/bench_triplet.py

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "studies/results", "where metric_learning.json / .png go")
flags.DEFINE_string("run_dir", "runs/studies/metric_learning", "where the training runs go")
flags.DEFINE_string("config_dir", "configs", "directory of the metric_*.yaml configs")
flags.DEFINE_list("methods", ["softmax", "triplet_naive", "triplet_hn", "triplet_m", "triplet_a",
                              "triplet_a_hn", "softmax_hns", "softmax_hnm"], "methods to run")
flags.DEFINE_list("seeds", ["0", "1", "2"], "training seeds (each with its own pre-training)")
flags.DEFINE_multi_string("set", [], "extra overrides for every method's config (e.g. train.steps=100)")
flags.DEFINE_multi_string("pretrain_set", [], "extra overrides for the pre-training config")
flags.DEFINE_bool("pretrain", True, "start every method from the coarse pre-training")

SEED_TABLE_2_1 = {"softmax": 65.1, "triplet_naive": 48.7, "triplet_hn": 64.6, "triplet_m": 65.9,
                  "triplet_a": 66.8}
SEED_TABLE_2_3 = {"softmax": 68.9, "softmax_hns": 70.3, "softmax_hnm": 70.8, "triplet_a": 70.2,
                  "triplet_a_hn": 73.7}


def train(config: str, overrides: list) -> dict:
    from finegrain_tf.train import loop
    from finegrain_tf.train.config import build_config

    result = loop.train(build_config([config], overrides))
    return result.report


def save_embeddings(model_dir: str, path: str) -> None:
    """Train/test embeddings of a run's model for studies/embedding_pca.py (Fig 2.9 stand-in)."""
    import keras

    from finegrain_tf.data import preprocessing
    from finegrain_tf.data.synthetic import generate_from_config
    from finegrain_tf.train.run_dir import RunDir

    run = RunDir(model_dir)
    model, cfg = run.load_model(), run.load_params()
    names = {layer.name for layer in model.layers}
    embed = keras.Model(model.input, model.get_layer(
        "embedding_l2" if "embedding_l2" in names else "embedding").output)
    data = generate_from_config(cfg.data.synthetic)

    def run_split(split):
        import tensorflow as tf
        ds = tf.data.Dataset.from_tensor_slices(data.images[split]).map(
            lambda x: preprocessing.preprocess_eval(x, cfg.data.image_size, cfg.data.resize_size))
        return np.concatenate([np.asarray(embed(x, training=False)) for x in ds.batch(256)])

    np.savez_compressed(path, train=run_split("train"), train_labels=data.labels["train"],
                        test=run_split("test"), test_labels=data.labels["test"],
                        superclass_of=data.superclass_of)


def main(argv):
    del argv
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    runs = {m: [] for m in FLAGS.methods}
    pretrain_top1 = []
    for seed in [int(s) for s in FLAGS.seeds]:
        common = [f"train.seed={seed}", f"data.seed={seed}", "train.plots=false"] + list(FLAGS.set)
        if FLAGS.pretrain:
            pre_dir = os.path.join(FLAGS.run_dir, f"seed{seed}", "pretrain")
            report = train(os.path.join(FLAGS.config_dir, "metric_pretrain.yaml"),
                           [f"train.seed={seed}", f"train.model_dir={pre_dir}", "train.plots=false"]
                           + list(FLAGS.pretrain_set))
            pretrain_top1.append(report["top1"])
            common.append(f"model.weights={os.path.join(pre_dir, 'backbone.weights.h5')}")
        for method in FLAGS.methods:
            t0 = time.time()
            report = train(os.path.join(FLAGS.config_dir, f"metric_{method}.yaml"),
                           common + [f"train.model_dir={os.path.join(FLAGS.run_dir, f'seed{seed}', method)}"])
            runs[method].append({"seed": seed, "top1": report["top1"], "seconds": round(time.time() - t0, 1),
                                 "steps": report["train_steps"]})
            if seed == int(FLAGS.seeds[0]):
                save_embeddings(os.path.join(FLAGS.run_dir, f"seed{seed}", method),
                                os.path.join(FLAGS.run_dir, f"embeddings_{method}.npz"))
            print(f"seed {seed} {method:14s} top-1 {100 * report['top1']:5.1f}%  ({time.time() - t0:.0f} s)",
                  flush=True)
    summary = {
        "protocol": "finegrain-train on configs/metric_*.yaml (synthetic, 16 classes, 32 px), each seed "
                    "with its own coarse pre-training (configs/metric_pretrain.yaml)",
        "overrides": list(FLAGS.set), "pretrain_top1": pretrain_top1,
        "results": {m: {"mean": float(np.mean([r["top1"] for r in rs])),
                        "std": float(np.std([r["top1"] for r in rs])), "runs": rs}
                    for m, rs in runs.items()},
        "seed_table_2_1": SEED_TABLE_2_1, "seed_table_2_3": SEED_TABLE_2_3}
    with open(os.path.join(FLAGS.output_dir, "metric_learning.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\nmethod          ours top-1 (%)    seed Table 2.1 / 2.3 (%)")
    for m in FLAGS.methods:
        r = summary["results"][m]
        seed_val = SEED_TABLE_2_1.get(m, SEED_TABLE_2_3.get(m, float("nan")))
        print(f"{m:14s}  {100 * r['mean']:6.1f} ± {100 * r['std']:4.1f}     {seed_val:6.1f}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib not installed: no PNG")
        return
    names = list(summary["results"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, [100 * summary["results"][n]["mean"] for n in names],
           yerr=[100 * summary["results"][n]["std"] for n in names], capsize=3, color="tab:blue")
    ax.set_ylabel(f"test top-1 (%), mean ± std over {len(FLAGS.seeds)} seeds")
    ax.set_title("Synthetic fine-grained set: seed 000 Table 2.1 / 2.3 methods (finegrain-train)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.output_dir, "metric_learning.png"), dpi=120)


if __name__ == "__main__":
    app.run(main)
