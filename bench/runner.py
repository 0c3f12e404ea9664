"""Execute a grid's runs: check everything first, skip what is stored ok, record failures, go on.

One process, the *dispatcher*, owns the result store: it holds an exclusive lock on the results
directory, decides which runs to do, hands them to workers and writes what comes back. Workers only
train (`execute`) and return a run's row, history, predictions and log; they never write the store.
So a run is written by one process, whole, the row last (see `bench.store`), whatever the backend:

    jobs=1                 in the dispatcher itself (with an epoch progress bar)
    jobs=N                 joblib's process pool (loky). On GPUs each worker owns one device through
                           CUDA_VISIBLE_DEVICES (round-robin); on CPU the cores are split between workers
    backend="dask"         an existing dask.distributed cluster; a worker started with `--resources
                           GPU=1` gets one run at a time

A worker process keeps its datasets and loaded LLM layers in memory across its runs (the lru caches
of `_splits` and `bench.models.build`), and the runs are ordered so consecutive ones share them.

Resume rule: a run stored `ok` is skipped; a run stored `failed` is retried on every `bench run`
(unless `retry_failed=False`, `bench run --skip-failed`); `force` reruns everything. Each row records
its `attempt` number. A forced rerun that fails never replaces an `ok` row: the ok result is kept and
the failed attempt's log is written next to it as `logs/<run_id>.failed.log`.

Failures: an exception, a NaN/inf loss (`TrainingDiverged`) or an out-of-memory error in one run is
stored as a `failed` row with the reason and the grid goes on. Out of memory is retried once at half
the batch with gradient accumulation (same effective batch, `micro_batch` in the row) and the row says
`oom_retry=True`. A worker process that dies (killed for memory, segfault) takes the runs it was running
with it: they are re-dispatched once; a run whose worker dies twice is stored failed.

A SIGKILL at any moment leaves only whole files plus hidden temp files and `*.running.log` live logs,
which the next `bench run` removes before it starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import functools
import gc
import importlib.metadata
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from bench import store
from bench.crashsafe import pid_alive, write_atomic
from bench.config import RunConfig, flatten, resolve, run_id
from bench.data import Splits, TaskSpec, data_file, ensure_file, load_splits, resolve_root, task_spec
from bench.errors import BenchError

BACKENDS = ("local", "dask")
LOCK_FILE = ".bench.lock"
RUNNING_SUFFIX = ".running.log"
MAX_WORKER_DEATHS = 2  # a run whose worker process dies this often is stored failed


# ================================================================================ store-side helpers


def statuses(results: Path, run_ids: Iterable[str]) -> dict[str, str | None]:
    """{run_id: 'ok' | 'failed' | None}, reading only the status column of the rows that exist (~1 ms each)."""
    import pyarrow.parquet as pq

    folder = Path(results) / store.RUNS
    present = {p.stem for p in folder.glob("*.parquet")} if folder.is_dir() else set()
    out = {}
    for rid in run_ids:
        if rid in present:
            with pq.ParquetFile(folder / f"{rid}.parquet") as f:
                out[rid] = f.read(columns=["status"]).column(0)[0].as_py()
        else:
            out[rid] = None
    return out


def wanted(status: str | None, force: bool = False, retry_failed: bool = True) -> bool:
    """The resume rule: run it if not stored, or stored failed (unless `retry_failed=False`); with force, always."""
    return force or status is None or (retry_failed and status == "failed")


def pending(runs: list[RunConfig], results: Path, force: bool = False, retry_failed: bool = True) -> list[RunConfig]:
    """Runs still to do under the resume rule (`wanted`)."""
    ids = [run_id(c) for c in runs]
    status = statuses(results, ids)
    return [c for c, rid in zip(runs, ids) if wanted(status[rid], force, retry_failed)]


def clean_stale(results: Path) -> int:
    """Remove what a killed process left: hidden temp files (never read) and live logs of unfinished runs."""
    n = 0
    for sub in (store.RUNS, store.HISTORY, store.PREDICTIONS, store.LOGS):
        folder = Path(results) / sub
        if not folder.is_dir():
            continue
        for p in list(folder.glob(".*.tmp")) + (list(folder.glob(f"*{RUNNING_SUFFIX}")) if sub == store.LOGS else []):
            p.unlink(missing_ok=True)
            n += 1
    return n


@contextlib.contextmanager
def results_lock(results: Path):
    """Exclusive use of a results directory for one dispatcher; released by the kernel even on SIGKILL."""
    results = Path(results)
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create the results directory {results}: {e.strerror}; pass a writable --results") from None
    path = results / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise BenchError(f"{results} is in use by another `bench run` ({holder}); wait for it to finish "
                             "or use another --results directory") from None
        except OSError:  # a filesystem without flock (some NFS setups): go on unlocked
            warnings.warn(f"cannot lock {path}; make sure no other `bench run` uses {results}", stacklevel=2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def log_path(results: Path, rid: str) -> Path:
    return Path(results) / store.LOGS / f"{rid}.log"


def _running_log(results: Path, rid: str) -> Path:
    return Path(results) / store.LOGS / f"{rid}{RUNNING_SUFFIX}"


def commit(results: Path, outcome: dict, previous: str | None) -> str:
    """Write one run's outcome to the store (row last). Returns what happened: ok | failed | kept."""
    row = outcome["row"]
    rid = row["run_id"]
    log_text = outcome.get("log") or ""
    if row["status"] == "ok":
        store.write_history(results, rid, outcome["history"])
        store.write_predictions(results, rid, outcome["y_score"], outcome["y_true"])
        write_atomic(log_path(results, rid), log_text.encode())
        store.write_run(results, row)
        result = "ok"
    elif previous == "ok":  # a forced rerun failed: keep the ok result, keep the failure's log beside it
        write_atomic(Path(results) / store.LOGS / f"{rid}.failed.log", log_text.encode())
        result = "kept"
    else:
        for stale in (Path(results) / store.HISTORY / f"{rid}.parquet", Path(results) / store.PREDICTIONS / f"{rid}.npz"):
            stale.unlink(missing_ok=True)  # left by an attempt killed before its row: not this row's
        write_atomic(log_path(results, rid), log_text.encode())
        store.write_run(results, row)
        result = "failed"
    _running_log(results, rid).unlink(missing_ok=True)
    return result


