"""The dispatcher: decide which runs of a grid to do, hand them to a backend, store what comes back.

One process owns the result store: it holds the results lock, and workers only train and return a
run's row, history, predictions and log; so each run is written by one process, whole, the row last
(bench.store.writer), whatever the backend.

Resume rule: a run stored `ok` is skipped; a run stored `failed` is retried on every `bench run`
(unless `retry_failed=False`, `bench run --skip-failed`); `force` reruns everything. Each row records
its `attempt` number. A SIGKILL at any moment leaves only whole files plus temp files and live logs,
which the next `bench run` removes before it starts. Consecutive runs sharing a dataset and LLM layer
are ordered together so a worker's in-memory caches get reused.

Faults: a store write the folder refuses (full, read-only, removed) stops the grid at once, with the runs
in flight stored failed where the folder still takes it, and raises StoreUnwritable naming the folder and
the space or permission needed. SIGTERM or Ctrl-C (`interrupt`) wait for the run being written to be
whole, then stop the workers; nothing is marked ok that is not, and the same command resumes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bench import store
from bench.config import RunConfig, run_id
from bench.data import resolve_root
from bench.errors import BenchError
from bench.models.registry import VARIANTS
from bench.run import backends, slurm
from bench.run import gpus as gpu_rule
from bench.run.preflight import preflight
from bench.run.progress import LiveLogs
from bench.run.worker import Task, execute, lost
from bench.run.worker import now as worker_now
from bench.store import layout, portable
from bench.store.writer import StoreUnwritable, mb, unwritable

BACKENDS = ("local", "dask", "slurm")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to execute a grid (none of this changes a number, so none of it is in the run id)."""

    device: str | None = None  # auto | cpu | cuda | cuda:N
    force: bool = False  # rerun runs stored ok (a failed rerun keeps the ok row)
    retry_failed: bool = True  # False: leave runs stored failed alone (--skip-failed)
    jobs: int = 1  # local worker processes
    runs_per_gpu: int | None = None  # K runs at once on each visible GPU (sets jobs)
    backend: str = "local"  # local | dask
    scheduler: str | None = None  # the Dask scheduler address
    bars: bool | None = None  # progress bars: None = when the terminal is interactive
    worker_retries: int = 1  # times a run whose worker process died (or Dask worker was lost) is started again
    portable: bool = False  # scrub host name and absolute paths from rows and logs (the grid's `portable: true`)
    slurm: object | None = None  # bench.run.slurm.SlurmOptions, for backend slurm
    tracker: object | None = None  # bench.tracker.Tracker: each stored run logged live (never fatal)

    def check(self) -> RunOptions:
        """The options as the dispatcher uses them (runs_per_gpu turned into jobs); mistakes -> one line."""
        jobs = self.jobs
        if self.runs_per_gpu is not None:
            gpus = backends.visible_gpus()
            if (self.runs_per_gpu < 1 or not gpus or self.backend != "local"
                    or self.device not in (None, "", "auto", "cuda")):
                raise BenchError("--runs-per-gpu K needs K >= 1, CUDA GPUs, the local backend and --device auto or "
                                 "cuda; on CPU use --jobs N")
            jobs = self.runs_per_gpu * len(gpus)
        elif self.jobs > 1 and self.backend == "local" and self.device in (None, "", "auto", "cuda"):
            gpu_rule.check_workers(self.jobs, len(backends.visible_gpus()), None)
        if self.backend not in BACKENDS:
            raise BenchError(f"unknown backend '{self.backend}': use one of {', '.join(BACKENDS)}")
        if self.backend == "dask" and not self.scheduler:
            raise BenchError("--backend dask needs --scheduler ADDRESS (e.g. tcp://10.0.0.1:8786)")
        if self.scheduler and self.backend != "dask":
            raise BenchError("--scheduler is for --backend dask; add --backend dask")
        if jobs < 1:
            raise BenchError(f"--jobs must be >= 1, got {jobs}")
        if self.worker_retries < 0:
            raise BenchError(f"--worker-retries must be >= 0 (0: a run whose worker dies is stored failed at once), "
                             f"got {self.worker_retries}")
        if self.backend in ("dask", "slurm") and jobs != 1:
            raise BenchError(f"--jobs is for the local backend; a {self.backend.capitalize()} cluster runs as many runs "
                             "as its workers allow")
        if (self.backend == "slurm") != (self.slurm is not None):
            raise BenchError("--backend slurm goes with its job options (--partition, --time, ...); the SLURM options "
                             "are for --backend slurm")
        return dataclasses.replace(self, jobs=jobs)


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


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal (SIGTERM from a scheduler or `timeout`, SIGINT from Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_SHIELD = {"on": False, "pending": None}  # a signal that arrived while a run's files were being written


def interrupt(signum: int, frame=None) -> None:
    """Signal handler for `bench run`: stop like Ctrl-C, but never in the middle of writing a run."""
    if _SHIELD["on"]:
        _SHIELD["pending"] = signum
        return
    raise Interrupted(signum)


def _commit_whole(results: Path, out: dict, previous: str | None) -> str:
    """store.commit with interrupt() held off until the run is written: a run that finished is stored."""
    _SHIELD["on"], _SHIELD["pending"] = True, None
    try:
        return store.commit(results, out, previous)
    finally:
        _SHIELD["on"] = False
        if _SHIELD["pending"] is not None:
            signum, _SHIELD["pending"] = _SHIELD["pending"], None
            raise Interrupted(signum)


def wanted(status: str | None, force: bool = False, retry_failed: bool = True) -> bool:
    """The resume rule: run it if not stored, or stored failed (unless `retry_failed=False`); with force, always."""
    return force or status is None or (retry_failed and status == "failed")


def _order(runs: list[RunConfig]) -> list[RunConfig]:
    """Group runs sharing a dataset and LLM layer (first-appearance order) so a worker's caches get reused."""
    def key(c: RunConfig):
        return (c.data.task, c.data.size, c.booster.source or "", c.booster.layer)

    first: dict = {}
    for i, c in enumerate(runs):
        first.setdefault(key(c), i)
    return sorted(runs, key=lambda c: first[key(c)])


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe(cfg: RunConfig) -> str:
    b = cfg.booster
    llm = f" {Path(b.source).name if b.source else ''}@{b.layer}" if VARIANTS[b.variant].has_layer else ""
    return f"{cfg.label} {cfg.data.task}@{cfg.data.size}{llm} seed={cfg.seed}"


def _attempts(results: Path, ids: list[str]) -> dict[str, int]:
    out = {}
    for rid in ids:
        row = store.read_run(results, rid) or {}
        a = row.get("attempt")
        out[rid] = int(a) if a is not None and pd.notna(a) else 1
    return out


def run_all(runs: list[RunConfig], data_root: str | Path | None, results: Path, options: RunOptions = RunOptions(),
            echo: Callable[[str], None] | None = None) -> Summary:
    """Run what is not stored ok yet; returns a Summary. Raises KeyboardInterrupt after a clean stop."""
    opts = options.check()
    echo = echo or print
    results = Path(results).expanduser().resolve()
    root = resolve_root(data_root).resolve()
    ids = {id(c): run_id(c) for c in runs}

    def to_do(before):
        return [c for c in runs if wanted(before[ids[id(c)]], opts.force, opts.retry_failed)]

    if opts.backend == "local":
        from bench.train import pick_device

        pick_device(opts.device)  # an unusable --device is the user's to fix, before anything runs
    preflight(to_do(store.statuses(results, ids.values())), root)  # before the results directory is touched
    client = backends.connect(opts.scheduler) if opts.backend == "dask" else None
    cluster = est = None
    if opts.backend == "slurm":
        est = slurm.preflight(to_do(store.statuses(results, ids.values())), opts.slurm)
        cluster, client = slurm.start(opts.slurm, results)
    try:
        with store.results_lock(results):
            removed = store.clean_stale(results)
            try:
                (results / layout.LOGS).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise unwritable(results, e, results / layout.LOGS) from e
            if removed:
                echo(f"removed {removed} temp/live-log files left by an interrupted run")
            before = store.statuses(results, ids.values())
            todo = to_do(before)  # again, under the lock
            summary = Summary(total=len(runs), skipped=len(runs) - len(todo), rows=[], kept=[])
            if not todo:
                return summary
            attempts = _attempts(results, [ids[id(c)] for c in todo if before[ids[id(c)]] is not None])
            tasks = [Task(cfg=c, data_root=str(root), live_log=str(layout.running_log_path(results, ids[id(c)])),
                          device=opts.device, attempt=attempts.get(ids[id(c)], 0) + 1) for c in _order(todo)]
            return _dispatch(tasks, results, before, summary, opts, client, echo, est)
    finally:
        if cluster is not None:
            slurm.close(cluster, client)
        elif client is not None:
            client.close()


def _dispatch(tasks: list[Task], results: Path, before: dict, summary: Summary, opts: RunOptions, client,
              echo: Callable[[str], None], est: dict | None = None) -> Summary:
    from tqdm.auto import tqdm

    n = len(tasks)
    bar = tqdm(total=n, unit="run", desc="runs", disable=None if opts.bars is None else not opts.bars,
               dynamic_ncols=True, position=0)
    slot_dir = None

    def epoch_bar(task: Task):
        """The live progress of one run (serial backend): a tqdm bar of its epochs on a terminal; else one line
        when it starts and one per epoch (epoch, loss, val AUC, the run's ETA), so a log is never silent for
        more than an epoch and never floods."""
        cfg, t_run = task.cfg, time.perf_counter()
        epochs, head = cfg.train.epochs, f"  run {len(summary.rows) + 1}/{n} {describe(cfg)}"
        if bar.disable:
            print(f"{head}: started ({epochs} epochs)", flush=True)
        else:
            inner = tqdm(total=epochs, unit="epoch", desc=f"  {cfg.label}", leave=False, position=1,
                         dynamic_ncols=True)

        def update(epoch, rec):
            elapsed = time.perf_counter() - t_run
            eta = _fmt_s(elapsed / (epoch + 1) * (epochs - epoch - 1))
            if bar.disable:
                print(f"{head}: epoch {epoch + 1}/{epochs} loss {rec['train_loss']:.4f} val_auc {rec['val_auc']:.4f} "
                      f"({_fmt_s(elapsed)} so far, eta {eta})", flush=True)
                return
            inner.update(1)
            inner.set_postfix(loss=f"{rec['train_loss']:.3f}", val_auc=f"{rec['val_auc']:.3f}", eta=eta)
            if epoch + 1 >= epochs:
                inner.close()
        return update

    t0 = time.perf_counter()
    stream = committing = None
    tail = None
    try:
        serial = opts.backend == "local" and (opts.jobs == 1 or n == 1)
        if not serial:  # workers in other processes: their epochs from the live logs they write
            tail = LiveLogs({Path(t.live_log): describe(t.cfg) for t in tasks if t.live_log},
                            lambda text: bar.write(text, file=sys.stdout))
            tail.start()
        if serial:
            stream = backends.serial(tasks, epoch_bar)
        elif opts.backend == "local":
            jobs = min(opts.jobs, n)
            slot_dir = tempfile.mkdtemp(prefix="bench-slots-")
            gpus = backends.visible_gpus() if opts.device in (None, "", "auto", "cuda") else ()
            cpus = gpu_rule.usable_cpus()
            if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # a cap on each worker's threads
                cpus = max(1, min(cpus, int(os.environ["OMP_NUM_THREADS"]) * jobs))
            setup = backends.PoolSetup(slot_dir=slot_dir, n_slots=jobs, cpus=cpus, gpus=gpus, dispatcher_pid=os.getpid())
            share = f"{-(-jobs // len(gpus))} per GPU" if gpus and jobs > len(gpus) else "one each"
            echo(f"{jobs} worker processes, " + (f"GPUs {','.join(gpus)} ({share}), " if gpus else "")
                 + f"{setup.threads} torch threads each")
            stream = backends.pool(tasks, jobs, setup, results, opts.worker_retries)
        elif opts.backend == "slurm":
            stream = slurm.runs(tasks, client.cluster, client, opts.slurm, est, opts.worker_retries)
        else:
            stream = backends.dask(tasks, client, opts.worker_retries)
        for task, out in stream:
            if opts.portable:
                out = portable.scrub_outcome(out, Path(task.data_root), results)
            row = out["row"]
            committing = row
            try:
                what = _commit_whole(results, out, before.get(row["run_id"]))
            except StoreUnwritable as e:
                bar.close()
                raise _stop_unwritable(e, task, out, tasks, summary, stream, results, before) from None
            committing = None
            if opts.tracker is not None:  # after the commit: what the tracker shows is what is stored
                opts.tracker.log(results, row["run_id"])
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
                layout.running_log_path(results, run_id(t.cfg)).unlink(missing_ok=True)
        echo(f"interrupted: {len(summary.rows)} runs finished and stored, {n - len(summary.rows)} not; "
             "rerun the same command to resume")
        raise
    finally:
        if tail is not None:
            tail.stop()
        bar.close()
        if slot_dir:
            shutil.rmtree(slot_dir, ignore_errors=True)
    return summary


def _stop_unwritable(err: StoreUnwritable, task: Task, out: dict, tasks: list[Task], summary: Summary, stream,
                     results: Path, before: dict) -> StoreUnwritable:
    """Stop the grid on a store write the folder refused: stop the workers, store the runs in flight as
    failed where the folder still takes it (a small row may fit where predictions did not), and return the
    error with what was kept and what to do."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joblib's note that it cancelled the running tasks
        stream.close()
    done = {r["run_id"] for r in summary.rows}
    in_flight = [task] + [t for t in tasks if run_id(t.cfg) not in done and t is not task
                          and layout.running_log_path(results, run_id(t.cfg)).exists()]
    why = f"stopped: {err}"
    stored_failed = 0
    if err.kind != "removed":
        for t in in_flight:
            failed = dict(lost(t, why), log=(out["log"] if t is task else "") + f"{worker_now()} {why}\n")
            if t is task:
                failed["row"] = {**out["row"], "status": "failed", "error": why[:500]}
            try:
                store.commit(results, failed, before.get(run_id(t.cfg)))
                stored_failed += 1
            except (StoreUnwritable, OSError):
                break
    left = len(tasks) - len(summary.rows)
    index_bytes = sum(f.stat().st_size for f in (results / layout.INDEX).glob("*.parquet")) if err.kind == "full" else 0
    need = (f"; about {mb(err.needed * left + index_bytes)} for the {left} runs left and a rewrite of the index"
            if err.kind == "full" and left > 1 else "")
    kept = (f"{len(summary.rows)} runs stored, {left} not" + (f" ({stored_failed} in flight stored as failed)"
                                                                if stored_failed else ""))
    return StoreUnwritable(err.results, err.kind, err.detail, err.needed,
                           then=f"stopped with {kept}; {err.fix}{need}, then rerun the same command to resume")


def run_one(cfg: RunConfig, data_root: Path, results: Path, device: str | None = None) -> dict:
    """Train one config in this process and store it (failed runs too); returns its row."""
    results = Path(results)
    rid = run_id(cfg)
    with store.results_lock(results):
        previous = store.statuses(results, [rid])[rid]
        (results / layout.LOGS).mkdir(parents=True, exist_ok=True)
        attempt = _attempts(results, [rid]).get(rid, 0) + 1 if previous else 1
        out = execute(Task(cfg=cfg, data_root=str(resolve_root(data_root)),
                           live_log=str(layout.running_log_path(results, rid)), device=device, attempt=attempt))
        _commit_whole(results, out, previous)
    return out["row"]
