"""Where runs execute: in the dispatcher (serial), in joblib's process pool, or on a Dask cluster.

Each backend yields (task, outcome) pairs as runs finish; none of them writes the store.

    serial     in the dispatcher itself (with an epoch progress bar)
    pool       joblib's loky processes. On GPUs each worker owns one device through
               CUDA_VISIBLE_DEVICES (round-robin slots); on CPU the cores are split between workers.
               A worker exits when the dispatcher is gone and leaves SIGTERM to the dispatcher (which
               stops it cleanly); the runs of a worker that died are started again, at most
               `worker_retries` times each (`bench run --worker-retries N`).
    dask       an existing dask.distributed cluster; a worker started with `--resources GPU=1` gets
               one run at a time. The scheduler moves the run of a lost worker to another one; a run
               counts its starts (a Dask Variable) and is stored failed past `worker_retries` restarts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from bench.config import run_id
from bench.crashsafe import pid_alive
from bench.errors import BenchError, one_line
from bench.run.worker import Task, execute, lost
from bench.store import layout
from bench.upstream import keep_loky_worker


def serial(tasks: list[Task], epoch_bar: Callable[[Task], Callable | None]) -> Iterator[tuple[Task, dict]]:
    for t in tasks:
        yield t, execute(t, progress=epoch_bar(t))


# ------------------------------------------------------------------------------------------ joblib pool


@dataclasses.dataclass(frozen=True)
class PoolSetup:
    """What a pool worker process sets up once: its slot (which picks its GPU), torch threads, the parent watch."""

    slot_dir: str  # where workers claim their slot (flock)
    n_slots: int
    threads: int | None  # torch threads per worker on CPU
    gpus: tuple[str, ...] = ()  # device ids shared round-robin between workers
    dispatcher_pid: int | None = None  # a worker exits when this process is gone


_POOL_STATE: dict = {}  # per worker process


def _claim_slot(slot_dir: str, n: int) -> int:
    """The lowest free slot under `slot_dir`, held (flock) for the life of this process."""
    for k in range(n):
        fd = os.open(os.path.join(slot_dir, f"slot-{k}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _POOL_STATE.setdefault("slot_fds", []).append(fd)  # keep it open: the lock lives as long as we do
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


def _pool_execute(task: Task, setup: PoolSetup) -> dict:
    """A pool worker's entry: set the process up once (slot -> GPU, threads, parent watch), then run."""
    import torch

    state = _POOL_STATE
    if state.get("slot_dir") != setup.slot_dir:
        keep_loky_worker()  # its caches are what a worker is for
        state["slot_dir"] = setup.slot_dir
        state["slot"] = _claim_slot(setup.slot_dir, setup.n_slots)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM to the process group (a scheduler's
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # pre-emption) are the dispatcher's; it stops us (SIGKILL)
        if setup.dispatcher_pid and not state.get("watching"):
            state["watching"] = True
            threading.Thread(target=_watch_dispatcher, args=(setup.dispatcher_pid, os.getppid()), daemon=True).start()
        if setup.gpus and not torch.cuda.is_initialized():
            state["gpu"] = setup.gpus[state["slot"] % len(setup.gpus)]
            os.environ["CUDA_VISIBLE_DEVICES"] = state["gpu"]
    if setup.threads:
        torch.set_num_threads(setup.threads)
    if setup.gpus and "gpu" in state:
        task = dataclasses.replace(task, device="cuda")
    return execute(task)


def pool(tasks: list[Task], jobs: int, setup: PoolSetup, results: Path,
         worker_retries: int = 1) -> Iterator[tuple[Task, dict]]:
    """joblib (loky processes); re-dispatches the runs of a worker that died, at most `worker_retries` times."""
    from joblib import Parallel, delayed, parallel_config

    deaths: dict[str, int] = {}
    left = {run_id(t.cfg): t for t in tasks}
    while left:
        batch = list(left.values())
        try:
            with parallel_config(backend="loky", inner_max_num_threads=setup.threads):
                par = Parallel(n_jobs=min(jobs, len(batch)), return_as="generator_unordered", batch_size=1,
                               pre_dispatch="n_jobs")
                for out in par(delayed(_pool_execute)(t, setup) for t in batch):
                    t = left.pop(out["row"]["run_id"])
                    yield t, out
        except BrokenProcessPool as e:
            started = [rid for rid in left if layout.running_log_path(results, rid).exists()]
            for rid in started:
                deaths[rid] = deaths.get(rid, 0) + 1
                layout.running_log_path(results, rid).unlink(missing_ok=True)
                if deaths[rid] > worker_retries:
                    t = left.pop(rid)
                    yield t, lost(t, f"the worker process running it died {deaths[rid]} times ({one_line(e)}); "
                                     "often the OS killing it for memory")
            print(f"bench: a worker process died ({one_line(e)}); re-dispatching {len(left)} runs", file=sys.stderr)


def visible_gpus() -> tuple[str, ...]:
    import torch

    if not torch.cuda.is_available():
        return ()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in env.split(",") if s.strip()] if env else []
    n = torch.cuda.device_count()
    return tuple(ids[:n]) if ids else tuple(str(i) for i in range(n))


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------- Dask


