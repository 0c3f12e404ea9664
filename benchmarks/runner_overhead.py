"""Runner overhead: 20 one-epoch runs on the real BreastMNIST, time inside the runs vs. total wall time.

    .venv/bin/python benchmarks/runner_overhead.py [--data-root ../shared/data/medmnist] [--jobs 1] [--runs 20]

Two measurements of the same grid (half baseline, half R-LLM with the packaged MiniLM layer, one seed
each, ViT-tiny at 28x28, batch 64):

  in-process   `run.run_all` called from Python, imports done: what the runner itself adds (grid
               bookkeeping, preflight, data/LLM loading, model building, store writes, logs, progress).
  end-to-end   `bench run` as a subprocess: the above plus interpreter start and imports.

"Run time" is the sum over runs of `fit_s` (time inside `train.fit`: training epochs, val each epoch and
the test pass); `train_s` (the training steps alone) is printed beside it. Overhead = 1 - run time / wall
time, as a share of the wall time; with --jobs N the run times of parallel workers overlap, so the
ratio is taken against N x wall. Target: overhead <= 10% in-process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def grid_yaml(runs: int, epochs: int) -> dict:
    half = runs // 2
    return {
        "name": "overhead",
        "defaults": {"data": {"task": "breastmnist", "size": 28}, "vit": {"arch": "tiny"},
                     "booster": {"source": "minilm-l6", "layer": -1},
                     "train": {"epochs": epochs, "batch_size": 64, "warmup_epochs": 0}},
        "variants": {"baseline": {"booster.variant": "baseline"}, "rllm": {"booster.variant": "rllm"}},
        "seeds": list(range(half)),
    }


def summarize(name: str, results: Path, wall: float, jobs: int) -> float:
    from bench import store

    rows = store.read_runs(results)
    ok = rows[rows["status"] == "ok"]
    fit, train = ok["fit_s"].sum(), ok["train_s"].sum()
    capacity = wall * jobs
    overhead = 1 - fit / capacity
    print(f"{name:<11} runs ok {len(ok)}/{len(rows)}  wall {wall:7.1f}s  sum(fit_s) {fit:7.1f}s  "
          f"sum(train_s) {train:7.1f}s  run/wall {fit / capacity:.3f}  overhead {overhead:6.1%}"
          f"  (vs train_s only: {1 - train / capacity:6.1%})")
    return overhead


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "medmnist"))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--skip-subprocess", action="store_true", help="only the in-process measurement")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    grid = work / "overhead.yaml"
    grid.write_text(yaml.safe_dump(grid_yaml(args.runs, args.epochs)))
    print(f"{args.runs} runs x {args.epochs} epoch(s) of BreastMNIST 28, jobs={args.jobs}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    t0 = time.perf_counter()
    from bench import run
    from bench.grid import load_grid

    print(f"imports {time.perf_counter() - t0:.1f}s")
    runs = load_grid(str(grid)).runs
    assert len(runs) == args.runs, len(runs)
    results = work / "in-process"
    t0 = time.perf_counter()
    summary = run.run_all(runs, args.data_root, results, run.RunOptions(jobs=args.jobs, bars=False),
                          echo=lambda msg: None)
    wall = time.perf_counter() - t0
    assert not summary.failed, summary.failed[0]["error"]
    overhead = summarize("in-process", results, wall, args.jobs)

    if not args.skip_subprocess:
        results = work / "end-to-end"
        cmd = [str(Path(sys.executable).with_name("bench")), "run", "--grid", str(grid), "--data-root", args.data_root,
               "--results", str(results), "--jobs", str(args.jobs)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            return 1
        summarize("end-to-end", results, wall, args.jobs)
    print(f"target: in-process overhead <= 10%: {'met' if overhead <= 0.10 else 'NOT met'} ({overhead:.1%})")
    print(f"(results kept in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
