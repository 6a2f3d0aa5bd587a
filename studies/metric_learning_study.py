"""CPU-scale reproduction of seed 000 Tables 2.1 / 2.3 on the synthetic fine-grained dataset.

Methods (seed 000 §2.4.1, §2.4.3):
  Softmax        CNN + softmax over the N classes.
  Triplet-Naive  eq 2.1 on randomly sampled triplets (positive anywhere in the class, random negative).
  Triplet-HN     + only negatives that violate the margin (§2.3.2).
  Triplet-M      + positives from the nearest 60% of the class (local positives, §2.3.3).
  Triplet-A      + anchor points learned jointly, eq 2.5 with omega = 0.1 (§2.3.5).
  Triplet-A+HN   + human hard negatives mixed 1:1 with class negatives (§2.4.3).
  Softmax+HNS / Softmax+HNM  softmax with one / N extra hard-negative classes (Table 2.3).

All methods fine-tune the same small CNN, pre-trained on super-class labels of an independent rendering
(a stand-in for the seed's ImageNet pre-training), with frozen batch-norm statistics. Triplet methods
use the quasi-online sampler (refresh every `--refresh_every` steps) and classify by
anchor soft voting (eq 2.3, K = 3, gamma = 5; k-means anchors except Triplet-A*, which use the learned
anchors). Human hard negatives are simulated from the synthetic hierarchy: the val images of each
class are "proposed" for a sibling class of the same super-class (false positives a labeller would
reject). Shared settings come from configs/metric_*.yaml; the sampler settings that the experiment
config has no keys for (positive_fraction, negatives mode, human negatives, anchors) live in METHODS.

    python studies/metric_learning_study.py --output_dir runs/studies/metric_learning
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see benchmarks/bench_triplet.py

import numpy as np  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from finegrain_tf.data.synthetic import generate  # noqa: E402
from finegrain_tf.layers.anchor_soft_vote import AnchorSoftVote, kmeans_anchors  # noqa: E402
from finegrain_tf.losses.anchor_vote import anchor_vote_loss  # noqa: E402
from finegrain_tf.losses.hard_negative import merge_with_hard_negatives, num_outputs  # noqa: E402
from finegrain_tf.losses.metric import triplet_margin_loss  # noqa: E402
from finegrain_tf.metrics.retrieval import recall_at_k, soft_vote_accuracy  # noqa: E402
from finegrain_tf.models.embedding import build_embedding_model  # noqa: E402
from finegrain_tf.sampling.triplets import QuasiOnlineTripletSampler  # noqa: E402
from finegrain_tf.train.config import build_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/studies/metric_learning", "where results.json / PNG go")
flags.DEFINE_string("config_dir", "configs", "directory of the metric_*.yaml configs")
flags.DEFINE_list("methods", ["softmax", "triplet_naive", "triplet_hn", "triplet_m", "triplet_a",
                              "triplet_a_hn", "softmax_hns", "softmax_hnm"], "methods to run")
flags.DEFINE_integer("steps", 0, "override train.steps of every config (0 = keep)")
flags.DEFINE_integer("refresh_every", 25, "quasi-online refresh period in steps (seed: 1000)")
flags.DEFINE_integer("width", 16, "width of the study's small CNN backbone")
flags.DEFINE_integer("anchors_per_class", 3, "K of eq 2.3")
flags.DEFINE_float("gamma", 5.0, "gamma of eq 2.3")
flags.DEFINE_integer("pretrain_steps", 300, "steps of the shared super-class pre-training (0 = none)")

# Settings with no key in the experiment config (see the module docstring).
METHODS = {
    "softmax": dict(kind="softmax", hn=None),
    "softmax_hns": dict(kind="softmax", hn="hns"),
    "softmax_hnm": dict(kind="softmax", hn="hnm"),
    "triplet_naive": dict(kind="triplet", positive_fraction=1.0, negatives="random", anchors=False,
                          human=False),
    "triplet_hn": dict(kind="triplet", positive_fraction=1.0, negatives="violating", anchors=False,
                       human=False),
    "triplet_m": dict(kind="triplet", positive_fraction=0.6, negatives="violating", anchors=False,
                      human=False),
    "triplet_a": dict(kind="triplet", positive_fraction=0.6, negatives="violating", anchors=True,
                      human=False),
    "triplet_a_hn": dict(kind="triplet", positive_fraction=0.6, negatives="violating", anchors=True,
                         human=True),
}
SEED_TABLE_2_1 = {"softmax": 65.1, "triplet_naive": 48.7, "triplet_hn": 64.6, "triplet_m": 65.9,
                  "triplet_a": 66.8}
SEED_TABLE_2_3 = {"softmax": 68.9, "softmax_hns": 70.3, "softmax_hnm": 70.8, "triplet_a": 70.2,
                  "triplet_a_hn": 73.7}


PRETRAINED = {}


def backbone(size: int, width: int, seed: int) -> keras.Model:
    """Three conv-BN-ReLU stages: a few MFLOPs per 32x32 image (CPU-scale); starts from the shared
    pre-trained weights when there are some."""
    model = _backbone(size, width, seed)
    if "weights" in PRETRAINED:
        model.set_weights(PRETRAINED["weights"])
    return model


def pretrain(cfg, steps: int, seed: int):
    """Stand-in for the seed's ImageNet pre-training (§2.4.1): softmax on the *super-class* labels of
    an independent rendering of the data (other image seeds), so no fine label is ever seen."""
    s = cfg.data.synthetic
    extra = generate(s.num_classes, s.num_superclasses, s.train_per_class, 0, 0, s.image_size, s.seed + 1)
    x, y = extra.images["train"], extra.superclass_of[extra.labels["train"]]
    trunk = _backbone(cfg.data.image_size, FLAGS.width, seed)
    inp = keras.Input(trunk.input_shape[1:])
    logits = keras.layers.Dense(s.num_superclasses)(keras.layers.GlobalAveragePooling2D()(trunk(inp)))
    model = keras.Model(inp, logits)
    opt = keras.optimizers.Adam(cfg.optimizer.learning_rate)
    rng = np.random.default_rng(seed + 1)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, model(xb, training=True)))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for _ in range(steps):
        idx = rng.integers(0, len(x), cfg.data.batch_size)
        loss = step(tf.constant(x[idx], tf.float32), tf.constant(y[idx]))
    PRETRAINED["weights"] = trunk.get_weights()
    return float(loss)


def _backbone(size: int, width: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, -1.0)(inp)
    for i, f in enumerate((width, 2 * width, 4 * width)):
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        if i < 2:
            x = keras.layers.MaxPooling2D()(x)
    return keras.Model(inp, x)


def simulated_hard_negatives(data, rng):
    """Val images of class s proposed for a random sibling class c != s of the same super-class."""
    sup = data.superclass_of
    imgs, proposed = [], []
    for img, s in zip(data.images["val"], data.labels["val"]):
        siblings = np.flatnonzero((sup == sup[s]) & (np.arange(len(sup)) != s))
        if len(siblings):
            imgs.append(img)
            proposed.append(int(rng.choice(siblings)))
    return np.stack(imgs), np.asarray(proposed, np.int64)


def embed_all(model, images, batch=256):
    return np.concatenate([model(tf.constant(images[i:i + batch], tf.float32), training=False).numpy()
                           for i in range(0, len(images), batch)])


def run_softmax(cfg, spec, data, hn, seed):
    n_cls = data.num_classes
    x_train, y_train = data.images["train"], data.labels["train"]
    if spec["hn"]:
        y_train, _ = merge_with_hard_negatives(y_train, hn[1], n_cls, spec["hn"])
        x_train = np.concatenate([x_train, hn[0]])
    outputs = num_outputs(n_cls, spec["hn"]) if spec["hn"] else n_cls
    trunk = backbone(cfg.data.image_size, FLAGS.width, seed)
    inp = keras.Input(trunk.input_shape[1:])
    feat = keras.layers.GlobalAveragePooling2D()(trunk(inp))
    model = keras.Model(inp, keras.layers.Dense(outputs)(feat))
    opt = keras.optimizers.Adam(cfg.optimizer.learning_rate)
    rng = np.random.default_rng(seed)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=False)  # frozen BN statistics, as for the triplet models
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for _ in range(cfg.train.steps):
        idx = rng.integers(0, len(x_train), cfg.data.batch_size)
        loss = step(tf.constant(x_train[idx], tf.float32), tf.constant(y_train[idx]))
    logits = embed_all(model, data.images["test"])[:, :n_cls]  # only the real classes count
    acc = float(np.mean(logits.argmax(1) == data.labels["test"]))
    return {"accuracy": acc, "final_loss": float(loss), "feature_dim": outputs}


def run_triplet(cfg, spec, data, hn, seed):
    n_cls = data.num_classes
    margin, omega = cfg.loss.margin, cfg.loss.triplet_weight
    x_train, y_train = data.images["train"], data.labels["train"]
    pool = np.concatenate([x_train, hn[0]]) if spec["human"] else x_train
    emb_model = build_embedding_model(backbone(cfg.data.image_size, FLAGS.width, seed),
                                      embedding_dim=cfg.model.embedding_dim, batch_norm=True)
    # Data-dependent init of the projection's batch norm, then train with frozen BN statistics (the
    # usual fine-tuning practice): the sampler's embeddings then match the trained ones, and the
    # initial embeddings are spread over the sphere instead of collapsed along the mean feature.
    proj = keras.Model(emb_model.input, emb_model.get_layer("projection").output)
    z = embed_all(proj, x_train)
    bn = emb_model.get_layer("projection_bn")
    bn.moving_mean.assign(z.mean(0))
    bn.moving_variance.assign(z.var(0))
    vote = AnchorSoftVote(n_cls, FLAGS.anchors_per_class, FLAGS.gamma, output_mode="log_probabilities")
    vote.build((None, cfg.model.embedding_dim))
    variables = emb_model.trainable_variables + ([vote.anchors] if spec["anchors"] else [])
    opt = keras.optimizers.Adam(cfg.optimizer.learning_rate)
    n_trip = cfg.data.batch_size // 3
    sampler = QuasiOnlineTripletSampler(
            y_train, positive_fraction=spec["positive_fraction"], margin=margin,
            negatives=spec["negatives"], batch_size=n_trip, refresh_every=FLAGS.refresh_every,
            hard_negative_classes=hn[1] if spec["human"] else None, seed=seed)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            e = emb_model(x, training=False)
            trip = tf.transpose(tf.reshape(e, [3, -1, e.shape[-1]]), [1, 0, 2])  # [B, 3, D]
            loss = tf.reduce_mean(triplet_margin_loss(trip, margin))
            if spec["anchors"]:  # eq 2.5 on the reference images
                cls = tf.reduce_mean(anchor_vote_loss(y, vote(trip[:, 0])))
                loss = omega * loss + (1.0 - omega) * cls
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    first = [True]
    stats = {"violating_triplets": []}

    def embed_fn():
        e = embed_all(emb_model, pool)
        if spec["anchors"] and first[0]:  # initialise the anchors by k-means (§2.3.4), then learn them
            vote.set_anchors(kmeans_anchors(e[:len(y_train)], y_train, FLAGS.anchors_per_class, n_cls))
            first[0] = False
        return (e[:len(y_train)], e[len(y_train):]) if spec["human"] else e[:len(y_train)]

    loss = float("nan")
    for batch in sampler.run(embed_fn, cfg.train.steps):
        if len(stats["violating_triplets"]) < sampler.rounds:
            stats["violating_triplets"].append(int((~sampler.triplets.human).sum()))
        x = pool[np.concatenate([batch[:, 0], batch[:, 1], batch[:, 2]])]
        loss = float(step(tf.constant(x, tf.float32), tf.constant(y_train[batch[:, 0]])))
    e_train = embed_all(emb_model, x_train)
    e_test = embed_all(emb_model, data.images["test"])
    km = kmeans_anchors(e_train, y_train, FLAGS.anchors_per_class, n_cls, seed=seed)
    out = {"accuracy_kmeans_anchors": soft_vote_accuracy(e_test, data.labels["test"], km, FLAGS.gamma),
           "recall_at_1": recall_at_k(e_test, data.labels["test"], ks=(1,))[1],
           "final_loss": loss, "feature_dim": cfg.model.embedding_dim, **stats}
    if spec["anchors"]:
        out["accuracy"] = soft_vote_accuracy(e_test, data.labels["test"], vote.anchors.numpy(), FLAGS.gamma)
    else:
        out["accuracy"] = out["accuracy_kmeans_anchors"]
    np.savez_compressed(os.path.join(FLAGS.output_dir, f"embeddings_{spec['name']}.npz"),
                        train=e_train, train_labels=y_train, test=e_test, test_labels=data.labels["test"],
                        superclass_of=data.superclass_of)
    return out


def main(argv):
    del argv
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    results = {}
    data = None
    for name in FLAGS.methods:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
        path = os.path.join(FLAGS.config_dir, f"metric_{name}.yaml")
        overrides = [f"train.steps={FLAGS.steps}"] if FLAGS.steps else []
        cfg = build_config([path], overrides)
        s = cfg.data.synthetic
        if data is None:
            data = generate(s.num_classes, s.num_superclasses, s.train_per_class, s.val_per_class,
                            s.test_per_class, s.image_size, s.seed)
            hn = simulated_hard_negatives(data, np.random.default_rng(s.seed))
            if FLAGS.pretrain_steps:
                t0 = time.time()
                pre_loss = pretrain(cfg, FLAGS.pretrain_steps, cfg.train.seed)
                print(f"super-class pre-training: {FLAGS.pretrain_steps} steps, final loss {pre_loss:.3f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
        spec = dict(METHODS[name], name=name)
        t0 = time.time()
        keras.utils.set_random_seed(cfg.train.seed)
        run = run_softmax if spec["kind"] == "softmax" else run_triplet
        results[name] = run(cfg, spec, data, hn, cfg.train.seed)
        results[name]["seconds"] = round(time.time() - t0, 1)
        results[name]["steps"] = cfg.train.steps
        logging.info("%s: %s", name, results[name])
        print(f"{name:14s} accuracy {100 * results[name]['accuracy']:5.1f}%  "
              f"({results[name]['seconds']:.0f} s)", flush=True)
    summary = {"dataset": {"classes": data.num_classes, "train": len(data.labels["train"]),
                           "test": len(data.labels["test"]), "human_hard_negatives": len(hn[1])},
               "pretrain_steps": FLAGS.pretrain_steps, "refresh_every": FLAGS.refresh_every,
               "results": results, "seed_table_2_1": SEED_TABLE_2_1, "seed_table_2_3": SEED_TABLE_2_3}
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\nmethod          ours (%)   seed Table 2.1 / 2.3 (%)")
    for name in FLAGS.methods:
        seed_val = SEED_TABLE_2_1.get(name, SEED_TABLE_2_3.get(name, float("nan")))
        print(f"{name:14s}  {100 * results[name]['accuracy']:7.1f}   {seed_val:6.1f}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = list(results)
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(names, [100 * results[n]["accuracy"] for n in names], color="tab:blue")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Synthetic fine-grained set: seed 000 Table 2.1 / 2.3 methods")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        fig.tight_layout()
        fig.savefig(os.path.join(FLAGS.output_dir, "accuracy.png"), dpi=120)
    except ImportError:
        logging.warning("matplotlib not installed: no PNG")


if __name__ == "__main__":
    app.run(main)