# ======================================================================================== preflight


def _is_hub_id(source: str) -> bool:
    from bench.models.llm import MINILM

    return source != MINILM and not Path(source).expanduser().exists()


def check_tasks(runs: Iterable[RunConfig]) -> None:
    """Every run's task and size exist (medmnist.INFO only: no files, no network)."""
    for task, size in sorted({(c.data.task, c.data.size) for c in runs}):
        task_spec(task, size)


def preflight(runs: Iterable[RunConfig], data_root: Path, download: bool = True) -> None:
    """Fail before any training on what the user can fix: tasks, sizes, data files, LLM sources.

    With `download=True` missing data files are fetched and hub configs read (network); with False
    nothing touches the network: tasks and sizes are checked, local LLM sources read, hub ids skipped,
    and a missing or corrupt data file is an error.
    """
    from bench.models.llm import block_key, check_block, llm_hidden_size

    runs = list(runs)
    specs = [task_spec(task, size) for task, size in sorted({(c.data.task, c.data.size) for c in runs})]
    for spec in specs:
        ensure_file(spec, data_root, download=download)
    for b in sorted({block_key(c.booster) for c in runs if c.booster.source}, key=str):
        if not download and _is_hub_id(b.source):
            continue
        if b.variant == "adapters":
            llm_hidden_size(b.source, b.revision)
        else:  # the layer range, model type and final norm, from the config alone
            check_block(b)


