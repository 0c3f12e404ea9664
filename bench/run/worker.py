"""One run in whichever process a backend chose: train it, never raise for a failed run, return its
row, history, predictions, log (and weights, with save_weights) for the dispatcher to store. Writes
nothing but the live log.

A failing run (exception, NaN/inf loss, out of memory after one retry at half the batch with
gradient accumulation) comes back as a `failed` row with its reason. A worker process keeps its
datasets (as long as their file is unchanged on disk) and loaded LLM layers in memory across its runs
(`_splits` here, `bench.models.build`'s cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import importlib.metadata
import io
import json
import os
import socket
import subprocess
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config import RunConfig, flatten, resolve, run_id
from bench.data import TaskSpec, data_file, task_spec
from bench.data.loading import Splits, load_splits
from bench.errors import one_line
from bench.models.registry import VARIANTS


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything a worker needs for one run; picklable (plain values only)."""

    cfg: RunConfig
    data_root: str
    live_log: str | None  # <results>/logs/<id>.running.log, written while the run trains (if reachable)
    device: str | None  # auto | cpu | cuda | cuda:N
    attempt: int = 1


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
def _cached_splits(task: str, size: int, root: Path, stamp: tuple[int, int] | None) -> tuple[TaskSpec, Splits]:
    spec = task_spec(task, size)
    return spec, load_splits(spec, root, download=False)


def _splits(task: str, size: int, root: Path) -> tuple[TaskSpec, Splits]:
    """A worker keeps its datasets in memory across runs, keyed by the file's (mtime, size): a file deleted
    or changed on disk since is read again, so its runs fail with the missing-file or MD5 message."""
    try:
        st = data_file(task_spec(task, size), root).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        stamp = None
    if stamp is None:
        _cached_splits.cache_clear()  # do not keep the arrays of a file that is gone
    return _cached_splits(task, size, root, stamp)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunLog:
    """The run's log: kept in memory for the store, and mirrored to a live file while the run goes on."""

    def __init__(self, live: str | None):
        self.buf = io.StringIO()
        self.file = None
        if live:
            try:
                self.file = open(live, "w", buffering=1, encoding="utf-8")  # noqa: SIM115
            except OSError:
                self.file = None  # e.g. a Dask worker that does not see the results directory

    def __call__(self, msg: str) -> None:
        line = f"{dt.datetime.now().isoformat(timespec='seconds')} {msg}\n"
        self.buf.write(line)
        if self.file:
            with contextlib.suppress(OSError):
                self.file.write(line)

    def close(self) -> str:
        if self.file:
            with contextlib.suppress(OSError):
                self.file.close()
        return self.buf.getvalue()


# A GPU in one of these states fails every later kernel of the process (CUDA's sticky errors) or is broken:
# its worker is retired, its run started again elsewhere.
FATAL_CUDA = ("illegal memory access", "device-side assert", "ecc error", "uncorrectable ecc", "unspecified launch failure",
              "misaligned address", "illegal instruction", "launch timed out", "gpu has fallen off the bus",
              "gpu is lost", "cuda error: unknown error", "cublas_status_execution_failed",
              "cudnn_status_execution_failed", "cuda driver error", "cudaerrorlaunchfailure", "hardware stack error")
# The allocator's other spellings of out of memory (cuBLAS handles and workspaces, cuDNN, cuFFT, cuSOLVER).
OOM = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed", "cudnn_status_not_enough_workspace",
       "cufft_alloc_failed", "cusolver_status_alloc_failed", "failed to allocate memory")


def failure_kind(e: BaseException) -> str | None:
    """'fatal' (the GPU is unusable for this process), 'oom' (retry smaller), or None (an ordinary failure),
    from the exception and the ones it was raised from."""
    import torch

    seen, texts = set(), []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, torch.cuda.OutOfMemoryError):
            return "oom"
        texts.append(str(e).lower())
        e = e.__cause__ or e.__context__
    text = " ".join(texts)
    if any(s in text for s in FATAL_CUDA):
        return "fatal"
    return "oom" if any(s in text for s in OOM) else None


def _is_oom(e: BaseException) -> bool:
    return failure_kind(e) == "oom"


def _reserved() -> int | None:
    import torch

    try:
        return torch.cuda.memory_reserved() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    except RuntimeError:  # a GPU in a fatal state
        return None


