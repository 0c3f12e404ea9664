"""The SLURM backend: a grid's runs on SLURM jobs, through dask-jobqueue's SLURMCluster.

Why dask-jobqueue rather than submitit: the suite already dispatches to Dask (bench.run.backends.dask), with
the store written by this process alone, a lost worker's run moved to another worker and its starts
counted for --worker-retries; SLURMCluster only adds the jobs. The dispatcher (this process) hosts the Dask
scheduler; each SLURM job is one Dask worker process per GPU (one run at a time each, `--resources GPU=1`),
or one worker on a CPU-only cluster (--gpus-per-job 0).

Jobs follow the grid: at most --max-jobs, never more than the runs not yet finished (fewer as the grid
drains), a job whose worker was lost (scancel, pre-emption, node failure) is replaced, and all are
cancelled when the grid ends or is stopped. A worker killed mid-run (SIGTERM from the scheduler) returns
nothing: its run is not stored and Dask starts it on another worker, at most --worker-retries times.

Time limit: before starting a run, a worker asks SLURM when its job ends (`squeue -o %e`, so a changed limit
counts) and starts the run only if its estimate fits (`estimates`: on GPU jobs bench.cost's FLOPs at --gpu's
peak x --utilisation, on CPU jobs its steps timed on this machine's CPU; plus START_S to load data and model);
otherwise the run goes back to the scheduler, the worker leaves and its job ends, and a fresh job (with its
whole time limit) takes the run. A run whose estimate exceeds the time limit itself is refused before anything
is submitted.

Submission faults: before any folder or job, `sbatch --test-only` is given the job script bench would submit,
so a wrong partition, GPUs, CPUs or memory no node has, a missing slurm.conf or an unreachable slurmctld is
SLURM's own one-line refusal. A later submission that sbatch refuses (slurmctld gone mid-grid), or a job left
pending for a reason that never clears, stops the grid with that line (`Watch`); other pending reasons are
printed after PENDING_NOTE_S.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.config import RunConfig, run_id
from bench.errors import BenchError, one_line
from bench.run.backends import restarted
from bench.run.worker import Task, execute, lost

START_S = 120.0  # a run's start-up beyond its FLOPs (data, model and LLM layer loading), for the time check
KEYS = ("partition", "account", "time", "gpus_per_job", "cpus_per_job", "mem", "max_jobs", "sbatch", "python",
        "log_dir", "interface", "scheduler_address")
INTEGERS = ("gpus_per_job", "cpus_per_job", "max_jobs")
SBATCH_TIMEOUT_S = 45.0  # sbatch gives up on an unreachable slurmctld after ~20 s
PENDING_NOTE_S = 60.0  # no worker yet after this long: say why SLURM keeps the jobs pending
CALIBRATION_STEPS = 3  # timed steps per distinct model, for the CPU estimate
# squeue reasons a pending job never leaves by itself: the request exceeds what the partition, QOS or account allow
NEVER = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
         "InvalidQOS", "AccountNotAllowed", "QOSNotAllowed", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob",
         "QOSMaxMemoryPerJob", "QOSMaxWallDurationPerJobLimit")


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """The cluster's knobs: sbatch's, per job (`--slurm-config FILE` or the matching CLI options)."""

    partition: str | None = None  # -p
    account: str | None = None  # -A
    time: str = "24:00:00"  # --time, per job (HH:MM:SS, D-HH:MM:SS or minutes)
    gpus_per_job: int = 1  # --gres=gpu:N, one worker (one run at a time) per GPU; 0 on a CPU-only cluster
    cpus_per_job: int = 8  # --cpus-per-task; split between the job's workers for torch threads
    mem: str = "64GB"  # --mem, per job
    max_jobs: int = 8  # jobs at once
    sbatch: tuple[str, ...] = ()  # extra #SBATCH lines, e.g. "--qos=high" or "--constraint=h100"
    python: str | None = None  # the Python on the nodes (default: this one, so a shared venv)
    log_dir: str | None = None  # the jobs' stdout/stderr (default <results>/logs/slurm)
    interface: str | None = None  # the network interface scheduler and workers use, e.g. ib0 (default: the first)
    scheduler_address: str | None = None  # the host or IP the scheduler listens on, that the workers reach
    gpu: str | None = None  # bench.cost's GPU for the estimate (bench run --gpu)
    utilisation: float | None = None  # and its utilisation (bench run --utilisation)

    def check(self) -> SlurmOptions:
        walltime_s(self.time)
        if self.interface:
            from distributed.utils import get_ip_interface

            try:
                get_ip_interface(self.interface)
            except ValueError as e:
                raise BenchError(f"--interface: {one_line(e)}") from None
        for name in ("gpus_per_job", "cpus_per_job", "max_jobs"):
            low = 0 if name == "gpus_per_job" else 1
            if getattr(self, name) < low:
                raise BenchError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        if self.gpus_per_job and self.cpus_per_job < self.gpus_per_job:
            raise BenchError(f"--cpus-per-job {self.cpus_per_job} < --gpus-per-job {self.gpus_per_job}: each GPU's "
                             "worker needs a core; raise --cpus-per-job")
        return self

    @property
    def workers_per_job(self) -> int:
        return max(1, self.gpus_per_job)


def load_options(path: str | Path | None, **cli) -> SlurmOptions:
    """--slurm-config FILE (YAML, the keys of SlurmOptions) under the CLI options given (not None)."""
    base: dict = {}
    if path:
        import yaml

        try:
            base = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise BenchError(f"cannot read --slurm-config {path} ({one_line(e)}); give a YAML file of "
                             f"{', '.join(KEYS)}") from None
        if not isinstance(base, dict):
            raise BenchError(f"--slurm-config {path} is not a mapping of keys; give a YAML file of {', '.join(KEYS)}")
        unknown = set(base) - set(KEYS)
        if unknown:
            raise BenchError(f"--slurm-config {path}: unknown keys {sorted(unknown)}; use {', '.join(KEYS)}")
        for k, v in base.items():
            if k in INTEGERS and (not isinstance(v, int) or isinstance(v, bool)):
                raise BenchError(f"--slurm-config {path}: {k} must be a whole number, got {v!r}")
            if k not in INTEGERS and k != "sbatch" and not isinstance(v, (str, int, float)):
                raise BenchError(f"--slurm-config {path}: {k} must be a single value, got {v!r}")
    merged = {**base, **{k: v for k, v in cli.items() if v is not None and v != ()}}
    if isinstance(merged.get("sbatch"), str):
        merged["sbatch"] = [merged["sbatch"]]
    merged["sbatch"] = tuple(merged.get("sbatch") or ())
    for k in set(merged) - set(INTEGERS) - {"sbatch", "gpu", "utilisation"}:
        if merged[k] is not None:
            merged[k] = str(merged[k])
    return SlurmOptions(**merged).check()


def walltime_s(text: str) -> float:
    """SLURM's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise BenchError(f"--time {text!r} is not a SLURM time limit; use HH:MM:SS or D-HH:MM:SS, e.g. 24:00:00")
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:  # D-H[:M[:S]]
        return d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)  # M or M:S


