"""Which GPU a worker owns and how many torch threads it gets: one rule for every backend.

Worker `index` of the `workers` on one machine owns GPU `index mod G` of the G GPUs it may see, set through
CUDA_VISIBLE_DEVICES before CUDA starts in its process (so it sees exactly that GPU, as cuda:0, and the run row
records the variable). More workers than GPUs share them only when asked (`--runs-per-gpu K`: K workers per GPU);
otherwise it is a user error, said in one line. Torch threads: the CPUs the process may use (its affinity, which
SLURM and taskset narrow; not os.cpu_count()), split between the workers of the machine, at least one each.

    local pool   worker index = its slot (bench.run.backends)
    Dask         worker index = its rank among the workers of its host (`dask_layout`, from the scheduler)
    SLURM        one worker per job: `worker_env(0, 1, visible_gpus())` keeps the GPU(s) SLURM allotted
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

from bench.errors import BenchError


@dataclasses.dataclass(frozen=True)
class WorkerEnv:
    """What one worker process is given: its GPU ids (() on CPU) and its torch threads."""

    gpus: tuple[str, ...]
    threads: int

    def environ(self) -> dict[str, str]:
        """The environment variables that say it to CUDA and to the OpenMP/MKL pools of child processes."""
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def visible_gpus() -> tuple[str, ...]:
    """The ids of the CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them (or 0..n-1).
    Counted through NVML where torch can (torch.cuda.device_count), which does not start CUDA: a worker may still
    narrow CUDA_VISIBLE_DEVICES after asking."""
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in env.split(",") if s.strip()] if env else []
    n = torch.cuda.device_count()
    return tuple(ids[:n]) if ids else tuple(str(i) for i in range(n))


def check_workers(workers: int, gpus: int, runs_per_gpu: int | None) -> None:
    """More workers than GPUs only on purpose: `--jobs 8` on 4 GPUs would silently put two runs on each."""
    if gpus and workers > gpus and not runs_per_gpu:
        raise BenchError(f"--jobs {workers} on {gpus} GPU{'s' if gpus > 1 else ''} would put up to "
                         f"{-(-workers // gpus)} runs on each GPU; use --runs-per-gpu K for K runs per GPU on purpose, "
                         f"or --jobs {gpus} (one GPU per worker)")


def worker_env(index: int, workers: int, gpus: Sequence[str], cpus: int | None = None,
               gpus_per_worker: int = 1) -> WorkerEnv:
    """The GPU(s) and threads of worker `index` (0-based) of the `workers` on one machine seeing `gpus`."""
    if workers < 1 or not 0 <= index:
        raise ValueError(f"worker {index} of {workers}")
    owned = tuple(gpus[(index * gpus_per_worker + j) % len(gpus)] for j in range(gpus_per_worker)) if gpus else ()
    return WorkerEnv(owned, max(1, (cpus or usable_cpus()) // workers))


def apply(env: WorkerEnv) -> None:
    """Set the worker's GPU and threads in this process; must run before CUDA starts here."""
    import torch

    if env.gpus:
        wanted = ",".join(env.gpus)
        if torch.cuda.is_initialized() and os.environ.get("CUDA_VISIBLE_DEVICES") != wanted:
            raise RuntimeError(f"CUDA started in this process before its GPU ({wanted}) was set")
        os.environ["CUDA_VISIBLE_DEVICES"] = wanted
    torch.set_num_threads(env.threads)


def dask_layout(workers: Mapping[str, dict]) -> dict[str, tuple[int, int]]:
    """{worker address: (its rank on its host, workers on its host)} from `Client.scheduler_info()["workers"]`,
    ranked by name then address, so every worker of a host gets its own GPU (and a share of its CPUs)."""
    hosts: dict[str, list[tuple[str, str]]] = {}
    for addr, w in workers.items():
        hosts.setdefault(w.get("host") or addr.rsplit(":", 1)[0], []).append((str(w.get("name", "")), addr))
    return {addr: (rank, len(members)) for members in hosts.values()
            for rank, (_, addr) in enumerate(sorted(members))}
