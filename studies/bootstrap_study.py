"""Dataset bootstrapping with a simulated labeler (seed 000 §2.2.2, §2.4.3) on the synthetic data.

Per seed: S_0 = a few train images of each of 12 classes; the pool = the rest of their train split plus
every train image of 4 distractor classes (one sibling per super-class, outside the N); k rounds of
`finegrain-bootstrap`'s loop (Triplet-A + human hard negatives 1:1, configs/bootstrap_synthetic.yaml),
the review queue answered by a simulated labeler with error rate `--error_rate`. Reported per round:

- |S_i| and its precision (fraction of S_i whose true class is the class it was added under),
- |H_i| and the human verdicts spent per image added to S,
- test top-1 (the N classes' test split) of the model trained on S_i ∪ H_i,

and two baselines at the end: the model trained on S_0 alone, and on S_0 plus the same number of
*randomly* chosen pool images as the rounds sent to review, labelled by the simulated labeler (an
N-way answer: the true class, a wrong one with probability `error_rate`; distractors are recognised
as none of the N and dropped, so the random baseline gets the same labelling budget). A third
control trains on S_k alone (without H_k) to separate what the hard negatives add.

    python studies/bootstrap_study.py --seeds 0,1,2 --output_dir studies/results
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "studies/results", "where bootstrap.json / bootstrap.png go")
flags.DEFINE_string("run_dir", "runs/studies/bootstrap", "work directories of the rounds")
flags.DEFINE_string("config", "configs/bootstrap_synthetic.yaml", "finegrain-train config of every model")
flags.DEFINE_multi_string("set", [], "extra finegrain-train overrides for every model")
flags.DEFINE_string("pretrain_config", "configs/metric_pretrain.yaml", "coarse pre-training every model starts from")
flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds (data rendering, pool split, training)")
flags.DEFINE_integer("rounds", 3, "bootstrapping rounds k")
flags.DEFINE_float("threshold", 0.5, "D_i: top confidence > threshold")
flags.DEFINE_bool("replot", False, "only redraw bootstrap.png from bootstrap.json")
flags.DEFINE_float("error_rate", 0.05, "simulated labeler's probability of a wrong verdict")


def train(manifest: str, hard_negatives: str, eval_manifest: str, model_dir: str, seed: int,
          extra: list) -> float:
    """Test top-1 of a model trained on `manifest` (+ hard negatives) with the rounds' recipe."""
    from finegrain_tf.bootstrap.rounds import data_overrides, default_train
    from finegrain_tf.train.run_dir import RunDir

    overrides = extra + list(FLAGS.set) + data_overrides(manifest, eval_manifest, hard_negatives) + [
        f"train.model_dir={model_dir}", f"train.seed={seed}"]
    if not RunDir(model_dir).exists(RunDir.eval_report_path):
        default_train([FLAGS.config], overrides)
    return float(RunDir(model_dir).load_eval_report()["top1"])


def random_baseline(setup, budget: int, error_rate: float, out: str, rng) -> tuple[str, int]:
    """S_0 plus `budget` random pool images with the simulated labeler's N-way labels."""
    from finegrain_tf.bootstrap.manifest import read_manifest, write_manifest

    paths, labels = read_manifest(setup.seed_manifest)
    pool_paths, _ = read_manifest(setup.pool_manifest)
    chosen = rng.choice(len(pool_paths), size=min(budget, len(pool_paths)), replace=False)
    added = 0
    for i in chosen:
        true = setup.truth[os.path.abspath(pool_paths[i])]
        if true not in setup.class_names:
            continue  # a distractor: "none of these classes"
        if rng.random() < error_rate:
            true = rng.choice([c for c in setup.class_names if c != true])
        paths.append(pool_paths[i])
        labels.append(str(true))
        added += 1
    return write_manifest(out, paths, labels), added


def precision(manifest: str, truth: dict, seed_size: int) -> float:
    """Fraction of the images added to S (beyond S_0) whose true class is their label."""
    from finegrain_tf.bootstrap.manifest import read_manifest

    paths, labels = read_manifest(manifest)
    added = list(zip(paths, labels))[seed_size:]
    return float(np.mean([truth[os.path.abspath(p)] == lab for p, lab in added])) if added else float("nan")


