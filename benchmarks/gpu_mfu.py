"""Benchmark 3 (CUDA): model FLOPs utilisation of ViT-S + a LLaMA-7B-shaped frozen layer at 224, bf16, and img/s
against the naive pipeline.

Model: the study's own R-LLM model (`bench.train.build_engine`): ViT-S (dim 384, 12 blocks, 6 heads, patch 16) in
paper mode (28 px MedMNIST upsampled on the device to 224: 196 patches + CLS = 197 tokens), FE 384->4096, the last
layer of a LLaMA-7B-shaped config (hidden 4096, intermediate 11008, 32 heads, random weights: `load_llm_block(
init="random")` from a config-only directory, frozen), FD 4096->384. Step: `Engine.step`, the function `fit` calls
each step (device-resident uint8 data, batched augmentation, bf16 autocast, fused AdamW, no host sync), timed over
`--steps` steps after `--warmup` with one synchronisation at the end; eager and/or `torch.compile` (`--compile`).

FLOPs are counted analytically, matmuls only (2 FLOPs per multiply-add), per image, T = 197 tokens, d = 384,
D = 4096, I = 11008, P = 16, C = input channels, K = classes:
    ViT blocks   fwd 12 * (24 T d^2 + 4 T^2 d)          qkv 6Td^2 + proj 2Td^2 + MLP 16Td^2; QK^T and AV 2T^2d each
    patch embed  fwd 2 (T-1) P^2 C d                     head 2 d K (CLS token only)
    FE + FD      fwd 2 * 2 T d D
    LLaMA layer  fwd linears 2 T (4 D^2 + 3 D I) (q, k, v, o; gate, up, down), attention 4 T^2 D
    training = fwd + bwd:
        3x fwd   trainable linears (ViT blocks, FE, FD, head): bwd = input grad + weight grad = 2x fwd
        2x fwd   patch embedding (weight grad only: its input needs no grad) and the FROZEN LLaMA linears (input
                 grad only: no weight grads)
        3x fwd   attention score/value matmuls everywhere (bwd: dQ, dK, dV, dP = 2x fwd), the frozen layer's too,
                 since FE below it trains
    Flash attention's recomputation in bwd, norms, softmax, activations and the optimizer are not counted
    (the usual MFU convention). `--check-flops` compares this with torch.utils.flop_counter on one real step.
MFU = FLOPs per image * img/s / (--peak-tflops * 1e12); the default 989 is H100/H200 SXM dense bf16.

Naive pipeline: medmnist dataset -> per-sample transforms (flip, edge-padded shift, Resize(224), ToTensor,
Normalize) -> DataLoader(num_workers W, pinned, persistent) -> the same model and optimizer; variants "fp32:W"
(no autocast: the plain reference) and "bf16:W" (our autocast: isolates the data pipeline), `--naive`.

Without CUDA it exits (code 2) with a message; `--allow-cpu --tiny` runs a small CPU smoke check of the script
(depth-1 ViT, a hidden-128 LLaMA-shaped layer, a few steps; its figures mean nothing).

    .venv/bin/python benchmarks/gpu_mfu.py                        # on an H100/H200
    .venv/bin/python benchmarks/gpu_mfu.py --allow-cpu --tiny     # smoke check anywhere
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.config import RunConfig, override, parse_sets, resolve  # noqa: E402
from bench.data import task_spec, write_fixture  # noqa: E402
from bench.data.loading import load_splits  # noqa: E402
from bench.models.registry import BACKBONES  # noqa: E402
from bench.train import build_engine, seed_everything  # noqa: E402
from train_throughput import DEFAULT_DATA, Naive, load1, machine  # noqa: E402

from bench.doctor import LLAMA_7B  # noqa: E402
from bench.doctor import TINY_LLAMA as TINY_LLM  # noqa: E402
from bench.doctor import write_llama_config as write_config_dir  # noqa: E402


def analytic_flops(cfg: RunConfig, spec, llm: dict, tokens: int, patch: int) -> dict[str, float]:
    """Training FLOPs per image by component (see the module docstring for the formula)."""
    d = BACKBONES[cfg.vit.arch].width
    depth, T, C, K = cfg.vit.depth, tokens, spec.n_channels, spec.n_classes
    D, I, L = llm["hidden_size"], llm["intermediate_size"], cfg.booster.num_layers
    kv = D // llm["num_attention_heads"] * llm["num_key_value_heads"]
    frozen = cfg.booster.freeze == "frozen"
    fwd = {
        "vit blocks linear": depth * 2 * T * (3 * d * d + d * d + 2 * 4 * d * d),
        "vit attention": depth * 4 * T * T * d,
        "patch embed": 2 * (T - 1) * patch * patch * C * d,
        "head": 2 * d * K,
        "FE + FD": 2 * 2 * T * d * D,
        "LLM linear": L * 2 * T * (2 * D * D + 2 * D * kv + 3 * D * I),
        "LLM attention": L * 4 * T * T * D,
    }
    mult = {"vit blocks linear": 3, "vit attention": 3, "patch embed": 2, "head": 3, "FE + FD": 3,
            "LLM linear": 2 if frozen else 3, "LLM attention": 3}
    return {k: v * mult[k] for k, v in fwd.items()}


def counted_flops(engine, x, y, idx, gen) -> int:
    """torch.utils.flop_counter over one real (eager) training step, per image. On CPU, attention runs through the
    math backend, whose matmuls the counter sees (it has no formula for the CPU flash kernel)."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    backend = sdpa_kernel(SDPBackend.MATH) if x.device.type == "cpu" else nullcontext()
    counter = FlopCounterMode(display=False)
    with counter, backend:
        engine.step(x, y, idx, 0.0, gen)
    return counter.get_total_flops() / len(idx)


