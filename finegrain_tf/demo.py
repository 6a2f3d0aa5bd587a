"""`make demo`: the whole flow on the embedded synthetic dataset, offline, on CPU.

  data (long-tailed) -> stage 1: train a small CNN (configs/demo.yaml) -> stage 2: a kernel-pooling
  head on that backbone, initialised by logistic regression and fine-tuned with a class-balanced
  loss (configs/demo_kernel_finetune.yaml) -> evaluate (overall / head / tail) -> export for TF
  Serving -> reload through the TF1 session loader (TF Serving's path) and classify held-out JPEGs
  -> serve over gRPC with the dev server and look up nearest gallery images by embedding.

  python -m finegrain_tf.demo --workdir runs/demo [--config ...] [--finetune_config ...] [--set k=v]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Output folder (wiped at start).")
flags.DEFINE_multi_string("config", ["configs/demo.yaml"], "Experiment config(s).")
flags.DEFINE_multi_string("finetune_config", ["configs/demo_kernel_finetune.yaml"],
                          "Stage-2 config(s), applied on top of --config; empty to skip stage 2.")
flags.DEFINE_multi_string("set", [], "Config overrides `section.key=value` (both stages).")
flags.DEFINE_integer("show", 8, "Held-out images to classify in the printed tables.")
flags.DEFINE_bool("bootstrap", True, "Run one dataset-bootstrapping round with a simulated labeler.")
flags.DEFINE_multi_string("bootstrap_args", ["--pretrain_set=train.steps=300", "--set=train.steps=150"],
                          "Extra finegrain-bootstrap flags for that round (CPU-sized by default).")


def _section(title: str, started: float) -> None:
    print(f"\n=== {title}  [t={time.time() - started:5.1f}s]", flush=True)


def _compare_reports(reports: dict) -> str:
    keys = ("top1", "top5", "balanced_accuracy", "head_accuracy", "tail_accuracy")
    lines = [f"{'metric':<20}" + "".join(f"{name:>10}" for name in reports)]
    for key in keys:
        cells = [r.get(key) for r in reports.values()]
        lines.append(f"{key:<20}" + "".join(f"{c:>10.3f}" if c is not None else f"{'-':>10}"
                                            for c in cells))
    return "\n".join(lines)


def _class_of(path: str) -> str:
    return os.path.basename(os.path.dirname(path))


def _bootstrap_round(work_dir: str) -> None:
    """One round in its own process, as a user runs it: coarse pre-training, train on S_0, score the
    pool, queue the confident proposals in a SQLite label store, let a simulated labeler (5 % errors)
    answer them, then write S_1 (a manifest for finegrain-train) and H_1 (hard negatives)."""
    command = [sys.executable, "-m", "finegrain_tf.bootstrap.main", "--simulate", f"--work_dir={work_dir}",
               "--rounds=1", "--error_rate=0.05", "--noprogress", "--verbosity=-1", *FLAGS.bootstrap_args]
    print("$ finegrain-bootstrap " + " ".join(command[3:]), flush=True)
    subprocess.run(command, check=True)


def main(argv):
    del argv
    # Heavy imports after flag parsing so `--help` is instant.
    from finegrain_tf.data import synthetic
    from finegrain_tf.serving import Client, SessionServable, export_from_model_dir, start_server_process
    from finegrain_tf.serving import load_model_dir, verify_export
    from finegrain_tf.train import config, loop
    from finegrain_tf.train.run_dir import RunDir

    logging.set_verbosity(logging.WARNING)  # the demo prints its own summary of each stage
    started = time.time()
    if os.path.exists(FLAGS.workdir):
        shutil.rmtree(FLAGS.workdir)
    stage1_dir = os.path.join(FLAGS.workdir, "stage1")
    cfg = config.build_config(FLAGS.config, list(FLAGS.set) + [f"train.model_dir={stage1_dir}"])
    finetune = [c for c in FLAGS.finetune_config if c]

    _section("1/6 data: embedded synthetic fine-grained dataset", started)
    data = synthetic.generate_from_config(cfg.data.synthetic)
    images_dir = synthetic.write_image_folder(data, os.path.join(FLAGS.workdir, "images"),
                                              splits=("train", "test"))
    print(f"{data.num_classes} classes in {len(data.superclass_names)} super-classes, "
          f"e.g. {', '.join(data.class_names[:3])}")
    print("images per split: " + ", ".join(f"{s}={len(v)}" for s, v in data.labels.items()))

    _section(f"2/6 train: stage 1 ({cfg.train.steps} steps)"
             + (" + stage 2 (fine-tune)" if finetune else ""), started)
    runs = [("stage 1", cfg)]
    if finetune:
        model_dir = os.path.join(FLAGS.workdir, "stage2")
        cfg2 = config.build_config(
            FLAGS.config + finetune,
            list(FLAGS.set) + [f"train.model_dir={model_dir}",
                               f"model.weights={RunDir(stage1_dir).backbone_weights_path}"])
        runs.append(("stage 2", cfg2))
    else:
        model_dir = stage1_dir
    reports = {}
    for name, run_cfg in runs:
        print(f"\n{name}: {run_cfg.model.backbone} + {run_cfg.model.pooling} pooling, loss "
              f"{run_cfg.loss.name}"
              + (f" (beta={run_cfg.loss.beta:g})" if run_cfg.loss.name == "class_balanced" else "")
              + (", classifier initialised by logistic regression" if run_cfg.model.logistic_init
                 else "")
              + f", {run_cfg.train.steps} steps of {run_cfg.data.batch_size}")
        result = loop.train(run_cfg)
        reports[name] = result.report
        print(f"{name} trained in {result.seconds:.1f}s")
    if cfg.data.imbalance_factor > 1:
        counts = RunDir(stage1_dir).load_class_counts()
        print(f"\ntrain split made long-tailed (imbalance factor {cfg.data.imbalance_factor:g}): "
              f"{max(counts)} images in the largest class, {min(counts)} in the smallest; "
              f"head = classes with >= {cfg.train.many_threshold} images")
    print(f"\ntest split ({result.report['num_examples']} images, balanced):")
    print(_compare_reports(reports))

    _section("3/6 export: SavedModel for TF Serving (classify, embed, lookup)", started)
    gallery = os.path.join(images_dir, "train")
    base_path = os.path.join(FLAGS.workdir, "serving")
    export_dir = export_from_model_dir(model_dir, base_path, gallery=gallery)
    model, _, _ = load_model_dir(model_dir)
    test_files = sorted(
        os.path.join(root, f) for root, _, files in os.walk(os.path.join(images_dir, "test"))
        for f in files)
    rng = np.random.default_rng(0)
    shown = [test_files[i] for i in rng.choice(len(test_files), FLAGS.show, replace=False)]
    encoded = [open(p, "rb").read() for p in shown]
    diffs = verify_export(export_dir, model, images=encoded)
    print(f"exported to {export_dir}")
    print("session-loader outputs vs in-memory Keras model, max |diff| per signature: "
          + ", ".join(f"{k}={v:.2g}" for k, v in diffs.items()))

    _section("4/6 classify held-out JPEGs through the TF1 session loader (TF Serving's path)",
             started)
    servable = SessionServable(export_dir)
    out = servable.run("serving_default", {"images": np.array(encoded, dtype=object)})
    servable.close()
    print(f"{'image':<40}{'true class':<26}{'predicted':<26}{'score':>6}")
    for path, names, scores in zip(shown, out["class_names"], out["scores"]):
        name = names[0].decode() if isinstance(names[0], bytes) else str(names[0])
        mark = "ok" if name == _class_of(path) else "x"
        print(f"{os.path.relpath(path, images_dir):<40}{_class_of(path):<26}{name:<26}"
              f"{scores[0]:>6.2f} {mark}")

    _section("5/6 serve over gRPC (dev server, TF Serving protocol): classify + embedding lookup",
             started)
    model_name = cfg.export.model_name
    with start_server_process(os.path.join(base_path, model_name), model_name) as server:
        with Client(server.target, model_name) as client:
            remote = client.classify(encoded)
            same = np.array_equal(np.asarray(remote["classes"]), np.asarray(out["classes"]))
            print(f"server {server.target}: gRPC classify == session loader: {same}")
            found = client.lookup(encoded, k=5)
    hits = []
    print(f"{'query':<40}{'5 nearest gallery images (class match)'}")
    for path, ids in zip(shown, found["ids"]):
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        matches = [_class_of(i) == _class_of(path) for i in ids]
        hits.append(np.mean(matches))
        print(f"{os.path.relpath(path, images_dir):<40}"
              + " ".join("+" if m else "." for m in matches))
    print(f"embedding lookup precision@5 over the shown queries: {np.mean(hits):.2f}")

    if FLAGS.bootstrap:
        _section("6/6 bootstrap: one round of seed 000 §2.2 with a simulated labeler "
                 "(finegrain-bootstrap --simulate)", started)
        _bootstrap_round(os.path.join(FLAGS.workdir, "bootstrap"))

    total = time.time() - started
    print(f"\ndemo finished in {total:.0f}s: top-1 {result.report['top1']:.3f}, "
          f"top-5 {result.report['top5']:.3f}, balanced {result.report['balanced_accuracy']:.3f} "
          f"(chance {1 / data.num_classes:.3f}); outputs in {FLAGS.workdir}")


if __name__ == "__main__":
    app.run(main)
