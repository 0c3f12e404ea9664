"""The result store at full-grid scale: build a store of every run of the `full` grid, then time its reads.

    .venv/bin/python benchmarks/store_scale.py [--store DIR] [--grid full] [--repeats 3] [--slow-paths]

Build (once; reused while DIR holds the whole grid): one row per run of the grid, with the grid's real
configs and run ids, written through the project's writer exactly as the dispatcher writes it
(`results_lock`, then `commit` per run: history, predictions, log, row, and the index refreshes it does
on its own). Everything in it is synthetic and says so: `hostname="synthetic (benchmarks/store_scale.py)"`,
`data.fixture=True`, `data.md5="synthetic"`; metrics are random; 1% of the runs are failed; each ok run has
a 100-epoch history and BreastMNIST-sized predictions (156 x 2 scores), so report benchmarks can use it.

Measured (targets of the issue "store at full-grid scale", on a 2-core machine):
  read_runs            every run row as one DataFrame                       <= 3 s
  statuses             the runner's resume check for every run of the grid   (as fast as read_runs)
  read_history         every run's history                                  <= 10 s
  bench list           `bench list --grid full`, Python start included      <= 3 s, and no torch import
  expand               `load_grid("full")`                                   <= 1 s
  bench report         `bench report --grid full`, every table and plot      <= 60 s
"cold" = a fresh Python process (imports included where it says so; the OS page cache is warm, this script
cannot drop it), "warm" = the same call again in that process. Each figure is the median of --repeats
fresh processes; the machine load (os.getloadavg) is printed beside it. --slow-paths also times reads with
no index (a store written by an older version, or a read-only copy never refreshed: every file read one by
one) and with 64 runs committed since the last refresh (the most a reader meets while a grid runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = "synthetic (benchmarks/store_scale.py)"
EPOCHS = 100


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def outcome(cfg, rid: str, index: int, rng) -> dict:
    """One run as a worker would hand it to the dispatcher: row, history, predictions, log."""
    import numpy as np

    from bench import cost
    from bench.config import flatten

    failed = rng.random() < 0.01
    b = cfg.booster
    shape = cost.llm_shape(b.source, b.revision) if b.source else None
    val_auc = float(rng.uniform(0.6, 0.95))
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    row = {
        "run_id": rid, "status": "failed" if failed else "ok", "label": cfg.label, "task": cfg.data.task,
        "size": cfg.data.size, **flatten(cfg), "attempt": 1, "started_at": now, "started_unix": time.time(),
        "finished_at": now, "wall_s": float(rng.uniform(600, 6000)), "hostname": SYNTHETIC, "git_sha": "synthetic",
        "torch_version": "synthetic", "timm_version": "synthetic", "transformers_version": "synthetic",
        "medmnist_version": "synthetic", "bench_version": "synthetic", "worker_pid": 0, "worker_run_index": index,
        "torch_threads": 1, "oom_retry": False, "data.md5": "synthetic", "data.fixture": True, "data_cached": True,
        "data_s": 0.1, "device": "cuda:0", "cuda_visible_devices": "0",
    }
    if failed:
        row.update(error="RuntimeError: synthetic failure (benchmarks/store_scale.py)", traceback="synthetic")
        return {"row": row, "history": None, "y_score": None, "y_true": None, "log": f"{now} FAILED synthetic\n"}
    row.update({
        "best_epoch": int(rng.integers(0, EPOCHS)), "val_acc": float(rng.uniform(0.6, 0.95)), "val_auc": val_auc,
        "test_acc": float(rng.uniform(0.6, 0.95)), "test_auc": float(np.clip(val_auc + rng.normal(0, 0.02), 0, 1)),
        "epochs_run": EPOCHS, "train_s": float(rng.uniform(500, 5000)), "train_img_per_s": float(rng.uniform(500, 3000)),
        "fit_s": float(rng.uniform(550, 5500)), "peak_mem_bytes": int(rng.integers(1, 40) * 2**30),
        "params_trainable": 22_000_000, "params_frozen": 0, "micro_batch": cfg.train.batch_size,
        "llm_cached": b.variant == "rllm",
    })
    if b.variant == "rllm" and shape is not None:
        row.update({"llm.source": f"{b.source}@synthetic", "llm.file_hash": "synthetic", "llm.model_type": shape.model_type,
                    "llm.layers": str(b.layer), "llm.hidden_size": shape.hidden, "llm.num_hidden_layers": shape.layers,
                    "llm.params": 0})
    history = [{"epoch": e, "train_loss": float(2.0 / (e + 1)), "val_acc": float(rng.uniform(0.5, 0.95)),
                "val_auc": float(rng.uniform(0.5, 0.95)), "lr": 1e-4, "epoch_s": 30.0} for e in range(EPOCHS)]
    y_score = rng.dirichlet([1.0, 1.0], size=156).astype(np.float32)
    y_true = rng.integers(0, 2, size=(156, 1))
    return {"row": row, "history": history, "y_score": y_score, "y_true": y_true,
            "log": f"{now} synthetic run {rid} ({SYNTHETIC})\n"}


def build(store_dir: Path, grid_name: str) -> None:
    import numpy as np

    from bench import store
    from bench.grid import load_grid

    grid = load_grid(grid_name)
    ids = grid.run_ids()
    have = {p.stem for p in (store_dir / store.RUNS).glob("*.parquet")} if (store_dir / store.RUNS).is_dir() else set()
    todo = [(i, c, rid) for i, (c, rid) in enumerate(zip(grid.runs, ids)) if rid not in have]
    if not todo:
        return
    print(f"building {store_dir}: {len(todo)} of {len(ids)} runs to write ({load()})", flush=True)
    t0 = time.perf_counter()
    with store.results_lock(store_dir):
        for k, (i, cfg, rid) in enumerate(todo):
            store.commit(store_dir, outcome(cfg, rid, i, np.random.default_rng(i)), None)
            if (k + 1) % 1000 == 0:
                print(f"  {k + 1}/{len(todo)} runs in {time.perf_counter() - t0:.0f} s ({load()})", flush=True)
    print(f"built in {time.perf_counter() - t0:.0f} s: {len(ids)} runs", flush=True)


PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
from bench import store
t_import = time.perf_counter() - t0
what, results, ids_file = sys.argv[1], sys.argv[2], sys.argv[3]
def call():
    if what == "read_runs":
        return len(store.read_runs(results))
    if what == "read_history":
        return len(store.read_history(results))
    if what == "statuses":
        return len(store.statuses(results, json.load(open(ids_file))))
    if what == "expand":
        from bench.grid import load_grid
        return len(load_grid(results).runs)
t1 = time.perf_counter(); n = call(); cold = time.perf_counter() - t1
t2 = time.perf_counter(); call(); warm = time.perf_counter() - t2
print(json.dumps({"import": t_import, "cold": cold, "warm": warm, "n": n, "torch": "torch" in sys.modules}))
"""