def run_seed(seed: int) -> dict:
    from finegrain_tf.bootstrap.rounds import Bootstrapper, BootstrapPlan
    from finegrain_tf.bootstrap.simulate import SimulatedLabeler, prepare_synthetic, pretrain_backbone

    work = os.path.join(FLAGS.run_dir, f"seed{seed}")
    setup = prepare_synthetic(os.path.join(work, "synthetic"), seed=seed)
    extra = [f"model.weights={pretrain_backbone(FLAGS.pretrain_config, os.path.join(work, 'pretrain'), seed)}"]
    plan = BootstrapPlan(work_dir=os.path.join(work, "rounds"), seed_manifest=setup.seed_manifest,
                         pool=setup.pool_manifest, train_configs=(FLAGS.config,),
                         train_overrides=tuple(extra + FLAGS.set), eval_manifest=setup.test_manifest,
                         rounds=FLAGS.rounds, threshold=FLAGS.threshold, seed=seed)
    boot = Bootstrapper(plan, progress=False)
    labeler = SimulatedLabeler(boot.store, setup.truth, FLAGS.error_rate, seed=seed,
                               name=f"simulated-{seed}-{time.time_ns()}")
    t0 = time.time()
    states = boot.run([labeler])
    if states[-1]["stage"] != "done":
        raise RuntimeError(f"seed {seed}: round {states[-1]['round']} did not finish")
    seconds = time.time() - t0
    seed_size = boot.state(0)["counts"]["dataset"]
    rounds = []
    for i, state in enumerate([boot.state(0)] + states):
        c = state["counts"]
        # The model trained on S_i ∪ H_i is round i+1's; after the last round, train one more.
        model_dir = os.path.join(boot.round_dir(i + 1), "model") if i < FLAGS.rounds else \
            os.path.join(work, "final_model")
        top1 = train(state["dataset_manifest"], state["hard_negatives"], setup.test_manifest, model_dir,
                     seed + i + 1, extra)
        reviewed = sum(s["counts"].get("proposed", 0) for s in states[:i])
        added = c["dataset"] - seed_size
        rounds.append({"round": i, "dataset": c["dataset"], "hard_negatives": c["hard_negatives"],
                       "added": added, "precision_added": precision(state["dataset_manifest"], setup.truth,
                                                                     seed_size),
                       "verdicts": reviewed, "verdicts_per_added": reviewed / added if added else None,
                       "test_top1": top1})
    last = states[-1]
    budget = rounds[-1]["verdicts"]
    rng = np.random.default_rng(seed)
    rnd_manifest, rnd_added = random_baseline(setup, budget, FLAGS.error_rate,
                                              os.path.join(work, "random_baseline.csv"), rng)
    final_seed = seed + FLAGS.rounds + 1  # the training seed of the final model on S_k ∪ H_k
    random_top1 = train(rnd_manifest, "", setup.test_manifest, os.path.join(work, "random_model"),
                        final_seed, extra)
    no_hn_top1 = train(last["dataset_manifest"], "", setup.test_manifest, os.path.join(work, "final_no_hn"),
                       final_seed, extra)
    return {"seed": seed, "rounds": rounds, "loop_seconds": round(seconds, 1),
            "s0_top1": rounds[0]["test_top1"], "final_top1": rounds[-1]["test_top1"],
            "final_without_hard_negatives_top1": no_hn_top1,
            "random_baseline": {"verdicts": budget, "added": rnd_added,
                                "precision_added": precision(rnd_manifest, setup.truth, seed_size),
                                "test_top1": random_top1},
            "pool": len(boot.pool), "distractors": sum(t not in setup.class_names for t in setup.truth.values())}


def main(argv):
    del argv
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    if FLAGS.replot:
        with open(os.path.join(FLAGS.output_dir, "bootstrap.json")) as f:
            plot(json.load(f)["per_seed"], os.path.join(FLAGS.output_dir, "bootstrap.png"))
        return
    results = []
    for s in FLAGS.seeds:
        r = run_seed(int(s))
        results.append(r)
        print(json.dumps({k: r[k] for k in ("seed", "s0_top1", "final_top1",
                                            "final_without_hard_negatives_top1", "loop_seconds")}), flush=True)
        for row in r["rounds"]:
            print("  ", row, flush=True)
        print("   random:", r["random_baseline"], flush=True)

    def stat(values):
        values = [v for v in values if v is not None and v == v]
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}

    summary = {
        "setup": "synthetic 32 px: 12 classes (3 per super-class) + 4 distractor classes; S_0 = 20 images per "
                 "class; pool = the other 40 train images per class + 60 per distractor; test = 20 per class; "
                 "every model starts from the coarse pre-training of --pretrain_config; "
                 f"{FLAGS.rounds} rounds, threshold {FLAGS.threshold}, labeler error rate {FLAGS.error_rate}",
        "config": FLAGS.config, "overrides": list(FLAGS.set),
        "per_seed": results,
        "summary": {
            "s0_top1": stat([r["s0_top1"] for r in results]),
            "final_top1": stat([r["final_top1"] for r in results]),
            "final_without_hard_negatives_top1": stat([r["final_without_hard_negatives_top1"] for r in results]),
            "random_same_budget_top1": stat([r["random_baseline"]["test_top1"] for r in results]),
            "precision_added": stat([r["rounds"][-1]["precision_added"] for r in results]),
            "random_precision_added": stat([r["random_baseline"]["precision_added"] for r in results]),
            "verdicts_per_added": stat([r["rounds"][-1]["verdicts_per_added"] for r in results]),
            "added": stat([r["rounds"][-1]["added"] for r in results]),
            "random_added": stat([r["random_baseline"]["added"] for r in results]),
        }}
    with open(os.path.join(FLAGS.output_dir, "bootstrap.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary["summary"], indent=1))
    plot(results, os.path.join(FLAGS.output_dir, "bootstrap.png"))


def plot(results: list, path: str) -> None:
    """Three panels: |S_i| and |H_i|, precision of the added images, test top-1 per round."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for r in results:
        xs = [row["round"] for row in r["rounds"]]
        axes[0].plot(xs, [row["dataset"] for row in r["rounds"]], "o-", label=f"|S_i| seed {r['seed']}")
        axes[0].plot(xs, [row["hard_negatives"] for row in r["rounds"]], "s--", label=f"|H_i| seed {r['seed']}")
        axes[1].plot(xs[1:], [row["precision_added"] for row in r["rounds"][1:]], "o-", label=f"seed {r['seed']}")
        axes[2].plot(xs, [100 * row["test_top1"] for row in r["rounds"]], "o-", label=f"S_i ∪ H_i, seed {r['seed']}")
        axes[2].axhline(100 * r["random_baseline"]["test_top1"], ls=":", color=axes[2].lines[-1].get_color())
    axes[0].set(xlabel="round i", ylabel="images", title="bootstrapped set and hard negatives")
    axes[1].set(xlabel="round i", ylabel="precision of added images", title="label precision of S_i \\ S_0",
                ylim=(0, 1.05))
    axes[2].set(xlabel="round i", ylabel="test top-1 (%)",
                title="trained on S_i ∪ H_i\n(dotted: S_0 + random, same budget)")
    for ax in axes:
        ax.legend(fontsize=6)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    app.run(main)
