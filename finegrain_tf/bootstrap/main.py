"""`finegrain-bootstrap`: grow a fine-grained dataset in rounds with humans in the loop (seed 000 §2.2).

    finegrain-bootstrap --work_dir=runs/boot --seed_manifest=seed.csv --pool=pool_images/ \\
        --config=configs/bootstrap_synthetic.yaml --rounds=3 [--wait_seconds=3600]

Each round trains on S_{i-1} ∪ H_{i-1}, scores its share of the pool, queues the confident proposals in
the label store (review them with `finegrain-review serve --db <store>`), and once every verdict is in
writes S_i (a path,label manifest for `finegrain-train`) and H_i (a hard-negatives file). Rerun the
same command to continue after a stop; the round directories hold the state.

Scoring a large pool on several machines: run the same command with --num_shards=N --shard_index=k
on each; the round continues on whichever run finds every shard scored.

Offline, with a simulated labeler answering from the pool's ground truth (its `label` column):

    finegrain-bootstrap --simulate --work_dir=runs/boot_sim [--error_rate=0.05]

(without --seed_manifest/--pool this renders the synthetic dataset first -- S_0, a pool with distractor
classes and a test manifest -- and trains a coarse pre-training that every round starts from).
"""

import os
import sys
import uuid

from absl import app, flags

from finegrain_tf.utils import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", None, "Folder of the rounds' state (created; rerun to resume).")
flags.DEFINE_string("seed_manifest", None, "S_0: CSV/JSONL manifest of path,label.")
flags.DEFINE_string("pool", None, "Candidate pool: an image folder or a CSV/JSONL manifest (path[,id][,label]).")
flags.DEFINE_string("image_root", "", "Root folder for pool manifests that list ids instead of paths.")
flags.DEFINE_string("eval_manifest", "", "Test images (path,label) each round's model is evaluated on.")
flags.DEFINE_multi_string("config", [], "finegrain-train YAML config(s) for each round's model.")
flags.DEFINE_multi_string("set", [], "finegrain-train override(s) `section.key=value` for each round.")
flags.DEFINE_integer("rounds", 3, "Number of rounds k (the pool is split into C_1..C_k).")
flags.DEFINE_float("threshold", 0.5, "Keep candidates whose top confidence exceeds this (seed: 0.5).")
flags.DEFINE_string("coarse_run_dir", "", "Optional coarse-category classifier run (finegrain-train).")
flags.DEFINE_list("coarse_classes", [], "Its classes that count as the coarse category (default: all).")
flags.DEFINE_float("coarse_threshold", 0.5, "Coarse filter: keep confidence > this.")
flags.DEFINE_string("store", "", "Label store URL (default sqlite:///<work_dir>/labels.db; or postgresql://...).")
flags.DEFINE_integer("judgements", 1, "Labelers asked per item (majority verdict).")
flags.DEFINE_integer("exemplars", 4, "Exemplar images per class shown on review cards.")
flags.DEFINE_string("class_definitions", "", "CSV/JSONL with class,definition columns for review cards.")
flags.DEFINE_float("wait_seconds", 0.0, "How long to wait for human verdicts before stopping (rerun to resume).")
flags.DEFINE_float("poll_seconds", 10.0, "Interval between two checks of the label store while waiting.")
flags.DEFINE_integer("shard_index", 0, "Scoring shard of this process.")
flags.DEFINE_integer("num_shards", 1, "Scoring shards over all processes.")
flags.DEFINE_integer("score_batch_size", 64, "Images per scoring batch.")
flags.DEFINE_integer("chunk_size", 1024, "Images per committed scoring chunk (the resume granularity).")
flags.DEFINE_integer("seed", 0, "Seed of the pool split and the rounds' training.")
flags.DEFINE_bool("simulate", False, "Answer the review queue with simulated labelers from the pool's labels.")
flags.DEFINE_float("error_rate", 0.0, "Simulated labelers: probability of a wrong verdict.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_multi_string("pretrain_set", [], "--simulate: finegrain-train override(s) for the coarse "
                          "pre-training (e.g. train.steps=150 for a quick demo).")

SIMULATION_CONFIG = os.path.join("configs", "bootstrap_synthetic.yaml")
PRETRAIN_CONFIG = os.path.join("configs", "metric_pretrain.yaml")