def probe(what: str, arg: str, ids_file: Path, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = []
    for _ in range(repeats):
        p = subprocess.run([sys.executable, "-c", PROBE, what, arg, str(ids_file)], capture_output=True, text=True,
                           env=env, check=True)
        out.append(json.loads(p.stdout))
    med = {k: statistics.median(o[k] for o in out) for k in ("import", "cold", "warm")}
    return {**med, "n": out[0]["n"], "torch": any(o["torch"] for o in out)}


def bench_list(store_dir: Path, grid: str, repeats: int) -> tuple[float, bool]:
    """`bench list` end to end as a user types it, and whether torch was imported (python -X importtime)."""
    bench = str(Path(sys.executable).with_name("bench"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([bench, "list", "--grid", grid, "--results", str(store_dir)], stdout=subprocess.DEVNULL,
                       env=env, check=True)
        times.append(time.perf_counter() - t0)
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", "list", "--grid", grid, "--results",
                        str(store_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                       check=True)
    torch = any(line.rsplit("|", 1)[-1].strip() == "torch" for line in p.stderr.splitlines())
    return statistics.median(times), torch


def bench_report(store_dir: Path, grid: str, repeats: int) -> float:
    """`bench report --grid G` end to end as a user types it (every table and plot, HTML included)."""
    bench = str(Path(sys.executable).with_name("bench"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            subprocess.run([bench, "report", "--grid", grid, "--results", str(store_dir), "--out", out],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def line(name: str, r: dict, target: str = "") -> None:
    print(f"{name:<34} cold {r['cold']:6.2f} s  warm {r['warm']:6.2f} s  import {r['import']:5.2f} s  "
          f"rows {r['n']:>7}  torch imported: {r['torch']}  {target}  ({load()})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "bench-store-scale",
                    help="where the synthetic store is built and kept (default: $TMPDIR/bench-store-scale)")
    ap.add_argument("--grid", default="full")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per figure (the median is printed)")
    ap.add_argument("--slow-paths", action="store_true",
                    help="also time reads with no index, and with 64 runs not yet compacted")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.grid import load_grid

    print(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {socket.gethostname()}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}, {load()}", flush=True)
    build(args.store, args.grid)
    with tempfile.TemporaryDirectory() as tmp:  # a whole store is only read
        ids_file = Path(tmp) / "grid_ids.json"
        ids_file.write_text(json.dumps(load_grid(args.grid).run_ids()))
        measure(args, ids_file)
    return 0


def measure(args, ids_file: Path) -> None:
    """Every timed line, each the median of --repeats fresh processes."""
    r = args.repeats
    line("expand (load_grid)", probe("expand", args.grid, ids_file, r), "target <= 1 s (cold)")
    line("read_runs", probe("read_runs", str(args.store), ids_file, r), "target <= 3 s")
    line("statuses (every run of the grid)", probe("statuses", str(args.store), ids_file, r))
    line("read_history (every run)", probe("read_history", str(args.store), ids_file, r), "target <= 10 s")
    seconds, torch = bench_list(args.store, args.grid, r)
    print(f"{'bench list --grid ' + args.grid:<34} {seconds:6.2f} s end to end (Python start included), torch "
          f"imported: {torch}  target <= 3 s, no torch  ({load()})", flush=True)
    seconds = bench_report(args.store, args.grid, r)
    print(f"{'bench report --grid ' + args.grid:<34} {seconds:6.2f} s end to end (Python start included)  "
          f"target <= 60 s  ({load()})", flush=True)
    if args.slow_paths:
        slow_paths(args, ids_file)


def slow_paths(args, ids_file: Path) -> None:
    """The same reads on a copy of the store without its index, then with the last 64 runs not compacted."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from bench.store import index, layout

    with tempfile.TemporaryDirectory(dir=args.store.parent) as tmp:
        copy = Path(tmp) / "store"
        for sub in (layout.RUNS, layout.HISTORY):
            shutil.copytree(args.store / sub, copy / sub, copy_function=os.link)  # hard links: no copying
        line("read_runs, no index", probe("read_runs", str(copy), ids_file, 1), "(every file read one by one)")
        line("read_history, no index", probe("read_history", str(copy), ids_file, 1))
        (copy / layout.INDEX).mkdir()
        for kind in index.KINDS:  # an index lacking 64 runs, as between two refreshes while a grid runs
            table = pq.read_table(layout.index_path(args.store, kind))
            left_out = pa.array(sorted(set(table.column("run_id").to_pylist()))[-64:])
            pq.write_table(table.filter(pc.invert(pc.is_in(table.column("run_id"), value_set=left_out))),
                           layout.index_path(copy, kind))
        line("read_runs, 64 runs not compacted", probe("read_runs", str(copy), ids_file, args.repeats))
        line("statuses, 64 runs not compacted", probe("statuses", str(copy), ids_file, args.repeats))
        line("read_history, 64 not compacted", probe("read_history", str(copy), ids_file, args.repeats))


if __name__ == "__main__":
    raise SystemExit(main())