def connect(scheduler: str):
    try:
        from distributed import Client
    except ImportError:
        raise BenchError("--backend dask needs dask[distributed]; pip install 'dask[distributed]'") from None
    try:
        return Client(scheduler, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise BenchError(f"cannot reach the Dask scheduler at {scheduler} ({one_line(e)}); start one "
                         "(`dask scheduler`, then `dask worker ADDRESS --resources GPU=1 --nthreads 1` per GPU) "
                         "or fix --scheduler") from None


def _dask_execute(task: Task, starts_key: str, worker_retries: int) -> dict:
    """Inside a Dask worker: count this start of the run (a restart means its last worker was lost), split
    the worker's cores between its threads (each may run one run), then run."""
    import torch
    from distributed import Variable, get_worker

    starts = Variable(starts_key)
    try:
        n = int(starts.get(timeout=0)) + 1
    except TimeoutError:
        n = 1
    starts.set(n)
    if n > worker_retries + 1:
        return lost(task, f"its Dask worker was lost {n - 1} times (--worker-retries {worker_retries}); often the "
                          "worker killed for memory, or its machine gone")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, get_worker().state.nthreads)))
    return execute(task)


def dask(tasks: list[Task], client, worker_retries: int = 1) -> Iterator[tuple[Task, dict]]:
    from distributed import Variable, as_completed

    workers = client.scheduler_info().get("workers", {})
    gpu = any("GPU" in (w.get("resources") or {}) for w in workers.values())
    if not workers:
        print("bench: the Dask scheduler has no workers yet; runs wait until one joins", file=sys.stderr)
    token = uuid.uuid4().hex[:8]
    by_key = {}
    futures = []
    for t in tasks:
        key = f"bench-run-{run_id(t.cfg)}-{token}"
        fut = client.submit(_dask_execute, t, f"{key}-starts", worker_retries, key=key, pure=False,
                            resources={"GPU": 1} if gpu else None)
        by_key[fut.key] = t
        futures.append(fut)
    try:
        for fut in as_completed(futures, loop=client.loop):
            t = by_key[fut.key]
            try:
                out = fut.result()
            except Exception as e:  # noqa: BLE001 - KilledWorker, a lost worker, unpicklable result...
                out = lost(t, f"the Dask task failed ({one_line(e)})")
            fut.release()
            with contextlib.suppress(Exception):  # the start counter lives on the scheduler: drop it
                Variable(f"{fut.key}-starts", client=client).delete()
            yield t, out
    finally:
        client.cancel([f for f in futures if not f.done()])