def _simulation_inputs(work_dir):
    """Seed/pool/eval manifests, configs and extra overrides for --simulate when the user gave none:
    the synthetic setup, and a coarse pre-training (configs/metric_pretrain.yaml, the stand-in for
    ImageNet weights) whose backbone every round starts from."""
    from finegrain_tf.bootstrap.simulate import prepare_synthetic, pretrain_backbone

    if FLAGS.seed_manifest or FLAGS.pool:
        return FLAGS.seed_manifest, FLAGS.pool, FLAGS.eval_manifest, FLAGS.config, []
    for path in ([] if FLAGS.config else [SIMULATION_CONFIG]) + [PRETRAIN_CONFIG]:
        if not os.path.exists(path):
            raise app.UsageError(f"--simulate needs {path} (run from the repository root) or --config")
    setup = prepare_synthetic(os.path.join(work_dir, "synthetic"), seed=FLAGS.seed)
    weights = pretrain_backbone(PRETRAIN_CONFIG, os.path.join(work_dir, "pretrain"), FLAGS.seed,
                                FLAGS.pretrain_set)
    return (setup.seed_manifest, setup.pool_manifest, FLAGS.eval_manifest or setup.test_manifest,
            FLAGS.config or [SIMULATION_CONFIG], [f"model.weights={weights}"])


def _labelers(store, pool):
    from finegrain_tf.bootstrap.simulate import SimulatedLabeler

    if pool.labels is None:
        raise app.UsageError("--simulate needs the pool's ground truth: a manifest with a label column")
    truth = dict(zip(pool.ids, pool.labels))
    run = uuid.uuid4().hex[:8]  # labeler names are unique in a store; a resumed run adds new ones
    return [SimulatedLabeler(store, truth, FLAGS.error_rate, seed=FLAGS.seed + j,
                             name=f"simulated-{run}-{j}") for j in range(FLAGS.judgements)]


def format_rounds(states) -> str:
    keys = ("dataset", "hard_negatives", "candidates", "after_coarse_filter", "proposed", "yes", "no",
            "unreadable")
    lines = ["round  stage    " + "  ".join(f"{k:>14s}" for k in keys)]
    for s in states:
        counts = s.get("counts", {})
        lines.append(f"{s['round']:5d}  {str(s['stage']):7s}  " +
                     "  ".join(f"{counts.get(k, ''):>14}" for k in keys))
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.work_dir:
        raise app.UsageError("--work_dir is required")
    from finegrain_tf.bootstrap.rounds import Bootstrapper, BootstrapPlan

    try:
        seed, pool, eval_manifest, configs, extra = (
            _simulation_inputs(FLAGS.work_dir) if FLAGS.simulate else
            (FLAGS.seed_manifest, FLAGS.pool, FLAGS.eval_manifest, FLAGS.config, []))
        if not seed or not pool:
            raise app.UsageError("--seed_manifest and --pool are required (or --simulate)")
        plan = BootstrapPlan(work_dir=FLAGS.work_dir, seed_manifest=seed, pool=pool,
                             train_configs=tuple(configs), train_overrides=tuple(extra + FLAGS.set),
                             eval_manifest=eval_manifest, rounds=FLAGS.rounds, threshold=FLAGS.threshold,
                             coarse_run_dir=FLAGS.coarse_run_dir,
                             coarse_classes=tuple(FLAGS.coarse_classes),
                             coarse_threshold=FLAGS.coarse_threshold, store_url=FLAGS.store,
                             judgements=FLAGS.judgements, exemplars=FLAGS.exemplars,
                             class_definitions=FLAGS.class_definitions, image_root=FLAGS.image_root,
                             score_batch_size=FLAGS.score_batch_size, chunk_size=FLAGS.chunk_size,
                             seed=FLAGS.seed)
        boot = Bootstrapper(plan, progress=FLAGS.progress)
        labelers = _labelers(boot.store, boot.pool) if FLAGS.simulate else ()
        states = boot.run(labelers, wait_seconds=FLAGS.wait_seconds, poll_seconds=FLAGS.poll_seconds,
                          shard_index=FLAGS.shard_index, num_shards=FLAGS.num_shards)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print(format_rounds([boot.state(0)] + states))
    last = states[-1] if states else boot.state(0)
    if last["stage"] == "done":
        print(f"dataset manifest: {last['dataset_manifest']}\nhard negatives:   {last['hard_negatives']}")
    else:
        print(f"round {last['round']} stopped at stage {last['stage']!r}; rerun the same command to continue",
              file=sys.stderr)


def run():
    cli.run(main, __name__)  # --help lists this module's flags and exits 0


if __name__ == "__main__":
    run()
