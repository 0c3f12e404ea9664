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
counts) and starts the run only if its estimate fits (bench.cost's FLOPs at --gpu's peak x --utilisation,
plus START_S to load data and model); otherwise the run goes back to the scheduler, the worker leaves and its
job ends, and a fresh job (with its whole time limit) takes the run. A run whose estimate exceeds the time
limit itself is refused before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.config import RunConfig, run_id
from bench.errors import BenchError, one_line
from bench.run.worker import Task, execute, lost

START_S = 120.0  # a run's start-up beyond its FLOPs (data, model and LLM layer loading), for the time check
KEYS = ("partition", "account", "time", "gpus_per_job", "cpus_per_job", "mem", "max_jobs", "sbatch", "python",
        "log_dir")


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
    gpu: str | None = None  # bench.cost's GPU for the estimate (bench run --gpu)
    utilisation: float | None = None  # and its utilisation (bench run --utilisation)

    def check(self) -> SlurmOptions:
        walltime_s(self.time)
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
        unknown = set(base) - set(KEYS)
        if not isinstance(base, dict) or unknown:
            raise BenchError(f"--slurm-config {path}: unknown keys {sorted(unknown)}; use {', '.join(KEYS)}")
    merged = {**base, **{k: v for k, v in cli.items() if v is not None and v != ()}}
    if isinstance(merged.get("sbatch"), str):
        merged["sbatch"] = [merged["sbatch"]]
    merged["sbatch"] = tuple(merged.get("sbatch") or ())
    if "time" in merged:
        merged["time"] = str(merged["time"])
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


def estimate_s(cfg: RunConfig, opts: SlurmOptions) -> float | None:
    """A run's expected seconds: its FLOPs at the assumed GPU's peak and utilisation, plus START_S."""
    from bench import cost

    flops = cost.run_flops(cfg)
    if flops is None:
        return None
    gpu = cost.GPUS[opts.gpu or cost.DEFAULT_GPU]
    return flops / (gpu.tflops * 1e12 * (opts.utilisation or cost.DEFAULT_UTILISATION)) + START_S


def check_fits(runs: list[RunConfig], opts: SlurmOptions) -> None:
    """Refuse a grid with a run that cannot finish within one job's time limit."""
    limit = walltime_s(opts.time)
    too_long = [(e, c) for c in runs if (e := estimate_s(c, opts)) is not None and e > limit]
    if too_long:
        e, c = max(too_long, key=lambda x: x[0])
        raise BenchError(f"{len(too_long)} runs are estimated longer than --time {opts.time} (the longest, "
                         f"{run_id(c)}, {e / 3600:.1f} h); raise --time, or --utilisation if your GPUs do better")


# ----------------------------------------------------------------------------------------- the cluster


def start(opts: SlurmOptions, results: Path):
    """A SLURMCluster for these options (no job yet: `runs` scales it) and its Client."""
    try:
        from dask_jobqueue import SLURMCluster
        from distributed import Client
    except ImportError:
        raise BenchError("--backend slurm needs dask-jobqueue: pip install -e '.[slurm]'") from None
    if not shutil.which("sbatch"):
        raise BenchError("--backend slurm: sbatch not found; run bench on a SLURM login node (or add SLURM's bin "
                         "folder to PATH)")
    logs = Path(opts.log_dir) if opts.log_dir else results / "logs" / "slurm"
    logs.mkdir(parents=True, exist_ok=True)
    n = opts.workers_per_job
    directives = [f"--gres=gpu:{opts.gpus_per_job}"] if opts.gpus_per_job else []
    walltime = walltime_s(opts.time)
    try:
        cluster = SLURMCluster(
            queue=opts.partition, account=opts.account, walltime=opts.time, job_cpu=opts.cpus_per_job,
            cores=n, processes=n, memory=opts.mem, job_mem=opts.mem, name="bench",
            job_extra_directives=[*directives, *opts.sbatch], log_directory=str(logs),
            python=opts.python or sys.executable,
            worker_extra_args=["--resources", "GPU=1"] if opts.gpus_per_job else [],
            # the job's end for workers that cannot ask squeue; memory is SLURM's to enforce (--mem): Dask's
            # worker would pause or restart a run's worker at a share of it (a restart costs the run a retry)
            job_script_prologue=[f"export BENCH_SLURM_END=$(( $(date +%s) + {int(walltime)} ))",
                                 *(f"export DASK_DISTRIBUTED__WORKER__MEMORY__{k}=False"
                                   for k in ("TARGET", "SPILL", "PAUSE", "TERMINATE"))],
            death_timeout=120)
    except Exception as e:  # noqa: BLE001 - a bad memory string, an unreachable interface...
        raise BenchError(f"cannot set up the SLURM cluster ({one_line(e)}); check --mem, --time and the "
                         "--slurm-config keys") from None
    return cluster, Client(cluster, set_as_default=False)


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


def runs(tasks: list[Task], cluster, client, opts: SlurmOptions, worker_retries: int = 1) -> Iterator[tuple[Task, dict]]:
    """Submit every run, keep the jobs at min(--max-jobs, runs unfinished), yield runs as they finish."""
    from distributed import Variable, as_completed

    n = opts.workers_per_job
    threads = max(1, opts.cpus_per_job // n)
    token = uuid.uuid4().hex[:8]
    by_key, futures = {}, []
    for t in tasks:
        key = f"bench-run-{run_id(t.cfg)}-{token}"
        Variable(f"{key}-starts", client=client).set(0)
        fut = client.submit(_slurm_execute, t, f"{key}-starts", worker_retries, estimate_s(t.cfg, opts), threads, n,
                            key=key, pure=False, resources={"GPU": 1} if opts.gpus_per_job else None)
        by_key[fut.key] = t
        futures.append(fut)
    left = [len(futures)]
    adaptive = cluster.adapt(Adaptive=_grid_adaptive(), runs_left=lambda: left[0], minimum=0,
                             maximum=opts.max_jobs * n, interval="2s", wait_count=2)
    print(f"bench: SLURM: up to {opts.max_jobs} jobs of {opts.gpus_per_job or 'no'} GPU(s), {opts.cpus_per_job} CPUs, "
          f"{opts.mem}, --time {opts.time}" + (f", partition {opts.partition}" if opts.partition else ""),
          file=sys.stderr, flush=True)
    try:
        for fut in as_completed(futures, loop=client.loop):
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


