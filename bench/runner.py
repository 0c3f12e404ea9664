"""Execute run configs: check everything first, skip what is stored ok, record failures, go on.

A run's files are written by `store` atomically, the row last, so a run is either stored whole or
absent; failed runs are stored too (status failed, with the reason) and retried on the next call.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import socket
import subprocess
import time
import traceback
from pathlib import Path
from typing import Iterable

from bench import store
from bench.config import RunConfig, flatten, resolve, run_id
from bench.data import Splits, TaskSpec, ensure_file, load_splits, resolve_root, task_spec
from bench.errors import BenchError
from bench.models.llm_layer import llm_hidden_size
from bench.train import fit, pick_device


@functools.cache
def provenance() -> dict:
    """Versions, code revision and host: enough to trace any stored number to what produced it."""
    versions = {f"{pkg}_version": importlib.metadata.version(pkg) for pkg in ("torch", "timm", "transformers", "medmnist")}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {**versions, "bench_version": importlib.metadata.version("rllm-bench"), "git_sha": sha,
            "hostname": socket.gethostname()}


@functools.lru_cache(maxsize=4)
def _splits(task: str, size: int, root: Path) -> tuple[TaskSpec, Splits]:
    """A worker keeps its datasets in memory across runs."""
    spec = task_spec(task, size)
    return spec, load_splits(spec, root, download=False)


def preflight(runs: Iterable[RunConfig], data_root: Path, download: bool = True) -> None:
    """Fail before any training on what the user can fix: tasks, sizes, data files, LLM sources."""
    for task, size in sorted({(c.data.task, c.data.size) for c in runs}):
        ensure_file(task_spec(task, size), data_root, download=download)
    for source, revision in sorted({(c.booster.source, c.booster.revision) for c in runs if c.booster.source},
                                   key=str):
        llm_hidden_size(source, revision)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_one(cfg: RunConfig, data_root: Path, results: Path, device: str | None = None, **fit_kwargs) -> dict:
    """Train one config and store it; any exception in training is stored as a failed run."""
    cfg = resolve(cfg)
    rid = run_id(cfg)
    row = {"run_id": rid, "status": "ok", "error": None, "label": cfg.label, "task": cfg.data.task,
           "size": cfg.data.size, **flatten(cfg), "started_at": _now(), **provenance()}
    t0 = time.perf_counter()
    try:
        dev = pick_device(device)
        spec, splits = _splits(cfg.data.task, cfg.data.size, Path(data_root))
        row.update({"data.md5": splits.md5, "data.fixture": splits.fixture})
        result = fit(cfg, splits, spec, dev, **fit_kwargs)
        store.write_history(results, rid, result.history)
        store.write_predictions(results, rid, result.y_score, result.y_true)
        row.update(result.metrics)
    except (KeyboardInterrupt, BenchError):
        raise
    except Exception as e:  # noqa: BLE001 — a failed run is a result; the grid goes on
        row.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:500],
                   traceback=traceback.format_exc())
    row["finished_at"] = _now()
    row["wall_s"] = time.perf_counter() - t0
    store.write_run(results, row)
    return row


def pending(runs: list[RunConfig], results: Path, force: bool = False) -> list[RunConfig]:
    """Runs still to do: not stored, or stored as failed (retried); with force, all of them."""
    return [c for c in runs if force or store.run_status(results, run_id(c)) != "ok"]


def run_all(runs: list[RunConfig], data_root: str | Path | None, results: Path, device: str | None = None,
            force: bool = False) -> list[dict]:
    root = resolve_root(data_root)
    todo = pending(runs, results, force)
    preflight(todo, root)
    return [run_one(c, root, results, device) for c in todo]