def time_ours(engine, x, y, batch: int, steps: int, warmup: int, lr: float, device) -> tuple[float, float]:
    """(img/s, seconds) of `steps` Engine.step calls after `warmup` ones; one synchronisation, at the end."""
    n = len(x)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, n, (warmup + steps, batch), generator=g).to(device)  # sampled with replacement
    gen = torch.Generator(device=device).manual_seed(0)
    total = warmup + steps
    for i in range(warmup):
        engine.step(x, y, idx[i], lr, gen)
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup, total):
        engine.step(x, y, idx[i], lr, gen)
    sync(device)
    s = time.perf_counter() - t0
    return steps * batch / s, s


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sync_check(engine, x, y, batch: int, device) -> str:
    """Two steps under torch.cuda.set_sync_debug_mode('error'): any host synchronisation inside a step raises."""
    if device.type != "cuda":
        return "skipped (CPU)"
    idx = torch.randint(0, len(x), (2, batch), generator=torch.Generator().manual_seed(1)).to(device)
    gen = torch.Generator(device=device).manual_seed(1)
    engine.step(x, y, idx[0], 1e-4, gen)  # once outside, so lazy init (e.g. cuBLAS workspaces) is done
    sync(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(2):
            engine.step(x, y, idx[i], 1e-4, gen)
        result = "none (2 steps under set_sync_debug_mode('error'))"
    except RuntimeError as e:
        result = f"FOUND: {str(e).splitlines()[0][:200]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    sync(device)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200 SXM: 989)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", choices=["off", "on", "both"], default="both", help="torch.compile the model")
    p.add_argument("--naive", default="fp32:8,bf16:8,fp32:0",
                   help="naive variants precision:workers, comma-separated ('' = none)")
    p.add_argument("--naive-steps", type=int, default=8)
    p.add_argument("--naive-warmup", type=int, default=2)
    p.add_argument("--llm-dtype", choices=["fp32", "bf16"], default="fp32", help="booster.dtype of the frozen layer")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA,
                   help="folder with breastmnist.npz (a synthetic fixture of the same size is used if it is missing)")
    p.add_argument("--check-flops", choices=["on", "off"], default="on",
                   help="compare the analytic count with torch's flop counter on one step")
    p.add_argument("--no-sync-check", action="store_true")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a smoke check; use with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny model and few steps: a smoke check of the script")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        if not a.allow_cpu:
            print("gpu_mfu.py measures MFU on a CUDA GPU, and torch sees none here (torch.cuda.is_available() is "
                  "False). Run it on a GPU machine, or pass --allow-cpu --tiny for a CPU smoke check of the script.",
                  file=sys.stderr)
            return 2
        a.device = "cpu"
    device = torch.device(a.device)
    if a.tiny:
        a.batch_size, a.steps, a.warmup = min(a.batch_size, 4), min(a.steps, 2), min(a.warmup, 1)
        a.naive_steps, a.naive_warmup = min(a.naive_steps, 2), min(a.naive_warmup, 1)
        if a.naive == p.get_default("naive"):
            a.naive = "fp32:0"
        if a.compile == "both":
            a.compile = "off"
    llm_shape = TINY_LLM if a.tiny else LLAMA_7B

    spec = task_spec("breastmnist", 28)
    tmp = tempfile.TemporaryDirectory(prefix="gpu-mfu-")
    data_root = a.data_root.resolve()
    data_note = f"{data_root / 'breastmnist.npz'}"
    if not (data_root / "breastmnist.npz").is_file():
        data_root = Path(tmp.name) / "medmnist"
        write_fixture(data_root, "breastmnist", 28, n=(546, 78, 156))
        data_note = "synthetic fixture of BreastMNIST's shape (546 train images; the real file was not found)"
    splits = load_splits(spec, data_root, download=False, splits=("train", "val"))
    llm_dir = write_config_dir(Path(tmp.name) / "llama-config", llm_shape)

    sets = {"vit.arch": "small", "vit.paper_mode": True, "vit.depth": 1 if a.tiny else 12,
            "booster.variant": "rllm", "booster.source": str(llm_dir), "booster.init": "random",
            "booster.dtype": a.llm_dtype, "train.batch_size": a.batch_size, **parse_sets(a.set)}
    cfg = resolve(override(RunConfig(), sets))
    patch, size = 16, 224
    tokens = (size // patch) ** 2 + 1
    flops = analytic_flops(cfg, spec, llm_shape, tokens, patch)
    per_image = sum(flops.values())

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke check)"
    print(f"# gpu_mfu  {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {gpu}; host {machine()}; "
          f"load1 {load1():.2f}")
    print(f"# model: ViT-{cfg.vit.arch} depth {cfg.vit.depth} at {size} (patch {patch}, {tokens} tokens) + "
          f"LLaMA-shaped layer hidden {llm_shape['hidden_size']}, intermediate {llm_shape['intermediate_size']}, "
          f"{llm_shape['num_attention_heads']} heads ({cfg.booster.freeze}, {cfg.booster.dtype} weights, random init); "
          f"batch {a.batch_size}; data {data_note}")
    print("# analytic training FLOPs per image: " + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in flops.items())
          + f"; total {per_image / 1e9:.2f} GFLOP")

    x = splits.train.images.to(device)
    y = splits.train.labels.to(device)
    lr = cfg.train.lr
    report: dict = {"date": dt.datetime.now().astimezone().isoformat(), "device": gpu, "host": machine(),
                    "batch": a.batch_size, "flops_per_image": per_image, "flops": flops, "peak_tflops": a.peak_tflops,
                    "ours": {}, "naive": {}}
    modes = {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    best = 0.0
    for compiled in modes:
        seed_everything(cfg.seed)
        c = override(cfg, {"train.compile": compiled})
        engine, _ = build_engine(c, spec, device)
        label = "ours, torch.compile" if compiled else "ours, eager"
        if a.check_flops == "on" and not compiled:
            idx = torch.randint(0, len(x), (a.batch_size,), generator=torch.Generator().manual_seed(2)).to(device)
            counted = counted_flops(engine, x, y, idx, torch.Generator(device=device).manual_seed(2))
            report["counted_flops_per_image"] = counted
            print(f"  flop check: torch.utils.flop_counter counts {counted / 1e9:.3f} GFLOP/image on one step, the "
                  f"formula {per_image / 1e9:.3f} ({(counted / per_image - 1) * 100:+.2f}%)")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ips, secs = time_ours(engine, x, y, a.batch_size, a.steps, a.warmup, lr, device)
        except Exception as e:  # noqa: BLE001 - e.g. torch.compile failing on this machine: report, go on
            print(f"  {label:22s} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
            report["ours"][label] = {"error": f"{type(e).__name__}: {e}"[:1000]}
            del engine
            continue
        wall = time.perf_counter() - t0
        mfu = per_image * ips / (a.peak_tflops * 1e12)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        sync_result = "not run" if a.no_sync_check or compiled else sync_check(engine, x, y, a.batch_size, device)
        print(f"  {label:22s} {ips:9.1f} img/s  {per_image * ips / 1e12:7.1f} TFLOP/s  MFU {mfu * 100:5.1f}%  "
              f"({a.steps} steps in {secs:.2f} s; with warm-up/compile {wall:.0f} s; peak mem {mem:.1f} GiB)"
              + ("" if compiled else f"; host syncs inside the step: {sync_result}"), flush=True)
        report["ours"][label] = {"img_s": ips, "mfu": mfu, "tflops": per_image * ips / 1e12, "peak_mem_gib": mem,
                                 "sync": sync_result}
        best = max(best, ips)
        del engine
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if device.type == "cuda" and not a.no_sync_check:  # the RoPE ablation's path (rotary embedding on the device)
        rope_dir = write_config_dir(Path(tmp.name) / "llama-rope", TINY_LLM)
        rc = override(cfg, {"booster.source": str(rope_dir), "booster.pos_emb": "rope", "train.batch_size": 8})
        engine, _ = build_engine(rc, spec, device)
        rope = sync_check(engine, x, y, 8, device)
        report["sync_rope"] = rope
        print(f"  host syncs inside the step with booster.pos_emb=rope (tiny LLaMA layer): {rope}", flush=True)
        del engine

    naive_best: dict[str, float] = {}
    for variant in [v for v in a.naive.split(",") if v.strip()]:
        prec, workers = variant.split(":")
        amp = prec == "bf16"
        epochs = math.ceil((a.naive_warmup + a.naive_steps) / max(1, len(splits.train) // a.batch_size)) + 1
        nv = Naive(cfg, spec, data_root, device, int(workers), epochs, amp, resize=size)
        nv.run(a.naive_warmup)
        secs = nv.run(a.naive_steps)
        nv.close()
        ips = a.naive_steps * a.batch_size / secs
        naive_best[prec] = max(naive_best.get(prec, 0.0), ips)
        report["naive"][variant] = ips
        print(f"  naive {prec} workers={workers:3s}    {ips:9.1f} img/s   (ours best / this: {best / ips:.1f}x)",
              flush=True)
        del nv
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print("\n| | img/s | MFU | vs best naive fp32 | vs best naive bf16 |")
    print("|---|---|---|---|---|")
    for label, r in report["ours"].items():
        if "error" in r:
            print(f"| {label} | failed | | | |")
            continue
        vs = [f"{r['img_s'] / naive_best[k]:.1f}x" if k in naive_best else "-" for k in ("fp32", "bf16")]
        print(f"| {label} | {r['img_s']:.1f} | {r['mfu'] * 100:.1f}% | {vs[0]} | {vs[1]} |")
    for variant, ips in report["naive"].items():
        print(f"| naive {variant} | {ips:.1f} | {per_image * ips / (a.peak_tflops * 1e12) * 100:.1f}% | | |")
    best_mfu = max((r["mfu"] for r in report["ours"].values() if "mfu" in r), default=0.0)
    print(f"\ngoals: MFU >= 40%: {'met' if best_mfu >= 0.40 else 'NOT met'} ({best_mfu * 100:.1f}%)"
          + "".join(f"; >= 10x the naive {k} pipeline: {'met' if best >= 10 * v else 'NOT met'} ({best / v:.1f}x)"
                    for k, v in naive_best.items()))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1, default=str))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