def estimates(runs: list[RunConfig], opts: SlurmOptions) -> dict[str, float | None]:
    """Each run's expected seconds (run id -> s, None where unknown), START_S included. GPU jobs: its FLOPs at
    --gpu's peak x --utilisation. CPU jobs (--gpus-per-job 0): FLOPs say little there, so each distinct model's
    training and eval steps are timed on this machine's CPU with the job's threads (bench.run.calibrate, as
    `bench list --cpu-estimate`), which assumes the nodes' CPUs are as fast as this one's."""
    from bench import cost

    if not opts.gpus_per_job:
        from bench.run import calibrate

        threads = min(opts.cpus_per_job, calibrate.cores())
        n = len({calibrate.setting(c) for c in runs})
        print(f"bench: SLURM: timing {n} distinct models on this CPU ({threads} threads) for the --time guard of CPU "
              "jobs", file=sys.stderr, flush=True)
        timings = calibrate.timings(runs, threads, CALIBRATION_STEPS)
        return {run_id(c): calibrate.run_seconds(c, timings[calibrate.setting(c)]) + START_S for c in runs}
    gpu = cost.GPUS[opts.gpu or cost.DEFAULT_GPU]
    peak = gpu.tflops * 1e12 * (opts.utilisation or cost.DEFAULT_UTILISATION)
    return {run_id(c): None if (f := cost.run_flops(c)) is None else f / peak + START_S for c in runs}


