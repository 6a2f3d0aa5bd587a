"""Worker processes for the studies that train many small runs, one TF thread each.

On the 2-core machine two one-thread processes train about 1.2x as many steps per second as one
two-thread process (measured on the metric study's runs). A study script starts copies of itself with
its own `--worker_jobs=<job>,<job>,...` flag (`run`); each copy calls `one_thread`, trains its share
and leaves its results in <out_dir>/jobs_<tag>_<pid>.json (`save`), which `run` gathers.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import subprocess
import sys


def run(script: str, jobs: list, workers: int, out_dir: str, tag: str, args: list) -> tuple[list, float]:
    """`jobs` shared round-robin by `workers` copies of `script` (`--worker_jobs=...` plus `args`);
    (every worker's results, their CPU seconds). A failed worker stops the study."""
    os.makedirs(out_dir, exist_ok=True)
    for old in glob.glob(os.path.join(out_dir, f"jobs_{tag}_*.json")):
        os.remove(old)
    procs = [subprocess.Popen([sys.executable, os.path.abspath(script), f"--worker_jobs={','.join(part)}", *args])
             for part in (jobs[i::workers] for i in range(workers)) if part]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("a worker failed (its log is above)")
    runs, cpu = [], 0.0
    for part in glob.glob(os.path.join(out_dir, f"jobs_{tag}_*.json")):
        with open(part) as f:
            done = json.load(f)
        runs += done["runs"]
        cpu += done["cpu_seconds"]
    return runs, cpu


def one_thread() -> None:
    """One TF thread in this process (call before any TF op)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def save(out_dir: str, tag: str, runs: list) -> None:
    """A worker's results and CPU seconds, for `run` to gather."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.path.join(out_dir, f"jobs_{tag}_{os.getpid()}.json"), "w") as f:
        json.dump({"runs": runs, "cpu_seconds": usage.ru_utime + usage.ru_stime}, f)
