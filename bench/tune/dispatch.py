"""Spreading studies over workers, and what the user sees of them.

    local   `--jobs K` processes on this machine, this one included: one GPU each, round-robin over the
            visible GPUs, or a share of the CPU cores
    dask    an existing dask.distributed cluster (`--backend dask --scheduler ADDRESS`): one worker loop per
            GPU slot (workers started with `--resources GPU=1`), else per worker thread

Every worker runs the same loop: it takes the studies in turn from its own offset (worker i of W starts at
study i*S/W) and works on each until the study has its trials, then moves on; so workers spread over the
studies first and then join those still running (a study is shared safely, see `bench.tune.trials`).
Killed and rerun, the loop passes over complete studies and continues the others. The local workers write
the tuned files as they go; Dask workers may not see the results folder, so this process writes them,
every POLL_S seconds and at the end, and prints each study's progress as it changes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from bench.errors import BenchError, one_line
from bench.train import pick_device
from bench.tune.storage import describe_storage
from bench.tune.setup import TuneSetup
from bench.tune.study import summarise, work

POLL_S = 30.0  # Dask: how often this process reads the studies' progress and writes their tuned files


def check_options(jobs: int, backend: str, scheduler: str | None, slurm=None) -> None:
    """--jobs / --backend / --scheduler (/ the SLURM options), by the rules and messages of `bench run`."""
    from bench.run import RunOptions

    RunOptions(jobs=jobs, backend=backend, scheduler=scheduler, slurm=slurm).check()


def state_line(setup: TuneSetup, state: dict) -> str:
    """One study's progress: trials against the budget, and the budget's best objective value."""
    extra = "".join(f", {state[k]} {k}" for k in ("running", "interrupted") if state[k])
    best = (f"best {setup.objective} {state['best_value']:.4f} (trial {state['best_trial']})"
            if state["best_value"] is not None else "no complete trial yet")
    return (f"{setup.name}: {state['done']}/{setup.n_trials} trials ({state['complete']} complete, {state['pruned']} "
            f"pruned, {state['failed']} failed{extra}), {best}")


def work_all(setups: Sequence[TuneSetup], index: int, workers: int, tag: str = "",
             log: Callable[[str], None] | None = None, export_best: bool = True,
             stop: Callable[[], bool] | None = None) -> None:
    """Worker `index` of `workers`: every study in turn from its offset, until each has its trials."""
    say = log or (lambda msg: print(msg, flush=True))
    timeout = setups[0].timeout
    deadline = time.monotonic() + timeout if timeout else None
    start = index * len(setups) // workers
    for setup in [*setups[start:], *setups[:start]]:
        if (stop and stop()) or (deadline is not None and time.monotonic() >= deadline):
            break
        work(setup, tag, say, deadline, export_best, stop)


def run_studies(setups: Sequence[TuneSetup], *, jobs: int = 1, backend: str = "local", scheduler: str | None = None,
                log: Callable[[str], None] | None = None, slurm=None) -> list[dict]:
    """Run every study to its trials on the chosen workers; each study's final state (its file written).
    `slurm`: bench.run.slurm.SlurmOptions for backend slurm (--max-jobs jobs, a worker loop per GPU)."""
    say = log or (lambda msg: print(msg, flush=True))
    check_options(jobs, backend, scheduler, slurm)
    if backend == "dask":
        _dask(list(setups), scheduler, say)
    elif backend == "slurm":
        _slurm(list(setups), slurm, say)
    else:
        _local(list(setups), jobs, say)
    return [summarise(s) for s in setups]


# ------------------------------------------------------------------------------------------- local


def _local(setups: list[TuneSetup], jobs: int, say: Callable[[str], None]) -> None:
    from bench.run.gpus import visible_gpus, worker_env

    device = pick_device(setups[0].device)
    gpus = visible_gpus() if device.type == "cuda" and setups[0].device in (None, "", "auto", "cuda") else ()
    threads = worker_env(0, jobs, ()).threads if jobs > 1 and device.type == "cpu" else None
    children = []
    if jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        children = [ctx.Process(target=_worker_entry, daemon=False,
                                args=(setups, i, jobs, f"w{i}", threads, ",".join(worker_env(i, jobs, gpus).gpus) or None))
                    for i in range(1, jobs)]
        share = f" ({-(-jobs // len(gpus))} workers per GPU)" if gpus and jobs > len(gpus) else ""
        say(f"{jobs} worker processes, " + (f"GPUs {','.join(gpus)}{share}" if gpus else f"{threads} torch threads each"))
        for c in children:
            c.start()
    old_threads = None
    if threads:
        import torch

        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    old_term = None
    if threading.current_thread() is threading.main_thread():  # a scheduler's SIGTERM: stop like Ctrl-C
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        work_all(setups, 0, jobs, "w0" if jobs > 1 else "", say)
    except BaseException:
        for c in children:  # stop the other workers too; each marks its running trial interrupted
            if c.is_alive():
                c.terminate()
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if old_threads:
            import torch

            torch.set_num_threads(old_threads)
        for c in children:
            c.join()
    bad = [c.exitcode for c in children if c.exitcode not in (0, None)]
    if bad:
        raise BenchError(f"{len(bad)} of {jobs - 1} worker processes failed (exit codes {bad}); see their messages above")


def _worker_entry(setups: list[TuneSetup], index: int, workers: int, tag: str, threads: int | None,
                  gpu: str | None) -> None:
    """A `--jobs` child process: its GPU (before CUDA starts), its threads, the same loop; a user error is
    one line and exit 2."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if threads:
        import torch

        torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # the running trial is marked interrupted, not left RUNNING
    try:
        work_all(setups, index, workers, tag)
    except BenchError as e:
        print(f"bench: error: [{tag}] {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# -------------------------------------------------------------------------------------------- Dask


def _slurm(setups: list[TuneSetup], opts, say: Callable[[str], None]) -> None:
    """--max-jobs SLURM jobs (a worker per GPU), the Dask loops on them; the jobs cancelled at the end. A lost
    job (pre-empted, scancel) loses its loop's running trial only: Dask restarts the loop on a new job."""
    from bench.run import slurm

    results = Path(setups[0].results).resolve()
    slurm.test_submission(opts)
    cluster, client = slurm.start(opts, results)
    try:
        cluster.scale(jobs=opts.max_jobs)  # kept at that size: SpecCluster re-submits a job that is gone
        loops = opts.max_jobs * opts.workers_per_job
        say(f"SLURM: {opts.max_jobs} jobs of {opts.gpus_per_job or 'no'} GPU(s), {opts.cpus_per_job} CPUs, --time {opts.time}")
        _dask(setups, None, say, client=client, loops=loops, gpu=bool(opts.gpus_per_job),
              watch=slurm.Watch(cluster).check)
    finally:
        slurm.close(cluster, client)


def _dask(setups: list[TuneSetup], scheduler: str | None, say: Callable[[str], None], client=None,
          loops: int | None = None, gpu: bool | None = None, watch: Callable[[], None] | None = None) -> None:
    """One worker loop per GPU slot (or thread) of the cluster; progress and tuned files from here.
    (`client`, `loops`, `gpu`: a cluster started here, whose workers have not joined yet; `watch`, called while
    waiting, raises to stop: bench.run.slurm.Watch.)

    Ctrl-C sets a cluster-wide stop event: the loops start no new trial (trials in flight finish)."""
    from distributed import Event

    from bench.run.backends import connect

    setups = [_absolute(s) for s in setups]  # the workers' working directories are not ours
    journals = sorted({describe_storage(s.storage) for s in setups if "://" not in s.storage})
    if journals:
        say(f"note: the journal storage ({journals[0]}{' ...' if len(journals) > 1 else ''}) must be on a filesystem "
            "every Dask worker sees; for workers on other machines use --storage postgresql://...")
    own = client is None
    client = client or connect(scheduler)
    futures: list = []
    try:
        workers = client.scheduler_info().get("workers", {}).values()
        if gpu is None:
            gpu = any("GPU" in (w.get("resources") or {}) for w in workers)
        slots = sum(int((w.get("resources") or {}).get("GPU", 0)) if gpu else int(w.get("nthreads", 1)) for w in workers)
        loops = loops or slots or len(setups)
        if not workers and own:
            say("the Dask scheduler has no workers yet; the studies wait until one joins")
        token = uuid.uuid4().hex[:8]
        stop = Event(f"bench-tune-stop-{token}", client=client)
        futures = [client.submit(_dask_work, setups, i, loops, stop.name, key=f"bench-tune-{token}-{i}", pure=False,
                                 resources={"GPU": 1} if gpu else None) for i in range(loops)]
        say(f"{loops} worker loops on the Dask cluster at {scheduler or client.scheduler.address}")
        shown: dict[str, str] = {}
        try:
            next_poll = time.monotonic() + POLL_S
            while not all(f.done() for f in futures):
                time.sleep(0.5)
                if watch is not None:
                    watch()
                if time.monotonic() >= next_poll:
                    _show_changes(setups, shown, say)
                    next_poll = time.monotonic() + POLL_S
        except KeyboardInterrupt:
            stop.set()
            raise
        errors = [one_line(f.exception()) for f in futures if f.status == "error"]
    finally:
        client.cancel([f for f in futures if not f.done()])
        if own:
            client.close()
    if errors:
        raise BenchError(f"{len(errors)} of {loops} Dask worker loops failed, e.g. {errors[0]}")


def _show_changes(setups: list[TuneSetup], shown: dict[str, str], say: Callable[[str], None]) -> None:
    for setup in setups:
        line = state_line(setup, summarise(setup))
        if shown.get(setup.study) != line:
            shown[setup.study] = line
            say(line)


def _absolute(setup: TuneSetup) -> TuneSetup:
    storage = setup.storage if "://" in setup.storage else str(Path(setup.storage).resolve())
    return replace(setup, storage=storage, data_root=Path(setup.data_root).resolve(), results=Path(setup.results).resolve())


def _dask_work(setups: list[TuneSetup], index: int, loops: int, stop_name: str) -> None:
    """Inside a Dask worker: its GPU and threads (bench.run.gpus, as for runs), then the loop (no tuned files from
    here)."""
    from distributed import Event

    from bench.run.backends import dask_worker_setup

    dask_worker_setup({})
    stop = Event(stop_name)
    work_all(setups, index, loops, f"d{index}", export_best=False, stop=stop.is_set)