def check_fits(runs: list[RunConfig], opts: SlurmOptions) -> dict[str, float | None]:
    """Refuse a grid with a run that cannot finish within one job's time limit; the runs' `estimates`."""
    limit = walltime_s(opts.time)
    est = estimates(runs, opts)
    too_long = [(e, c) for c in runs if (e := est[run_id(c)]) is not None and e > limit]
    if too_long:
        e, c = max(too_long, key=lambda x: x[0])
        fix = ("its steps timed on this machine's CPU with --cpus-per-job threads; raise --time or --cpus-per-job"
               if not opts.gpus_per_job else "raise --time, or --utilisation if your GPUs do better")
        raise BenchError(f"{len(too_long)} runs are estimated longer than --time {opts.time} (the longest, "
                         f"{run_id(c)}, {f'{e / 3600:.1f} h' if e >= 3600 else f'{e / 60:.0f} min'}: {fix})")
    return est


def preflight(runs: list[RunConfig], opts: SlurmOptions) -> dict[str, float | None]:
    """What can be known before any folder or job exists, quickest first: the time guard of GPU jobs (FLOPs),
    SLURM's answer (`test_submission`, seconds), the time guard of CPU jobs (timing this CPU, maybe minutes).
    Returns the runs' `estimates`."""
    est = check_fits(runs, opts) if opts.gpus_per_job else None
    test_submission(opts)
    return est if est is not None else check_fits(runs, opts)


# ----------------------------------------------------------------------------------------- the cluster


