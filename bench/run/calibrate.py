"""What a grid costs on this machine's CPU: a few real training and eval steps of each distinct model, timed.

The analytic estimate (bench/cost.py) prices a grid in GPU-hours; on a laptop or a CPU node what matters is the
wall clock, which FLOPs predict badly for small models (threads, memory, Python overhead). So `bench list
--cpu-estimate` builds each setting of the grid once (seeds of a setting cost the same), times `steps` optimizer
steps of the real Engine on a random batch of the run's shape, and one eval pass, with the torch threads one of
`jobs` parallel workers gets, and scales per-image times by the images a run trains and evaluates.
Not counted: loading data, the LLM layer (once per worker) and writing the store (seconds per run).

The steps are timed on the machine as it is at that moment: other processes take their share of the cores
then, and the grid's runs go as much slower as the machine is busier while they train (on a shared 2-core box,
measured at load 1 and run at load 4, about 4x: issue 34 saw 5 min estimated, 19 min taken). So the estimate
names the load average it was measured at, and says it holds at that load.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from bench.config import RunConfig
from bench.data import task_spec
from bench.run.backends import cores
from bench.train import build_engine, predict


@dataclass(frozen=True)
class Timing:
    train_image_s: float  # seconds per training image (forward, backward, optimizer step, augmentation)
    eval_image_s: float  # seconds per evaluated image


@dataclass(frozen=True)
class CpuEstimate:
    seconds: float  # summed over the runs (one worker's time)
    runs: int
    settings: int  # distinct models timed
    threads: int
    jobs: int
    load: float = 0.0  # the 1-minute load average when the steps were timed
    cores: int = 1  # the cores this process may use

    def wall_s(self) -> float:
        return self.seconds / self.jobs


def setting(cfg: RunConfig) -> tuple:
    """What a run's cost depends on (its seeds cost the same)."""
    return cfg.data, cfg.vit, cfg.booster, cfg.train


def time_setting(cfg: RunConfig, steps: int) -> Timing:
    """Per-image train and eval seconds of a resolved config's model on the CPU, from `steps` timed steps."""
    spec = task_spec(cfg.data.task, cfg.data.size)
    device = torch.device("cpu")
    engine, _ = build_engine(cfg, spec, device)
    batch = min(cfg.train.batch_size, spec.n_samples["train"])
    channels = spec.n_channels
    shape = (batch, 1, *(spec.size,) * 3) if spec.is_3d else (batch, channels, spec.size, spec.size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    y = torch.randint(0, max(spec.n_classes, 2) if not spec.multilabel else 2,
                      (batch, spec.n_classes if spec.multilabel else 1), generator=gen)
    idx = torch.arange(batch)
    engine.step(x, y, idx, cfg.train.lr, gen)  # warm-up: first-call allocations and kernel choices
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step(x, y, idx, cfg.train.lr, gen)
    train_image_s = (time.perf_counter() - t0) / (steps * batch)
    t0 = time.perf_counter()
    predict(engine.model, engine.pipeline, x, cfg.train.eval_batch_size, engine.autocast, spec.n_classes)
    eval_image_s = (time.perf_counter() - t0) / batch
    return Timing(train_image_s, eval_image_s)


def run_seconds(cfg: RunConfig, timing: Timing) -> float:
    """One run's training and evaluation time from per-image times (the images train.py trains and scores)."""
    n = task_spec(cfg.data.task, cfg.data.size).n_samples
    t = cfg.train
    batch = min(t.batch_size, n["train"])
    trained = n["train"] // batch * batch  # train.py drops the ragged last batch
    tests = t.epochs if t.audit_test else 1
    return (t.epochs * (trained * timing.train_image_s + n["val"] * timing.eval_image_s)
            + tests * n["test"] * timing.eval_image_s)


def estimate(runs: list[RunConfig], todo: list[RunConfig], jobs: int = 1, steps: int = 3
             ) -> tuple[CpuEstimate, CpuEstimate]:
    """(whole grid, runs to do): each distinct setting timed once, with the threads one of `jobs` workers has."""
    threads = max(1, cores() // jobs)
    load = os.getloadavg()[0]  # before our own steps add to it
    timed = timings(runs, threads, steps)

    def total(some: list[RunConfig]) -> CpuEstimate:
        seconds = sum(run_seconds(c, timed[setting(c)]) for c in some)
        return CpuEstimate(seconds, len(some), len(timed), threads, jobs, load, cores())

    return total(runs), total(todo)


def timings(runs: list[RunConfig], threads: int, steps: int = 3) -> dict[tuple, Timing]:
    """`setting` -> its Timing, each distinct setting of `runs` timed once with `threads` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[tuple, Timing] = {}
    try:
        for cfg in runs:
            if setting(cfg) not in out:
                out[setting(cfg)] = time_setting(cfg, steps)
    finally:
        torch.set_num_threads(before)
    return out


def describe(whole: CpuEstimate, todo: CpuEstimate, steps: int) -> list[str]:
    lines = [f"CPU estimate on this machine ({whole.jobs} worker(s) x {whole.threads} torch thread(s), "
             f"{whole.settings} distinct models each timed over {steps} steps):"]
    for what, c in (("to run", todo), ("whole grid", whole)):
        lines.append(f"  {what}: {c.runs} runs, {_clock(c.wall_s())} wall clock ({_clock(c.seconds)} of worker time)")
    lines.append("  (measured training and eval steps x the images each run trains and scores; data loading, LLM "
                 "loading and store writes not counted: bench/run/calibrate.py)")
    lines.append(f"  (holds at the load it was measured at: load average {whole.load:.1f} on {whole.cores} cores; the "
                 "runs take about as much longer as the machine is busier while they train)")
    return lines


def _clock(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"

