"""The matmul peak an MFU is measured against: on CPU measured here, in this process, with its torch threads; on a
GPU the dense tensor-core figure of bench.cost.GPUS.

A CPU's datasheet peak says little (clocks under load, AVX-512 frequency offsets, a VM's share of a core), so the
peak is what torch.mm achieves on square matrices at the run's precision: the best of repeated products of sides 256,
512 and 1024 (small enough that one product fits in a scheduler time slice on a shared machine, large enough for
oneDNN's best kernels: at 1 thread on this project's EPYC VM, ~95 GFLOP/s fp32 and ~440 bf16, where native), at least
`REPEATS` of each and for `SECONDS_PER_SIDE`. Measured once per (precision, threads) and process, ~0.5 s idle. On a
loaded machine the best product still sees a whole core while the training steps share it: MFU figures are for an
idle machine.
"""

from __future__ import annotations

import functools
import time

import torch

SIDES = (256, 512, 1024)
SECONDS_PER_SIDE = 0.1
REPEATS = 10
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_peak(precision: str, threads: int) -> float:
    """FLOP/s of the best torch.mm seen at `precision` with `threads` torch threads (set for the measurement)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = 0.0
        for n in SIDES:
            g = torch.Generator().manual_seed(0)
            a, b = (torch.randn(n, n, generator=g).to(DTYPES[precision]) for _ in range(2))
            out = torch.mm(a, b)  # first call: oneDNN's kernel choice, page faults
            end, done = time.perf_counter() + SECONDS_PER_SIDE, 0
            while done < REPEATS or time.perf_counter() < end:
                done += 1
                t0 = time.perf_counter()
                torch.mm(a, b, out=out)
                best = max(best, 2 * n**3 / (time.perf_counter() - t0))
        return best
    finally:
        torch.set_num_threads(before)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """FLOP/s the MFU of a run at `precision` on `device` is a fraction of: measured on CPU (this process's threads),
    the table's dense peak on a GPU bench.cost knows (None on an unknown GPU, or at fp32 on a GPU: no tensor-core
    figure)."""
    from bench.cost import GPUS

    if device.type == "cpu":
        return cpu_peak(precision, torch.get_num_threads())
    if device.type != "cuda" or precision == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    gpu = next((g for n, g in GPUS.items() if n in name), None)
    return gpu.peak(precision) * 1e12 if gpu else None