def _jobqueue():
    """dask-jobqueue's SLURM classes. Importing it sets its own SIGINT handler (dask_jobqueue/runner.py: exit 0
    on Ctrl-C); bench's is put back, so an interrupted grid exits 130 with its "interrupted" line."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        from dask_jobqueue.slurm import SLURMCluster, SLURMJob
    except ImportError:
        raise BenchError("--backend slurm needs dask-jobqueue: pip install -e '.[slurm]'") from None
    finally:
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
    return SLURMCluster, SLURMJob


def _job_options(opts: SlurmOptions, logs: Path | None) -> dict:
    """dask-jobqueue's job keywords for these options (the jobs' output under `logs`)."""
    n = opts.workers_per_job
    walltime = walltime_s(opts.time)
    directives = [f"--gres=gpu:{opts.gpus_per_job}"] if opts.gpus_per_job else []
    if logs is not None:
        directives += [f"--output={logs}/%x-%j.out", f"--error={logs}/%x-%j.err"]
    return dict(
        queue=opts.partition, account=opts.account, walltime=opts.time, job_cpu=opts.cpus_per_job,
        cores=n, processes=n, memory=opts.mem, job_mem=opts.mem, job_name="bench",
        job_extra_directives=[*directives, *opts.sbatch], python=opts.python or sys.executable,
        worker_extra_args=["--resources", "GPU=1"] if opts.gpus_per_job else [],
        # the job's end for workers that cannot ask squeue; memory is SLURM's to enforce (--mem): Dask's
        # worker would pause or restart a run's worker at a share of it (a restart costs the run a retry)
        job_script_prologue=[f"export BENCH_SLURM_END=$(( $(date +%s) + {int(walltime)} ))",
                             *(f"export DASK_DISTRIBUTED__WORKER__MEMORY__{k}=False"
                               for k in ("TARGET", "SPILL", "PAUSE", "TERMINATE"))],
        death_timeout=120)


def sbatch_message(text: str) -> str:
    """sbatch's reason in one line, from its stderr (or dask-jobqueue's error quoting it)."""
    lines = [ln.strip() for ln in text.splitlines()
             if re.match(r"(sbatch: (error|fatal)|allocation failure)", ln.strip())]
    fatal = [ln for ln in lines if ln.startswith("sbatch: fatal")]
    picked = fatal[-1:] or list(dict.fromkeys(lines))
    return ("; ".join(picked) or one_line(text) or "no message")[:400]


def test_submission(opts: SlurmOptions) -> None:
    """`sbatch --test-only` of the job script bench would submit (nothing is queued): SLURM's own refusal of
    what no node can run, before any folder or job exists."""
    _, SLURMJob = _jobqueue()
    if not shutil.which("sbatch"):
        raise BenchError("--backend slurm: sbatch not found; run bench on a SLURM login node (or add SLURM's bin "
                         "folder to PATH)")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # sbatch would retry reading it for 60 s
        raise BenchError(f"SLURM_CONF={conf} is not a file; point it at the cluster's slurm.conf or unset it")
    try:
        script = SLURMJob("tcp://127.0.0.1:8786", name="bench-check", **_job_options(opts, None)).job_script()
    except Exception as e:  # noqa: BLE001 - a bad memory string...
        raise BenchError(f"cannot write the SLURM job script ({one_line(e)}); check --mem, --time and the "
                         "--slurm-config keys") from None
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="bench-check-") as f:
        f.write(script)
        f.flush()
        try:
            r = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True,
                               timeout=SBATCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BenchError(f"sbatch --test-only did not answer in {SBATCH_TIMEOUT_S:.0f} s; is slurmctld up "
                             "(`scontrol ping`)?") from None
    if r.returncode:
        raise BenchError(f"SLURM refuses the job ({sbatch_message(r.stderr + r.stdout)}); nothing submitted: check "
                         "--partition, --gpus-per-job (0 on a cluster without GPUs), --cpus-per-job and --mem "
                         "against `sinfo -o '%P %c %m %G'`")


def start(opts: SlurmOptions, results: Path):
    """A SLURMCluster for these options (no job yet: `runs` scales it) and its Client; call `test_submission`
    first."""
    from distributed import Client

    SLURMCluster, SLURMJob = _jobqueue()
    logs = (Path(opts.log_dir) if opts.log_dir else results / "logs" / "slurm").resolve()
    scheduler = {"host": opts.scheduler_address} if opts.scheduler_address else {}
    try:
        cluster = SLURMCluster(job_cls=_refusal_keeping(SLURMJob), name="bench", interface=opts.interface,
                               scheduler_options=scheduler, **_job_options(opts, logs))
    except Exception as e:  # noqa: BLE001 - an address the scheduler cannot listen on...
        raise BenchError(f"cannot start the Dask scheduler for SLURM ({one_line(e)}); check --interface and "
                         "--scheduler-address") from None
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        cluster.close()
        raise BenchError(f"cannot create the SLURM log folder {logs} ({e.strerror}); pass a writable --results "
                         "or log_dir") from None
    return cluster, Client(cluster, set_as_default=False)


def _refusal_keeping(SLURMJob):
    class Job(SLURMJob):
        """A job whose sbatch failed keeps sbatch's message (`Watch` stops the grid with it) instead of raising
        it into Dask's event loop, which logs a traceback and waits for the job forever. It counts as started,
        with no job id: nothing to cancel."""

        refused: list[str] = []

        async def start(self):
            try:
                await super().start()
            except RuntimeError as e:
                from distributed.core import Status

                type(self).refused.append(sbatch_message(str(e)))
                self.status = Status.running
    return Job


class Watch:
    """What the dispatcher checks while it waits on SLURM jobs: a refused submission or a job pending for a
    reason that never clears stops the grid (BenchError, one line); with no worker yet after PENDING_NOTE_S,
    squeue's reasons are printed (again when they change)."""

    def __init__(self, cluster, say=None):
        self.cluster, self.t0, self.said, self.next_squeue = cluster, time.monotonic(), None, 0.0
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def check(self) -> None:
        refused = getattr(self.cluster.job_cls, "refused", [])
        if refused:
            raise BenchError(f"SLURM refused a job ({refused[0]}); stopped, finished runs are kept: fix it (`scontrol "
                             "ping`, `sinfo`) and rerun the same command to resume")
        now = time.monotonic()
        if self.cluster.scheduler_info.get("workers") or now - self.t0 < PENDING_NOTE_S or now < self.next_squeue:
            return
        self.next_squeue = now + 10
        jobs = [j.job_id for j in list(self.cluster.workers.values()) if getattr(j, "job_id", None)]
        if not jobs:
            return
        try:
            out = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%T %r"], capture_output=True,
                                 text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return
        reasons = sorted({r for state, r in (ln.split(None, 1) for ln in out.splitlines() if " " in ln)
                          if state == "PENDING"})
        never = [r for r in reasons if r in NEVER]
        if never:
            raise BenchError(f"SLURM keeps the jobs pending ({', '.join(never)}): no job of these options can "
                             "start there; check --partition, --gpus-per-job, --cpus-per-job, --mem and --time "
                             "against the partition's limits (`scontrol show partition`)")
        if reasons and reasons != self.said:
            self.said = reasons
            self.say(f"bench: SLURM: {len(jobs)} jobs pending after {_ago(self.t0)} (squeue reason: "
                     f"{', '.join(reasons)}); the runs start when SLURM starts a job")


