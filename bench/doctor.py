"""`bench doctor`: before GPU-days are spent, check this machine for the path `bench run` will take (minutes).

Everywhere: the devices torch sees and the precision each gets; one paper-mode training step (ViT-S at 224 px,
DeiT-S's shape, with a frozen layer of the real LLaMA-7B shape: hidden 4096, MLP 11008, 32 heads; random weights
from a transformers LlamaConfig, nothing downloaded), its FLOP/s from bench.cost's count and, on a known GPU, its MFU
against the peak at its precision; the step's peak memory and the --runs-per-gpu it allows (with --grid, the step is
that grid's heaviest run at its own batch, built the same shape with random weights); a grid's data, timm and
LLM weights cached or reachable (--grid); the backend reachable (the Dask scheduler, `sinfo` for SLURM); the same tiny
run twice, compared bit for bit (train.deterministic).
On CPU the MFU is against the matmul peak measured in the process (bench.peak).
On a GPU also: two pool workers sharing one GPU (--runs-per-gpu 2), a forced out-of-memory and its retry, memory
handed back after a run. On a CPU machine those are listed as not run, with why.

Each check is one line: ok, FAIL (with what to do) or skip; the exit code is 0 when no check failed.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.doctor_base import LLAMA_7B, TINY_LLAMA, Check, Options, gib, write_llama_config

STEP_CAP_S = 30.0  # a warm-up step slower than this is the only one timed (keeps a slow CPU under 5 minutes)
CUDA_CONTEXT = 0.5 * 2**30  # what a process's CUDA context and cuBLAS/cuDNN workspaces take besides its tensors


def _tiny_run(data_root: Path, seed: int = 0, **sets):
    from bench.config import RunConfig, override, resolve

    base = {"data.task": "breastmnist", "vit.arch": "tiny", "vit.depth": 1, "vit.patch": 7, "train.batch_size": 16,
            "train.eval_batch_size": 64, "train.epochs": 1, "train.warmup_epochs": 0, "seed": seed}
    return resolve(override(RunConfig(), {**base, **sets}))


def devices(device) -> Check:
    import torch

    from bench.run.gpus import usable_cpus

    cpus = f"{usable_cpus()} usable CPUs (of {os.cpu_count()})"
    if not torch.cuda.is_available():
        return Check("devices", "ok", f"no CUDA device (torch {torch.__version__}, built for CUDA "
                                      f"{torch.version.cuda or 'none'}): the CPU path; {cpus}; runs on {device}")
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(f"cuda:{i} {p.name} (compute {p.major}.{p.minor}, {gib(p.total_memory)})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return Check("devices", "ok", "; ".join(gpus) + f"; CUDA {torch.version.cuda}, torch {torch.__version__}"
                 + (f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "") + f"; {cpus}; runs on {device}")


def precisions(device) -> Check:
    import torch

    from bench.train import precision

    if device.type != "cuda":
        return cpu_precision()
    lines, emulated = [], []
    for i in range(torch.cuda.device_count()):
        d = torch.device("cuda", i)
        p = precision(d)
        lines.append(f"cuda:{i} {p}" + (" (bf16 native)" if p == "bf16" else " (no native bf16: fp16 + GradScaler)"
                                         if p == "fp16" else " (no tensor cores)"))
        if p != "bf16":
            emulated.append(f"cuda:{i}")
    return Check("precision", "ok", "; ".join(lines) + (f"; {', '.join(emulated)} slower than bf16 GPUs" if emulated else ""))


def cpu_precision() -> Check:
    """What the CPU computes bf16 with: native (AVX512-BF16 or AMX: runs are bf16) or not (fp32)."""
    from bench.train import cpu_bf16_native

    if cpu_bf16_native():
        return Check("precision", "ok", "cpu bf16 (native bf16 matmuls: AVX512-BF16 or AMX; fp32 master weights)")
    return Check("precision", "ok", "cpu fp32 (no native bf16: AVX512-BF16 or AMX, where torch would emulate it)")


def cpu_mfu(flops: float, precision: str) -> str:
    """The step's FLOP/s as a fraction of this process's measured matmul peak at its precision and threads."""
    import torch

    from bench.peak import cpu_peak

    threads = torch.get_num_threads()
    peak = cpu_peak(precision, threads)
    return f", MFU {flops / peak:.1%} of this CPU's {peak / 1e9:.0f} GFLOP/s {precision} (torch.mm, {threads} threads)"


def paper_step(device, opts: Options, tmp: Path, say: Callable[[str], None], grid=None) -> tuple[Check, Check]:
    """One training step, timed: (its speed, its memory). Of `grid`'s heaviest run at its own batch when a grid is
    given (bench.doctor_inputs.grid_step), else paper mode with a 7B-shaped frozen layer."""
    import torch

    from bench import cost
    from bench.config import RunConfig, override, resolve
    from bench.data import task_spec, write_fixture
    from bench.data.loading import load_splits
    from bench.doctor_inputs import grid_step
    from bench.models import build
    from bench.models.registry import layer_variants
    from bench.train import build_engine, precision, seed_everything

    gpu = device.type == "cuda"
    steps = opts.steps or (10 if gpu else 1)
    if grid is not None and not opts.quick:
        cfg, what = grid_step(grid, tmp, gpu, opts.batch)
        batch = cfg.train.batch_size
    else:
        batch = opts.batch or (32 if gpu else 1)
        shape = TINY_LLAMA if opts.quick else LLAMA_7B
        llm = write_llama_config(tmp / "llama-7b-shape", shape)
        cfg = resolve(override(RunConfig(), {
            "vit.arch": "tiny" if opts.quick else "small", "vit.paper_mode": True, "vit.depth": 1 if opts.quick else 12,
            "booster.variant": layer_variants()[0], "booster.source": str(llm), "booster.init": "random",
            "train.batch_size": batch}))
        what = (f"ViT-{'Ti, depth 1' if opts.quick else 'S'} at 224 px + a {'tiny' if opts.quick else 'LLaMA-7B'}-"
                f"shaped frozen layer (hidden {shape['hidden_size']}, MLP {shape['intermediate_size']}), batch {batch}")
    what += f", {precision(device)}"
    data = tmp / "medmnist"
    write_fixture(data, cfg.data.task, cfg.data.size, n=(max(64, batch), 16, 16))
    spec = task_spec(cfg.data.task, cfg.data.size)
    splits = load_splits(spec, data, download=False, splits=("train", "val"))
    say(f"  building {what} ...")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seed_everything(0)
    t0 = time.perf_counter()
    engine, _ = build_engine(cfg, spec, device)
    build_s = time.perf_counter() - t0
    x, y = splits.train.images.to(device), splits.train.labels.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(0, len(x), (steps + 1, batch), generator=torch.Generator().manual_seed(0)).to(device)
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    loss = engine.step(x, y, idx[0], cfg.train.lr, gen)  # warm-up: lazy initialisation, autotuning
    if gpu:
        torch.cuda.synchronize(device)
    secs = time.perf_counter() - t0
    if secs > STEP_CAP_S and opts.steps is None:  # a slow CPU: the warm-up step is the figure (first-call costs in it)
        steps, timed = 1, "1 step (the first; the machine is slow)"
    else:
        t0 = time.perf_counter()
        for i in range(1, steps + 1):
            loss = engine.step(x, y, idx[i], cfg.train.lr, gen)
        if gpu:
            torch.cuda.synchronize(device)
        secs = time.perf_counter() - t0
        timed = f"{steps} step{'s' if steps > 1 else ''}"
    finite = math.isfinite(float(loss))
    flops = cost.matmuls(cfg).train_step * batch * steps / secs
    speed = f"{what}: {timed} in {secs:.2f} s ({batch * steps / secs:.1f} img/s, " \
            f"model built in {build_s:.1f} s), {flops / 1e12:.3g} TFLOP/s"
    status = "ok" if finite else "FAIL"
    if gpu:
        name = torch.cuda.get_device_name(device)
        known = next((g for n, g in cost.GPUS.items() if n in name), None)
        if known is not None:
            peak = known.peak(precision(device)) if precision(device) != "fp32" else None
            speed += (f", MFU {flops / (peak * 1e12):.1%} of {known.name}'s {peak:g} TFLOP/s {precision(device)}"
                      if peak else "")
            if not opts.quick and peak and flops / (peak * 1e12) < 0.10:  # a figure, not a verdict: never measured here
                speed += " (low: a larger --batch, other processes on the GPU (nvidia-smi), clocks or power cap?)"
        else:
            speed += f" (no peak known for {name}: add it to bench/cost.py GPUS for MFU)"
    else:
        speed += cpu_mfu(flops, precision(device))
    if not finite:
        speed += f"; the loss is {float(loss)}"
    if gpu:
        peak_b = torch.cuda.max_memory_allocated(device)
        total = torch.cuda.get_device_properties(device).total_memory
        fits = int(total // (peak_b + CUDA_CONTEXT))
        memory = Check("memory", "ok" if fits >= 1 else "FAIL",
                       f"peak {gib(peak_b)} allocated at batch {batch} (+ ~{gib(CUDA_CONTEXT)} CUDA context per process) "
                       f"of {gib(total)}: --runs-per-gpu {max(1, fits)} fits runs like this one"
                       + ("" if fits >= 1 else "; lower the batch (train.batch_size) or use a larger GPU"))
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        memory = Check("memory", "ok", f"peak resident memory of this process {gib(rss)} (+{gib(max(0, rss - rss0))} "
                                       f"for the step at batch {batch}); --runs-per-gpu: not checked, no GPU")
    del engine
    build._cached_block.cache_clear()  # the 7B-shaped layer a worker would keep: not needed by the checks after
    return Check("paper step", status, speed), memory


def backend(opts: Options) -> Check:
    from bench.errors import BenchError
    from bench.run.gpus import usable_cpus, visible_gpus

    if opts.backend == "dask":
        from bench.run.backends import connect

        if not opts.scheduler:
            return Check("backend", "FAIL", "--backend dask needs --scheduler ADDRESS")
        try:
            client = connect(opts.scheduler)
        except BenchError as e:
            return Check("backend", "FAIL", str(e))
        with client:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
        gpu = sum(int((w.get("resources") or {}).get("GPU", 0)) for w in workers.values())
        return Check("backend", "ok" if workers else "FAIL",
                     f"Dask scheduler {opts.scheduler}: {len(workers)} workers, {gpu} GPU slots"
                     + ("" if workers else "; start workers (`dask worker ADDRESS --resources GPU=1 --nthreads 1`)"))
    if opts.backend == "slurm":
        sinfo = shutil.which("sinfo")
        if not sinfo:
            return Check("backend", "FAIL", "SLURM: `sinfo` is not on PATH; run this on a login node, or module load slurm")
        try:
            r = subprocess.run([sinfo, "-h", "-o", "%P %a %D %G"], capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.SubprocessError) as e:
            return Check("backend", "FAIL", f"SLURM: sinfo failed ({e})")
        if r.returncode:
            return Check("backend", "FAIL", f"SLURM: sinfo failed: {(r.stderr or r.stdout).strip()[:200]}")
        parts = [" ".join(line.split()) for line in r.stdout.strip().splitlines()]
        found = f"SLURM: {len(parts)} partitions (name avail nodes gres): {'; '.join(parts[:5])}"
        from bench.run import slurm

        job = opts.slurm or slurm.SlurmOptions()
        try:  # what sinfo lists is not what a job of these options can get: ask SLURM about that job
            slurm.test_submission(job)
        except BenchError as e:
            return Check("backend", "FAIL", f"{found}; {e}")
        return Check("backend", "ok", f"{found}; sbatch --test-only accepts a job of {job.gpus_per_job} GPU(s), "
                                      f"{job.cpus_per_job} CPUs, {job.mem}")
    return Check("backend", "ok", f"local on {socket.gethostname()}: {len(visible_gpus())} GPUs, {usable_cpus()} CPUs "
                                  "(--jobs N splits them; --runs-per-gpu K for K runs per GPU)")


def twice_bit_for_bit(device, tmp: Path) -> Check:
    """The same tiny run twice with train.deterministic, through the worker: identical scores and losses."""
    import numpy as np

    from bench.run.worker import Task, execute

    data = tmp / "medmnist"
    cfg = _tiny_run(data, **{"train.deterministic": True})
    outs = [execute(Task(cfg=cfg, data_root=str(data), live_log=None, device=str(device))) for _ in range(2)]
    bad = [o["row"]["error"] for o in outs if o["row"]["status"] != "ok"]
    if bad:
        return Check("bit for bit", "FAIL", f"the deterministic run failed: {bad[0]}")
    same = np.array_equal(outs[0]["y_score"], outs[1]["y_score"]) and \
        [h["train_loss"] for h in outs[0]["history"]] == [h["train_loss"] for h in outs[1]["history"]]
    return Check("bit for bit", "ok" if same else "FAIL",
                 f"a tiny run twice with train.deterministic on {device}: test scores and losses "
                 + ("identical" if same else "DIFFER (an op without a deterministic kernel, or CUBLAS_WORKSPACE_CONFIG "
                                             "set after cuBLAS started: set it in the environment)"))


def two_on_one_gpu(device, tmp: Path) -> Check:
    """Two pool workers on the first GPU (--runs-per-gpu 2): both runs ok, each in its own process, same GPU."""
    from bench.run import backends
    from bench.run.gpus import visible_gpus
    from bench.run.worker import Task

    gpu = visible_gpus()[device.index or 0]
    data, results = tmp / "medmnist", tmp / "two-results"
    (results / "logs").mkdir(parents=True, exist_ok=True)
    tasks = [Task(cfg=_tiny_run(data, seed=s, **{"train.epochs": 2}), data_root=str(data), live_log=None, device="cuda")
             for s in (0, 1)]
    setup = backends.PoolSetup(slot_dir=tempfile.mkdtemp(dir=tmp), n_slots=2, cpus=backends.cores(), gpus=(gpu,))
    rows = [out["row"] for _, out in backends.pool(tasks, 2, setup, results)]
    ok = all(r["status"] == "ok" for r in rows)
    pids = {r.get("worker_pid") for r in rows}
    where = {r.get("cuda_visible_devices") for r in rows}
    good = ok and len(pids) == 2 and where == {gpu}
    return Check("two on one GPU", "ok" if good else "FAIL",
                 f"2 pool workers (pids {sorted(map(str, pids))}) on CUDA_VISIBLE_DEVICES {sorted(map(str, where))}: "
                 + ("both runs ok" if ok else "; ".join(str(r.get("error")) for r in rows if r["status"] != "ok")))


def forced_oom(device, tmp: Path) -> Check:
    """A real out-of-memory in a real run (the allocator capped at 1 MiB), then the worker's retry at half the batch
    with the cap lifted; memory handed back afterwards."""
    import torch

    import bench.train
    from bench.data import task_spec
    from bench.data.loading import load_splits
    from bench.run import worker

    data = tmp / "medmnist"
    cfg = _tiny_run(data, **{"train.batch_size": 32})
    spec = task_spec("breastmnist", 28)
    splits = load_splits(spec, data, download=False)
    real, calls = bench.train.fit, []

    def capped_once(*a, **k):
        calls.append(k.get("micro_batch"))
        if len(calls) == 1:
            torch.cuda.empty_cache()  # no cached block to serve the run from
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(2**20 / total, device)
        try:
            return real(*a, **k)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)

    lines: list[str] = []
    flags = {"oom_retry": False}
    bench.train.fit = capped_once
    try:
        result = worker._fit_with_oom_retry(cfg, splits, spec, device, lines.append, None, flags)
    except Exception as e:  # noqa: BLE001 - the check failed: say how
        return Check("OOM retry", "FAIL", f"{type(e).__name__}: {str(e)[:200]}")
    finally:
        bench.train.fit = real
    micro = result.metrics["micro_batch"]
    del result
    before = torch.cuda.memory_reserved(device)
    worker.free_memory()
    after = torch.cuda.memory_reserved(device)
    good = flags["oom_retry"] and micro == 16 and calls == [None, 16]
    return Check("OOM retry", "ok" if good else "FAIL",
                 f"out of memory at batch 32 (allocator capped at 1 MiB), retried at micro-batch {micro}: "
                 + ("trained" if good else f"calls {calls}, oom_retry {flags['oom_retry']}")
                 + f"; memory reserved {gib(before)} -> {gib(after)} after the release")


def run_checks(opts: Options, say: Callable[[str], None] = print) -> list[Check]:
    import torch

    from bench.data import write_fixture
    from bench.errors import BenchError
    from bench.train import pick_device

    from bench.data import resolve_root
    from bench.doctor_inputs import grid_inputs
    from bench.grid import load_grid

    grid = load_grid(opts.grid, dict(opts.sets)) if opts.grid else None  # its mistakes before any work (exit 2)
    resolve_root(opts.data_root)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: the bit-for-bit check
    try:
        device = pick_device(opts.device)
    except BenchError as e:
        return [Check("devices", "FAIL", str(e))]
    checks: list[Check] = []

    def add(c: Check) -> None:
        checks.append(c)
        say(line(c))

    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as tmp_name:
        tmp = Path(tmp_name)
        write_fixture(tmp / "medmnist", "breastmnist", 28, n=(64, 16, 16))
        add(devices(device))
        add(precisions(device))
        for c in paper_step(device, opts, tmp, say, grid):
            add(c)
        add(grid_inputs(opts, grid))
        add(backend(opts))
        add(twice_bit_for_bit(device, tmp))
        if device.type == "cuda":
            add(two_on_one_gpu(device, tmp))
            add(forced_oom(device, tmp))
        else:
            why = "not run: no GPU here (run `bench doctor` on a GPU node)"
            for name in ("two on one GPU", "OOM retry"):
                add(Check(name, "skip", why))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return checks


def line(c: Check) -> str:
    return f"[{c.status:^4}] {c.name:<14} {c.detail}"


def summary(checks: list[Check]) -> str:
    n = {s: sum(c.status == s for c in checks) for s in ("ok", "FAIL", "skip")}
    skipped = ", ".join(c.name for c in checks if c.status == "skip")
    return (f"{n['ok']} checks ok, {n['FAIL']} failed, {n['skip']} not run" + (f" ({skipped})" if skipped else ""))
