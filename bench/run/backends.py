"""Where runs execute: in the dispatcher (serial), in joblib's process pool, or on a Dask cluster.

Each backend yields (task, outcome) pairs as runs finish; none of them writes the store.

    serial     in the dispatcher itself (with an epoch progress bar)
    pool       joblib's loky processes. Worker k (its slot) owns its GPU and its share of the CPUs by the
               rule of bench.run.gpus (CUDA_VISIBLE_DEVICES set before CUDA starts).
               A worker exits when the dispatcher is gone and leaves SIGTERM to the dispatcher (which
               stops it cleanly); the runs of a worker that died are started again, at most
               `worker_retries` times each (`bench run --worker-retries N`).
    dask       an existing dask.distributed cluster; a worker started with `--resources GPU=1` gets
               one run at a time, on the GPU of its rank among its host's workers (bench.run.gpus), unless
               it was started with its own CUDA_VISIBLE_DEVICES. The scheduler moves the run of a lost worker
               to another one; a run counts its starts (a Dask Variable) and is stored failed past
               `worker_retries` restarts.
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
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from bench.config import run_id
from bench.crashsafe import pid_alive
from bench.errors import BenchError, one_line
from bench.run import gpus as gpu_rule
from bench.run.worker import Task, execute, lost
from bench.store import layout
from bench.upstream import keep_loky_worker


def serial(tasks: list[Task], epoch_bar: Callable[[Task], Callable | None]) -> Iterator[tuple[Task, dict]]:
    """In this process; a fatal CUDA error leaves its GPU unusable to the process: the grid stops (a new process,
    the same command, resumes)."""
    for i, t in enumerate(tasks):
        out = execute(t, progress=epoch_bar(t))
        yield t, out
        if out.get("fatal") and i + 1 < len(tasks):
            raise BenchError(f"stopped: {fatal_line(out)}; this process cannot use the GPU any more, {len(tasks) - i - 1} "
                             "runs not started; rerun the same command to resume (or on other GPUs)")


def fatal_line(out: dict) -> str:
    row = out["row"]
    gpu = row.get("cuda_visible_devices") or row.get("device") or "?"
    return f"GPU {gpu} hit a fatal CUDA error in run {row['run_id']} ({row.get('error')})"[:400]


# ------------------------------------------------------------------------------------------ joblib pool


@dataclasses.dataclass(frozen=True)
class PoolSetup:
    """What a pool worker process sets up once: its slot (which picks its GPU and threads), the parent watch."""

    slot_dir: str  # where workers claim their slot (flock)
    n_slots: int
    cpus: int  # the CPUs the workers split between them
    gpus: tuple[str, ...] = ()  # device ids: slot k owns gpus[k mod len(gpus)]
    dispatcher_pid: int | None = None  # a worker exits when this process is gone

    @property
    def threads(self) -> int:
        return gpu_rule.worker_env(0, self.n_slots, (), self.cpus).threads


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
        env = gpu_rule.worker_env(state["slot"], setup.n_slots, setup.gpus, setup.cpus)
        if not env.gpus or not torch.cuda.is_initialized():
            gpu_rule.apply(env)
            state["gpu"] = ",".join(env.gpus)
        state["threads"] = env.threads
    torch.set_num_threads(state["threads"])
    if setup.gpus and state.get("gpu"):
        task = dataclasses.replace(task, device="cuda")
    return execute(task)


def pool(tasks: list[Task], jobs: int, setup: PoolSetup, results: Path,
         worker_retries: int = 1) -> Iterator[tuple[Task, dict]]:
    """joblib (loky processes); re-dispatches the runs of a worker that died, at most `worker_retries` times.

    A fatal CUDA error retires its GPU: the pool restarts on the others (the runs in flight start again, uncounted)
    and the failed run goes to another GPU, counted as a worker death."""
    from joblib import Parallel, delayed, parallel_config

    deaths: dict[str, int] = {}
    left = {run_id(t.cfg): t for t in tasks}
    per_gpu = -(-jobs // len(setup.gpus)) if setup.gpus else jobs
    while left:
        batch = list(left.values())
        retired = None
        try:
            with parallel_config(backend="loky", inner_max_num_threads=setup.threads):
                par = Parallel(n_jobs=min(jobs, len(batch)), return_as="generator_unordered", batch_size=1,
                               pre_dispatch="n_jobs")
                stream = par(delayed(_pool_execute)(t, setup) for t in batch)
                for out in stream:
                    if out.get("fatal") and setup.gpus:
                        retired = out
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # joblib's note that it cancelled the running tasks
                            stream.close()  # joblib stops the workers
                        break
                    yield left.pop(out["row"]["run_id"]), out
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
        if retired is not None:
            rid = retired["row"]["run_id"]
            gpu = retired["row"].get("cuda_visible_devices")
            setup = dataclasses.replace(setup, gpus=tuple(g for g in setup.gpus if g != gpu))
            jobs = min(jobs, per_gpu * len(setup.gpus))
            setup = dataclasses.replace(setup, n_slots=jobs)
            for killed in left:  # the runs stopped with the pool start again from scratch
                layout.running_log_path(results, killed).unlink(missing_ok=True)
            deaths[rid] = deaths.get(rid, 0) + 1
            if deaths[rid] > worker_retries or not setup.gpus:
                yield left.pop(rid), retired
            if not setup.gpus:
                raise BenchError(f"stopped: {fatal_line(retired)}; no GPU left to run on, {len(left)} runs not "
                                 "finished; rerun the same command to resume")
            print(f"bench: {fatal_line(retired)}; GPU {gpu} retired, the grid goes on with GPUs "
                  f"{','.join(setup.gpus)} ({len(left)} runs to go)", file=sys.stderr)


visible_gpus, cores = gpu_rule.visible_gpus, gpu_rule.usable_cpus


# ------------------------------------------------------------------------------------------------- Dask


def connect(scheduler: str):
    try:
        from distributed import Client
        from distributed.comm.addressing import get_address_host_port
        from distributed.comm.registry import get_backend
    except ImportError:
        raise BenchError("--backend dask needs dask[distributed]; pip install 'dask[distributed]'") from None
    try:  # a malformed address is Dask's to read (it would wait its whole timeout on one, then raise)
        scheme = scheduler.split("://", 1)[0] if "://" in scheduler else "tcp"
        get_backend(scheme)
        if scheme != "inproc":  # an in-process cluster's address has no host and port
            port = get_address_host_port(scheduler)[1]
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range")
    except (ValueError, TypeError) as e:
        raise BenchError(f"--scheduler {scheduler!r} is not a Dask scheduler address ({one_line(e)}); give "
                         "tcp://HOST:PORT, e.g. tcp://10.0.0.1:8786") from None
    try:
        return Client(scheduler, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise BenchError(f"cannot reach the Dask scheduler at {scheduler} ({one_line(e)}); start one "
                         "(`dask scheduler`, then per GPU i: `CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --resources GPU=1 "
                         "--nthreads 1`; a worker without CUDA_VISIBLE_DEVICES takes the GPU of its rank on its host) "
                         "or fix --scheduler") from None


def dask_worker_setup(ranks: dict[str, tuple[int, int]]) -> None:
    """Once per Dask worker process: its GPU (rank on its host; kept if the worker was started with its own
    CUDA_VISIBLE_DEVICES, which `visible_gpus` then returns alone) and its CPUs split between the host's workers
    and each worker's threads (each may run one run). A worker that joined after the grid started ranks itself."""
    import torch
    from distributed import get_client, get_worker

    worker = get_worker()
    if _POOL_STATE.get("dask") == worker.address:
        return
    if worker.address not in ranks:
        ranks = gpu_rule.dask_layout(get_client().scheduler_info(n_workers=-1)["workers"])
    rank, on_host = ranks.get(worker.address, (0, 1))
    gpu = "GPU" in (worker.state.total_resources or {})
    env = gpu_rule.worker_env(rank, on_host, gpu_rule.visible_gpus() if gpu and not torch.cuda.is_initialized() else ())
    gpu_rule.apply(gpu_rule.WorkerEnv(env.gpus, max(1, env.threads // max(1, worker.state.nthreads))))
    _POOL_STATE["dask"] = worker.address


def restarted(task: Task, n: int, why: str) -> Task:
    """Inside a Dask worker, the n-th start (n >= 2) of a run whose worker was lost: one line to the dispatcher's
    terminal, the lost attempt's partial log kept (<id>.attempt<k>.lost.log, beside the live log) and the
    attempt number counted on, so the row and log of this start say which attempt they are."""
    from distributed import print as dask_print

    lost_attempt = task.attempt + n - 2
    rid = run_id(task.cfg)
    kept = ""
    if task.live_log and os.path.exists(task.live_log):
        path = Path(task.live_log).with_name(f"{rid}.attempt{lost_attempt}.lost.log")
        with contextlib.suppress(OSError):
            os.replace(task.live_log, path)
            kept = f"; its partial log kept as {path}"
    dask_print(f"bench: run {rid} (attempt {lost_attempt}) lost: {why}; started again as attempt "
               f"{lost_attempt + 1}{kept}", file=sys.stderr)
    return dataclasses.replace(task, attempt=lost_attempt + 1)


def _dask_execute(task: Task, starts_key: str, worker_retries: int, ranks: dict | None = None) -> dict:
    """Inside a Dask worker: count this start of the run (a restart means its last worker was lost), set the
    worker's GPU and threads up (`dask_worker_setup`), then run. After a fatal CUDA error the worker closes (with
    its nanny: not restarted onto the same GPU); a run that reaches it meanwhile is rescheduled."""
    from distributed import Reschedule, Variable, get_worker

    if _POOL_STATE.get("retired"):
        raise Reschedule()

    starts = Variable(starts_key)
    try:
        n = int(starts.get(timeout=0)) + 1
    except TimeoutError:
        n = 1
    starts.set(n)
    if n > 1:
        task = restarted(task, n, "its Dask worker was lost (killed, or its machine gone)")
    if n > worker_retries + 1:
        return lost(task, f"its Dask worker was lost {n - 1} times (--worker-retries {worker_retries}); often the "
                          "worker killed for memory, or its machine gone")
    dask_worker_setup(ranks or {})
    out = execute(task)
    if out.get("fatal"):
        _POOL_STATE["retired"] = True
        worker = get_worker()
        worker.loop.add_callback(worker.close, nanny=True, reason="fatal CUDA error")
    return out


def dask(tasks: list[Task], client, worker_retries: int = 1) -> Iterator[tuple[Task, dict]]:
    """A run whose worker hit a fatal CUDA error (that worker closes itself) is submitted again, for another worker."""
    from distributed import Variable, as_completed

    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    ranks = gpu_rule.dask_layout(workers)
    gpu = any("GPU" in (w.get("resources") or {}) for w in workers.values())
    if not workers:
        print("bench: the Dask scheduler has no workers yet; runs wait until one joins", file=sys.stderr)
    token = uuid.uuid4().hex[:8]
    by_key: dict[str, tuple[Task, str]] = {}

    def submit(t: Task, starts: str, key: str):
        fut = client.submit(_dask_execute, t, starts, worker_retries, ranks, key=key, pure=False,
                            resources={"GPU": 1} if gpu else None)
        by_key[fut.key] = (t, starts)
        return fut

    futures = []
    for t in tasks:
        key = f"bench-run-{run_id(t.cfg)}-{token}"
        futures.append(submit(t, f"{key}-starts", key))
    pending = as_completed(futures, loop=client.loop)
    try:
        for fut in pending:
            t, starts = by_key.pop(fut.key)
            try:
                out = fut.result()
            except Exception as e:  # noqa: BLE001 - KilledWorker, a lost worker, unpicklable result...
                out = lost(t, f"the Dask task failed ({one_line(e)})")
            fut.release()
            if out.get("fatal"):
                print(f"bench: {fatal_line(out)} on Dask worker {out['row'].get('hostname')} (pid "
                      f"{out['row'].get('worker_pid')}); that worker closed, the run goes to another", file=sys.stderr)
                again = submit(t, starts, f"{fut.key}-again-{uuid.uuid4().hex[:4]}")
                futures.append(again)
                pending.add(again)
                continue
            with contextlib.suppress(Exception):  # the start counter lives on the scheduler: drop it
                Variable(starts, client=client).delete()
            yield t, out
    finally:
        client.cancel([f for f in futures if not f.done()])