def _ago(t0: float) -> str:
    s = int(time.monotonic() - t0)
    return f"{s // 60}m{s % 60:02d}s"


def job_end() -> float | None:
    """When this SLURM job ends (unix time): squeue's answer (a limit changed with scontrol counts), else the
    job script's start + time limit."""
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        try:
            out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
            return dt.datetime.fromisoformat(out).timestamp()  # local time, as squeue prints it
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    end = os.environ.get("BENCH_SLURM_END")
    return float(end) if end else None


def _slurm_execute(task: Task, starts_key: str, worker_retries: int, est_s: float | None, threads: int,
                   workers_per_job: int) -> dict:
    """Inside a worker of a SLURM job: start the run only if it fits in the job's time left (else hand it
    back and leave, so a fresh job takes it), count the start (a restart means a lost worker), pick this
    worker's GPU, then run."""
    import torch
    from distributed import Reschedule, Variable, get_worker

    worker = get_worker()
    end = job_end()
    if est_s is not None and end is not None and time.time() + est_s > end:
        print(f"bench: {run_id(task.cfg)} needs ~{est_s:.0f}s, this job has {end - time.time():.0f}s left: "
              "handing it back and ending the job", file=sys.stderr, flush=True)
        worker.loop.add_callback(worker.close_gracefully, reason="bench: too little time left in the SLURM job")
        raise Reschedule()
    starts = Variable(starts_key)
    n = int(starts.get()) + 1  # set to 0 at submission
    starts.set(n)
    if n > 1:
        task = restarted(task, n, "its SLURM job's worker was lost (the job cancelled, pre-empted, timed out or its "
                                  "node gone)")
    if n > worker_retries + 1:
        return lost(task, f"its SLURM job's worker was lost {n - 1} times (--worker-retries {worker_retries}); "
                          "often the job pre-empted, cancelled or killed for memory")
    gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
    if workers_per_job > 1 and len(gpus) >= workers_per_job and not torch.cuda.is_initialized():
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[int(str(worker.name).rsplit("-", 1)[-1]) % len(gpus)]
    torch.set_num_threads(threads)
    out = execute(task)
    out["row"]["slurm_job_id"] = os.environ.get("SLURM_JOB_ID")
    return out