def check_offline(runs: Iterable[RunConfig], data_root: Path) -> list[str]:
    """For --dry-run and list: validate without network or hashing; returns notes about what is missing."""
    from bench.models.llm import llm_hidden_size

    runs = list(runs)
    notes = []
    for task, size in sorted({(c.data.task, c.data.size) for c in runs}):
        spec = task_spec(task, size)
        if not data_file(spec, data_root).exists():
            notes.append(f"{data_file(spec, data_root).name} is not in {data_root}/ yet (fetched when the grid runs)")
    for source, revision in sorted({(c.booster.source, c.booster.revision) for c in runs if c.booster.source}, key=str):
        if _is_hub_id(source):
            notes.append(f"hub model {source} is checked and fetched when the grid runs")
        else:
            llm_hidden_size(source, revision)
    return notes


# ========================================================================================== worker


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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything a worker needs for one run; picklable (plain values only)."""

    cfg: RunConfig
    data_root: str
    live_log: str | None  # <results>/logs/<id>.running.log, written while the run trains (if reachable)
    device: str | None  # auto | cpu | cuda | cuda:N; a pool worker given `gpus` uses its own GPU instead
    attempt: int = 1
    threads: int | None = None  # torch threads for a pool worker
    gpus: tuple[str, ...] = ()  # device ids to share round-robin between pool workers
    slot_dir: str | None = None  # where pool workers claim their slot (flock), which picks their GPU
    n_slots: int = 1
    dispatcher_pid: int | None = None  # a pool worker exits when this process is gone


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


_WORKER: dict[str, Any] = {}  # per process: slot, GPU, run count


def _claim_slot(slot_dir: str, n: int) -> int:
    """The lowest free slot under `slot_dir`, held (flock) for the life of this process."""
    for k in range(n):
        fd = os.open(os.path.join(slot_dir, f"slot-{k}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _WORKER.setdefault("slot_fds", []).append(fd)  # keep it open: the lock lives as long as we do
            return k
        except OSError:
            os.close(fd)
    return os.getpid() % n  # more processes than slots (a replaced worker): share


def _watch_dispatcher(pid: int, ppid: int) -> None:
    """Exit when the dispatcher is gone (SIGKILL), so no orphan keeps training a run that will be redone."""
    while True:
        time.sleep(0.5)
        gone = os.getppid() != ppid if ppid == pid else not pid_alive(pid)
        if gone:
            os._exit(3)


def _setup_pool_worker(task: Task) -> str | None:
    """Once per pool worker process: slot -> GPU, torch threads, parent watch. Returns the device to use."""
    import torch

    state = _WORKER
    if task.slot_dir and state.get("slot_dir") != task.slot_dir:
        state["slot_dir"] = task.slot_dir
        state["slot"] = _claim_slot(task.slot_dir, task.n_slots)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the dispatcher's to handle
        if task.dispatcher_pid and not state.get("watching"):
            state["watching"] = True
            threading.Thread(target=_watch_dispatcher, args=(task.dispatcher_pid, os.getppid()), daemon=True).start()
        if task.gpus and not torch.cuda.is_initialized():
            state["gpu"] = task.gpus[state["slot"] % len(task.gpus)]
            os.environ["CUDA_VISIBLE_DEVICES"] = state["gpu"]
    if task.threads:
        torch.set_num_threads(task.threads)
    return "cuda" if task.gpus and "gpu" in state else task.device


def _dask_threads() -> None:
    """Inside a Dask worker: split its cores between its threads (each may run one run)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, worker.state.nthreads)))


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:500] if text else type(e).__name__


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
        oom = _one_line(e)  # leave the except block first: its traceback holds the failed step's tensors
    batch = min(cfg.train.batch_size, len(splits.train))
    if batch < 2:
        raise MemoryError(f"out of memory at batch size 1: {oom}")
    micro = batch // 2
    flags["oom_retry"] = True
    log(f"out of memory ({oom}); retrying once with micro_batch={micro} (gradient accumulation, same batch "
        f"{batch}) and eval batch {max(1, cfg.train.eval_batch_size // 2)}")
    _free_memory()
    smaller = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_batch_size=max(1, cfg.train.eval_batch_size // 2)))
    try:
        return fit(smaller, splits, spec, device, progress=progress, micro_batch=micro)
    except Exception as e:
        if _is_oom(e):
            raise MemoryError(f"out of memory again at micro_batch={micro} after retrying: {_one_line(e)}") from None
        raise


def execute(task: Task, progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train one run and return {row, history, y_score, y_true, log}; never raises for a failed run.

    Runs in whichever process the backend chose; writes nothing but the live log.
    """
    import torch

    from bench.models import build
    from bench.train import pick_device

    device_name = _setup_pool_worker(task) if task.slot_dir else task.device
    if not task.slot_dir:
        _dask_threads()
    cfg = resolve(task.cfg)
    rid = run_id(cfg)
    state = _WORKER
    state["runs"] = state.get("runs", 0) + 1
    log = RunLog(task.live_log)
    flags = {"oom_retry": False}
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "run_id": rid, "status": "ok", "error": None, "label": cfg.label, "task": cfg.data.task, "size": cfg.data.size,
        **flatten(cfg),
        "attempt": task.attempt, "started_at": _now(), "started_unix": time.time(), **provenance(), "worker_pid": os.getpid(),
        "worker_run_index": state["runs"], "torch_threads": torch.get_num_threads(), "oom_retry": False,
    }
    out: dict[str, Any] = {"row": row, "history": None, "y_score": None, "y_true": None}
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
            dev = pick_device(device_name)
            if dev.type == "cuda":
                row["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
            log(f"device {dev}" + (f" (CUDA_VISIBLE_DEVICES={row['cuda_visible_devices']})" if dev.type == "cuda" else "")
                + f", torch threads {torch.get_num_threads()}")
            hits = _splits.cache_info().hits
            t_data = time.perf_counter()
            spec, splits = _splits(cfg.data.task, cfg.data.size, Path(task.data_root))
            row.update({"data.md5": splits.md5, "data.fixture": splits.fixture,
                        "data_cached": _splits.cache_info().hits > hits, "data_s": time.perf_counter() - t_data})
            cached_block = getattr(build, "_cached_block", None)
            llm_hits = cached_block.cache_info().hits if cached_block else 0
            t_fit = time.perf_counter()
            result = _fit_with_oom_retry(cfg, splits, spec, dev, log, on_epoch, flags)
            row["fit_s"] = time.perf_counter() - t_fit
            if cached_block and cfg.booster.variant == "rllm":
                row["llm_cached"] = cached_block.cache_info().hits > llm_hits
            row.update(result.metrics)
            row["oom_retry"] = flags["oom_retry"]
            out.update(history=result.history, y_score=result.y_score, y_true=result.y_true)
            log("done " + " ".join(f"{k}={row.get(k)}" for k in ("best_epoch", "val_auc", "val_acc", "test_auc", "test_acc",
                                                                 "train_s", "micro_batch", "oom_retry")))
        except KeyboardInterrupt:
            log("interrupted")
            log.close()
            raise
        except Exception as e:  # noqa: BLE001 - a failed run is a result; the grid goes on
            row.update(status="failed", error=_one_line(e), traceback=traceback.format_exc(), oom_retry=flags["oom_retry"])
            log(f"FAILED {row['error']}\n{row['traceback']}")
            _free_memory()
        for w in caught:
            log(f"warning: {w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})")
    row["finished_at"] = _now()
    row["wall_s"] = time.perf_counter() - t0
    log(f"status {row['status']} after {row['wall_s']:.1f}s")
    out["log"] = log.close()
    return out


# ======================================================================================== backends


def _serial(tasks: list[Task], epoch_bar) -> Iterator[tuple[Task, dict]]:
    for t in tasks:
        yield t, execute(t, progress=epoch_bar(t))


def _pool(tasks: list[Task], jobs: int, results: Path) -> Iterator[tuple[Task, dict]]:
    """joblib (loky processes); re-dispatches the runs of a worker that died, at most MAX_WORKER_DEATHS times."""
    from joblib import Parallel, delayed, parallel_config

    deaths: dict[str, int] = {}
    left = {run_id(t.cfg): t for t in tasks}
    while left:
        batch = list(left.values())
        try:
            with parallel_config(backend="loky", inner_max_num_threads=batch[0].threads):
                par = Parallel(n_jobs=min(jobs, len(batch)), return_as="generator_unordered", batch_size=1,
                               pre_dispatch="n_jobs")
                for out in par(delayed(execute)(t) for t in batch):
                    t = left.pop(out["row"]["run_id"])
                    yield t, out
        except BrokenProcessPool as e:
            started = [rid for rid in left if _running_log(results, rid).exists()]
            for rid in started:
                deaths[rid] = deaths.get(rid, 0) + 1
                _running_log(results, rid).unlink(missing_ok=True)
                if deaths[rid] >= MAX_WORKER_DEATHS:
                    t = left.pop(rid)
                    yield t, _died(t, f"the worker process running it died {deaths[rid]} times ({_one_line(e)}); "
                                      "often the OS killing it for memory")
            print(f"bench: a worker process died ({_one_line(e)}); re-dispatching {len(left)} runs", file=sys.stderr)


def _died(task: Task, why: str) -> dict:
    cfg = resolve(task.cfg)
    row = {"run_id": run_id(cfg), "status": "failed", "error": why, "label": cfg.label, "task": cfg.data.task,
           "size": cfg.data.size, **flatten(cfg),
           "attempt": task.attempt, "started_at": None, "finished_at": _now(),
           **provenance(), "oom_retry": False}
    return {"row": row, "history": None, "y_score": None, "y_true": None, "log": f"{_now()} FAILED {why}\n"}


def _connect(scheduler: str):
    try:
        from distributed import Client
    except ImportError:
        raise BenchError("--backend dask needs dask[distributed]; pip install 'dask[distributed]'") from None
    try:
        return Client(scheduler, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise BenchError(f"cannot reach the Dask scheduler at {scheduler} ({_one_line(e)}); start one "
                         "(`dask scheduler`, then `dask worker ADDRESS --resources GPU=1 --nthreads 1` per GPU) "
                         "or fix --scheduler") from None


def _dask(tasks: list[Task], client) -> Iterator[tuple[Task, dict]]:
    from distributed import as_completed

    workers = client.scheduler_info().get("workers", {})
    gpu = any("GPU" in (w.get("resources") or {}) for w in workers.values())
    if not workers:
        print("bench: the Dask scheduler has no workers yet; runs wait until one joins", file=sys.stderr)
    token = uuid.uuid4().hex[:8]
    by_key = {}
    futures = []
    for t in tasks:
        key = f"bench-run-{run_id(t.cfg)}-{token}"
        fut = client.submit(execute, t, key=key, pure=False, resources={"GPU": 1} if gpu else None)
        by_key[fut.key] = t
        futures.append(fut)
    try:
        for fut in as_completed(futures, loop=client.loop):
            t = by_key[fut.key]
            try:
                out = fut.result()
            except Exception as e:  # noqa: BLE001 - KilledWorker, a lost worker, unpicklable result...
                out = _died(t, f"the Dask task failed ({_one_line(e)})")
            fut.release()
            yield t, out
    finally:
        client.cancel([f for f in futures if not f.done()])


# ======================================================================================== dispatch


@dataclasses.dataclass
class Summary:
    total: int  # runs in the grid
    skipped: int  # already stored ok (or failed, with retry_failed=False)
    rows: list[dict]  # one per run executed, in completion order
    kept: list[str]  # forced reruns that failed while an ok row was kept
    interrupted: bool = False

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]


def _order(runs: list[RunConfig]) -> list[RunConfig]:
    """Group runs sharing a dataset and LLM layer (first-appearance order) so a worker's caches get reused."""
    def key(c: RunConfig):
        return (c.data.task, c.data.size, c.booster.source or "", c.booster.layer)

    first: dict = {}
    for i, c in enumerate(runs):
        first.setdefault(key(c), i)
    return sorted(runs, key=lambda c: first[key(c)])


def _visible_gpus() -> tuple[str, ...]:
    import torch

    if not torch.cuda.is_available():
        return ()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in env.split(",") if s.strip()] if env else []
    n = torch.cuda.device_count()
    return tuple(ids[:n]) if ids else tuple(str(i) for i in range(n))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe(cfg: RunConfig) -> str:
    b = cfg.booster
    llm = f" {Path(b.source).name if b.source else ''}@{b.layer}" if b.variant == "rllm" else ""
    return f"{cfg.label} {cfg.data.task}@{cfg.data.size}{llm} seed={cfg.seed}"


def run_all(runs: list[RunConfig], data_root: str | Path | None, results: Path, device: str | None = None,
            force: bool = False, *, jobs: int = 1, backend: str = "local", scheduler: str | None = None,
            retry_failed: bool = True, echo: Callable[[str], None] | None = None, bars: bool | None = None,
            runs_per_gpu: int | None = None) -> Summary:
    """Run what is not stored ok yet; returns a Summary. Raises KeyboardInterrupt after a clean stop.

    `runs_per_gpu=K` sets jobs to K per visible GPU: small runs leave a GPU mostly idle, so K share it."""
    from tqdm.auto import tqdm

    if runs_per_gpu is not None:
        gpus = _visible_gpus()
        if runs_per_gpu < 1 or not gpus or backend != "local" or device not in (None, "", "auto", "cuda"):
            raise BenchError("--runs-per-gpu K needs K >= 1, CUDA GPUs, the local backend and --device auto or cuda; "
                             "on CPU use --jobs N")
        jobs = runs_per_gpu * len(gpus)

    if backend not in BACKENDS:
        raise BenchError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")
    if backend == "dask" and not scheduler:
        raise BenchError("--backend dask needs --scheduler ADDRESS (e.g. tcp://10.0.0.1:8786)")
    if scheduler and backend != "dask":
        raise BenchError("--scheduler is for --backend dask")
    if jobs < 1:
        raise BenchError(f"--jobs must be >= 1, got {jobs}")
    if backend == "dask" and jobs != 1:
        raise BenchError("--jobs is for the local backend; a Dask cluster runs as many runs as its workers allow")
    echo = echo or print
    results = Path(results).expanduser().resolve()
    root = resolve_root(data_root).resolve()
    ids = {id(c): run_id(c) for c in runs}

    def to_do(before):
        return [c for c in runs if wanted(before[ids[id(c)]], force, retry_failed)]

    if backend == "local":
        from bench.train import pick_device

        pick_device(device)  # an unusable --device is the user's to fix, before anything runs
    preflight(to_do(statuses(results, ids.values())), root)  # before the results directory is touched
    client = _connect(scheduler) if backend == "dask" else None
    try:
        with results_lock(results):
            removed = clean_stale(results)
            if removed:
                echo(f"removed {removed} temp/live-log files left by an interrupted run")
            before = statuses(results, ids.values())
            todo = to_do(before)  # again, under the lock
            summary = Summary(total=len(runs), skipped=len(runs) - len(todo), rows=[], kept=[])
            if not todo:
                return summary
            (results / store.LOGS).mkdir(parents=True, exist_ok=True)
            attempts = _attempts(results, [ids[id(c)] for c in todo if before[ids[id(c)]] is not None])
            tasks = [Task(cfg=c, data_root=str(root), live_log=str(_running_log(results, ids[id(c)])), device=device,
                          attempt=attempts.get(ids[id(c)], 0) + 1, dispatcher_pid=os.getpid()) for c in _order(todo)]
            return _dispatch(tasks, results, before, summary, jobs, backend, client, device, echo, bars, tqdm)
    finally:
        if client is not None:
            client.close()


def _attempts(results: Path, ids: list[str]) -> dict[str, int]:
    out = {}
    for rid in ids:
        row = store.read_run(results, rid) or {}
        a = row.get("attempt")
        out[rid] = int(a) if a is not None and not (isinstance(a, float) and math.isnan(a)) else 1
    return out


def _dispatch(tasks, results, before, summary, jobs, backend, client, device, echo, bars, tqdm) -> Summary:
    n = len(tasks)
    bar = tqdm(total=n, unit="run", desc="runs", disable=None if bars is None else not bars, dynamic_ncols=True,
               position=0)
    slot_dir = None
    single = backend == "local" and (jobs == 1 or n == 1)

    def epoch_bar(task: Task):
        if bar.disable:
            return None
        inner = tqdm(total=task.cfg.train.epochs, unit="epoch", desc=f"  {task.cfg.label}", leave=False, position=1,
                     dynamic_ncols=True)

        def update(epoch, rec):
            inner.update(1)
            inner.set_postfix(val_auc=f"{rec['val_auc']:.3f}", loss=f"{rec['train_loss']:.3f}")
            if epoch + 1 >= task.cfg.train.epochs:
                inner.close()
        return update

    t0 = time.perf_counter()
    stream = committing = None
    try:
        if single:
            stream = _serial(tasks, epoch_bar)
        elif backend == "local":
            jobs = min(jobs, n)
            slot_dir = tempfile.mkdtemp(prefix="bench-slots-")
            gpus = _visible_gpus() if device in (None, "", "auto", "cuda") else ()
            threads = max(1, _cores() // jobs)
            if os.environ.get("OMP_NUM_THREADS", "").isdigit():
                threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
            tasks = [dataclasses.replace(t, threads=threads, gpus=gpus, slot_dir=slot_dir, n_slots=jobs) for t in tasks]
            echo(f"{jobs} worker processes, " + (f"GPUs {','.join(gpus)} round-robin" if gpus else f"{threads} torch threads each"))
            stream = _pool(tasks, jobs, results)
        else:
            stream = _dask(tasks, client)
        for task, out in stream:
            row = out["row"]
            committing = row
            what = commit(results, out, before.get(row["run_id"]))
            committing = None
            summary.rows.append(row)
            if what == "kept":
                summary.kept.append(row["run_id"])
            done = len(summary.rows)
            bar.update(1)
            nfail = len(summary.failed)
            bar.set_postfix(failed=nfail)
            elapsed = time.perf_counter() - t0
            eta = _fmt_s(elapsed / done * (n - done)) if done < n else "0s"
            metric = (f"test_auc={row.get('test_auc'):.4f}" if row["status"] == "ok" and row.get("test_auc") is not None
                      else (row.get("error") or "")[:160])
            note = " (oom retry)" if row.get("oom_retry") else ""
            note += " (kept the earlier ok result)" if what == "kept" else ""
            bar.write(f"[{done}/{n}] {row['status']:<6} {row['run_id']} {describe(task.cfg)}  {metric}{note}  "
                      f"{_fmt_s(row.get('wall_s') or 0)}  failed={nfail} eta={eta}", file=sys.stdout)
    except KeyboardInterrupt:
        summary.interrupted = True
        bar.close()
        if committing is not None:  # interrupted while writing a run: count it if its row made it
            stored = store.read_run(results, committing["run_id"]) or {}
            if stored.get("started_unix") == committing.get("started_unix"):
                summary.rows.append(committing)
        if stream is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # joblib's note that it cancelled the running tasks
                stream.close()  # joblib terminates its workers; Dask futures are cancelled
        done_ids = {r["run_id"] for r in summary.rows}
        for t in tasks:
            if run_id(t.cfg) not in done_ids:
                _running_log(results, run_id(t.cfg)).unlink(missing_ok=True)
        echo(f"interrupted: {len(summary.rows)} runs finished and stored, {n - len(summary.rows)} not; "
             "rerun the same command to resume")
        raise
    finally:
        bar.close()
        if slot_dir:
            import shutil

            shutil.rmtree(slot_dir, ignore_errors=True)
    return summary


def run_one(cfg: RunConfig, data_root: Path, results: Path, device: str | None = None) -> dict:
    """Train one config in this process and store it (failed runs too); returns its row."""
    results = Path(results)
    rid = run_id(resolve(cfg))
    with results_lock(results):
        previous = statuses(results, [rid])[rid]
        (results / store.LOGS).mkdir(parents=True, exist_ok=True)
        attempt = _attempts(results, [rid]).get(rid, 0) + 1 if previous else 1
        out = execute(Task(cfg=cfg, data_root=str(resolve_root(data_root)), live_log=str(_running_log(results, rid)),
                           device=device, attempt=attempt))
        commit(results, out, previous)
    return out["row"]