def free_memory() -> None:
    """Collect what the run left (its model, batches, optimizer state) and hand the GPU's cached blocks back, so a
    second process on the GPU (--runs-per-gpu) gets them. Call it where no traceback holds the run's frames."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        with contextlib.suppress(RuntimeError):  # a GPU in a fatal state
            torch.cuda.empty_cache()


def _fit_with_oom_retry(cfg, splits, spec, device, log, progress, flags: dict):
    """fit; on out-of-memory once more at half the batch per step (gradient accumulation, same effective batch).

    Sets flags["oom_retry"] when it retries, so a failed retry is recorded as one too."""
    from bench.train import fit

    oom = None
    try:
        return fit(cfg, splits, spec, device, progress=progress)
    except Exception as e:
        if not _is_oom(e):
            raise
        oom = one_line(e)  # leave the except block first: its traceback holds the failed step's tensors
    batch = min(cfg.train.batch_size, len(splits.train))
    if batch < 2:
        raise MemoryError(f"out of memory at batch size 1: {oom}")
    micro = batch // 2
    flags["oom_retry"] = True
    log(f"out of memory ({oom}); retrying once with micro_batch={micro} (gradient accumulation, same batch "
        f"{batch}) and eval batch {max(1, cfg.train.eval_batch_size // 2)}")
    free_memory()
    smaller = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_batch_size=max(1, cfg.train.eval_batch_size // 2)))
    try:
        return fit(smaller, splits, spec, device, progress=progress, micro_batch=micro)
    except Exception as e:
        if _is_oom(e):
            raise MemoryError(f"out of memory again at micro_batch={micro} after retrying: {one_line(e)}") from None
        raise


_RUNS_IN_PROCESS = [0]


def execute(task: Task, progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train one run and return {row, history, y_score, y_true, weights, log}; never raises for a failed run."""
    import torch

    from bench.models import build, restore
    from bench.train import pick_device, precision

    cfg = resolve(task.cfg)
    rid = run_id(cfg)
    _RUNS_IN_PROCESS[0] += 1
    log = RunLog(task.live_log)
    flags = {"oom_retry": False}
    reserved = None
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "run_id": rid, "status": "ok", "error": None, "label": cfg.label, "task": cfg.data.task, "size": cfg.data.size,
        **flatten(cfg),
        "attempt": task.attempt, "started_at": now(), "started_unix": time.time(), **provenance(), "worker_pid": os.getpid(),
        "worker_run_index": _RUNS_IN_PROCESS[0], "torch_threads": torch.get_num_threads(), "oom_retry": False,
    }
    out: dict[str, Any] = {"row": row, "history": None, "y_score": None, "y_true": None, "weights": None}
    log(f"run {rid} ({cfg.label}, {cfg.data.task}@{cfg.data.size}, seed {cfg.seed}), attempt {task.attempt}, "
        f"pid {os.getpid()} on {socket.gethostname()}")
    log("config " + json.dumps(flatten(cfg), sort_keys=True, default=str))

    def on_epoch(epoch: int, rec: dict) -> None:
        log(f"epoch {epoch + 1}/{cfg.train.epochs} train_loss={rec['train_loss']:.4f} val_acc={rec['val_acc']:.4f} "
            f"val_auc={rec['val_auc']:.4f} lr={rec['lr']:.3g} ({rec['epoch_s']:.1f}s)")
        if progress:
            progress(epoch, rec)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            dev = pick_device(task.device)
            row["precision"] = precision(dev)
            if dev.type == "cuda":
                row["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
            log(f"device {dev}" + (f" (CUDA_VISIBLE_DEVICES={row['cuda_visible_devices']})" if dev.type == "cuda" else "")
                + f", {row['precision']}, torch threads {torch.get_num_threads()}")
            hits = _cached_splits.cache_info().hits
            t_data = time.perf_counter()
            spec, splits = _splits(cfg.data.task, cfg.data.size, Path(task.data_root))
            row.update({"data.md5": splits.md5, "data.fixture": splits.fixture,
                        "data_cached": _cached_splits.cache_info().hits > hits, "data_s": time.perf_counter() - t_data})
            llm_hits = build._cached_block.cache_info().hits
            t_fit = time.perf_counter()
            result = _fit_with_oom_retry(cfg, splits, spec, dev, log, on_epoch, flags)
            reserved = _reserved()
            row["fit_s"] = time.perf_counter() - t_fit
            if VARIANTS[cfg.booster.variant].has_layer:
                row["llm_cached"] = build._cached_block.cache_info().hits > llm_hits
            row.update(result.metrics)
            row["oom_retry"] = flags["oom_retry"]
            out.update(history=result.history, y_score=result.y_score, y_true=result.y_true)
            if cfg.save_weights:  # bytes, so a worker that cannot see the results directory sends them too
                out["weights"] = restore.weights_bytes(result.model, row)
            result = None  # the model: released below
            log("done " + " ".join(f"{k}={row.get(k)}" for k in ("best_epoch", "val_auc", "val_acc", "test_auc", "test_acc",
                                                                 "train_s", "micro_batch", "oom_retry")))
        except KeyboardInterrupt:
            log("interrupted")
            log.close()
            raise
        except Exception as e:  # noqa: BLE001 - a failed run is a result; the grid goes on
            reserved = _reserved()
            kind = failure_kind(e)
            row.update(status="failed", error=("fatal CUDA error: " if kind == "fatal" else "") + one_line(e),
                       traceback=traceback.format_exc(), oom_retry=flags["oom_retry"])
            out["fatal"] = kind == "fatal"
            log(f"FAILED {row['error']}\n{row['traceback']}")
        # here, outside the handler, no traceback holds the run's frames: its model and batches can go
        free_memory()
        after = _reserved()
        if reserved is not None and after is not None:
            log(f"GPU memory reserved {reserved / 2**20:.0f} MiB at the end of the run, {after / 2**20:.0f} MiB after "
                "releasing it")
        for w in caught:
            log(f"warning: {w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})")
    row["finished_at"] = now()
    row["wall_s"] = time.perf_counter() - t0
    log(f"status {row['status']} after {row['wall_s']:.1f}s")
    out["log"] = log.close()
    return out


def lost(task: Task, why: str) -> dict:
    """The outcome of a run whose worker process died or vanished: failed, with the reason."""
    cfg = resolve(task.cfg)
    row = {"run_id": run_id(cfg), "status": "failed", "error": why, "label": cfg.label, "task": cfg.data.task,
           "size": cfg.data.size, **flatten(cfg), "attempt": task.attempt, "started_at": None, "finished_at": now(),
           **provenance(), "oom_retry": False}
    return {"row": row, "history": None, "y_score": None, "y_true": None, "log": f"{now()} FAILED {why}\n"}