def runs(tasks: list[Task], cluster, client, opts: SlurmOptions, est: dict[str, float | None],
         worker_retries: int = 1) -> Iterator[tuple[Task, dict]]:
    """Submit every run, keep the jobs at min(--max-jobs, runs unfinished), yield runs as they finish; `est`:
    the runs' `estimates` (check_fits'). A refused submission stops the grid (`Watch`)."""
    from distributed import Variable, as_completed

    n = opts.workers_per_job
    threads = max(1, opts.cpus_per_job // n)
    token = uuid.uuid4().hex[:8]
    by_key, futures = {}, []
    for t in tasks:
        key = f"bench-run-{run_id(t.cfg)}-{token}"
        Variable(f"{key}-starts", client=client).set(0)
        fut = client.submit(_slurm_execute, t, f"{key}-starts", worker_retries, est.get(run_id(t.cfg)), threads, n,
                            key=key, pure=False, resources={"GPU": 1} if opts.gpus_per_job else None)
        by_key[fut.key] = t
        futures.append(fut)
    left = [len(futures)]
    adaptive = cluster.adapt(Adaptive=_grid_adaptive(), runs_left=lambda: left[0], minimum=0,
                             maximum=opts.max_jobs * n, interval="2s", wait_count=2)
    print(f"bench: SLURM: up to {opts.max_jobs} jobs of {opts.gpus_per_job or 'no'} GPU(s), {opts.cpus_per_job} CPUs, "
          f"{opts.mem}, --time {opts.time}" + (f", partition {opts.partition}" if opts.partition else "")
          + ("; the time guard prices runs at this machine's CPU speed" if not opts.gpus_per_job else ""),
          file=sys.stderr, flush=True)
    watch, finished = Watch(cluster), as_completed(futures, loop=client.loop)
    try:
        while not finished.is_empty():
            done = finished.next_batch(block=False) if finished.has_ready() else []
            if not done:
                time.sleep(0.5)
            watch.check()
            for fut in done:
                t = by_key[fut.key]
                try:
                    out = fut.result()
                except Exception as e:  # noqa: BLE001 - KilledWorker, a lost worker, unpicklable result...
                    out = lost(t, f"the Dask task on SLURM failed ({one_line(e)})")
                fut.release()
                try:
                    Variable(f"{fut.key}-starts", client=client).delete()
                except Exception:  # noqa: BLE001, S110 - the start counter is only bookkeeping
                    pass
                left[0] -= 1
                yield t, out
    finally:
        adaptive.stop()
        client.cancel([f for f in futures if not f.done()])


def _grid_adaptive():
    from distributed.deploy.adaptive import Adaptive

    class GridAdaptive(Adaptive):
        """Dask's Adaptive with the grid's own target: one worker per run not yet finished (Dask's guess from
        task durations would start one job for a grid of unknown, hours-long tasks), and lost jobs replaced
        (a cancelled job stays in the cluster's plan, so the plain Adaptive would wait for it forever)."""

        def __init__(self, *args, runs_left, **kwargs):
            self.runs_left = runs_left
            super().__init__(*args, **kwargs)

        async def target(self) -> int:
            return max(self.minimum, min(self.maximum, self.runs_left()))

        async def adapt(self) -> None:
            await super().adapt()
            if len(self.requested) < len(self.plan) <= await self.target():
                self.cluster.scale(len(self.plan))  # re-submits the jobs that are gone
    return GridAdaptive


def close(cluster, client) -> None:
    """Cancel every job of ours (scancel) and stop the scheduler."""
    try:
        client.close()
    finally:
        cluster.close()


