"""FLOPs, time and peak memory of one training step of Lai et al.'s 3D backbones (vit3d-s/m/l, vivit-s/m/l).

Each backbone at each volume size (28^3: 4^3 tubelets; 64^3: 8^3) in the paper's 3D recipe (3 channels, Adam,
no augmentation), baseline unless `--set` says otherwise, runs in its own process (so the CPU's peak RSS is its
own): `bench.train.build_engine` builds the model and optimizer as `fit` does, and `Engine.step`, the step `fit`
runs, trains on a resident batch of random uint8 volumes: `--warmup` steps (the first allocates Adam's state),
then `--steps` timed steps.

    FLOPs     bench.cost's analytic matmul FLOPs of a training step (forward + backward; tests/test_backbones3d.py
              checks them against torch.utils.flop_counter on every backbone), times the batch
    memory    CUDA: torch.cuda.max_memory_allocated over the steps (weights, gradients, Adam state, activations;
              bf16 autocast as fit). CPU: the process's peak RSS (ru_maxrss) minus its RSS just before the model was
              built: the same things, plus whatever the allocator kept
    time      median wall time of the timed steps (device synchronised)

The paper's batch is 32; on a CPU that is minutes per step for the -l backbones, so the CPU default is 4 (memory
grows with the batch through the activations, FLOPs exactly). Prints the machine, its load average and the date.

    .venv/bin/python benchmarks/backbones3d.py                                  # CPU, batch 4
    .venv/bin/python benchmarks/backbones3d.py --device cuda --batch-size 32    # a GPU, the paper's batch
    .venv/bin/python benchmarks/backbones3d.py --archs vit3d-m vivit-m --sizes 28 --batch-size 32
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.config import RunConfig, override, parse_sets, resolve
from bench.models.registry import archs

ARCHS_3D = [a for a in archs(3) if a not in archs(2)]  # Lai et al.'s: volumes only

RECIPE = {"data.task": "adrenalmnist3d", "data.rgb": True, "data.mean": 0.0, "data.std": 1.0, "train.optimizer": "adam",
          "train.lr": 1e-5, "train.weight_decay": 0.0, "train.schedule": "constant", "train.warmup_epochs": 0,
          "train.aug": 0}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(arch: str, size: int, batch: int, device_name: str, warmup: int, steps: int, sets: dict) -> dict:
    """One backbone at one size, in this process: the figures of its training step."""
    import torch

    from bench import cost
    from bench.data import task_spec
    from bench.train import build_engine, pick_device

    device = pick_device(device_name)
    cfg = resolve(override(RunConfig(), {**RECIPE, "data.size": size, "vit.arch": arch, "train.batch_size": batch,
                                         **sets}))
    spec = task_spec(cfg.data.task, size)
    channels = 3 if cfg.data.rgb else spec.n_channels
    torch.manual_seed(0)
    x = torch.randint(0, 256, (batch, channels, size, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, spec.n_classes, (batch, 1), device=device)
    idx = torch.arange(batch, device=device)
    before = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    engine, _ = build_engine(cfg, spec, device)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = engine.step(x, y, idx, cfg.train.lr, 0.0, None)
        loss.item()  # waits for the device
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    m = cost.matmuls(cfg)
    params = sum(p.numel() for p in engine.model.parameters())
    step_s = statistics.median(times)
    flops = m.train_step * batch
    return {"arch": arch, "size": size, "batch": batch, "depth": cfg.vit.depth, "params": params,
            "step_gflop": flops / 1e9, "step_s": step_s, "gflops_per_s": flops / step_s / 1e9, "peak_mib": peak / 2**20,
            "load1": os.getloadavg()[0], "device": str(device)}


def machine(device_name: str) -> str:
    import torch

    if device_name.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (the paper's) on CUDA, 4 on the CPU")
    p.add_argument("--archs", nargs="+", default=list(ARCHS_3D), choices=ARCHS_3D)
    p.add_argument("--sizes", nargs="+", type=int, default=[28, 64], choices=[28, 64])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. a booster")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one arch:size in this process
    a = p.parse_args()
    batch = a.batch_size or (32 if a.device.startswith("cuda") else 4)
    sets = parse_sets(a.set)
    if a.one:
        arch, size = a.one.split(":")
        print(json.dumps(measure(arch, int(size), batch, a.device, a.warmup, a.steps, sets)))
        return 0
    print(f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine(a.device)}; batch {batch}, "
          f"{a.warmup} warm-up + {a.steps} timed steps; load average {os.getloadavg()}")
    print("| backbone | volume | depth | params (M) | GFLOP / step | s / step | GFLOP/s | peak memory (MiB) | load1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for arch in a.archs:
        for size in a.sizes:
            cmd = [sys.executable, __file__, "--one", f"{arch}:{size}", "--device", a.device, "--batch-size",
                   str(batch), "--warmup", str(a.warmup), "--steps", str(a.steps)]
            cmd += [arg for s in a.set for arg in ("--set", s)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode:
                print(f"| {arch} | {size}^3 | failed: {out.stderr.strip().splitlines()[-1]} |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            depth = f"{r['depth']} + {r['depth']}" if arch.startswith("vivit") else str(r["depth"])
            print(f"| {arch} | {size}^3 | {depth} | {r['params'] / 1e6:.1f} | {r['step_gflop']:,.0f} | "
                  f"{r['step_s']:.2f} | {r['gflops_per_s']:.0f} | {r['peak_mib']:,.0f} | {r['load1']:.1f} |",
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
