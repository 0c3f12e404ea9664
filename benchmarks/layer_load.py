"""Benchmark 2: loading one layer of a sharded >= 16-layer checkpoint vs `from_pretrained` of the whole model.

Writes a random LLaMA-shaped checkpoint (default hidden 1024, intermediate 2816, 16 layers, vocab 32000; ~0.5 GB
in ~100 MB shards) to a temp dir twice: bf16 safetensors written by `save_pretrained(max_shard_size=...)`, and fp16
PyTorch .bin shards + pytorch_model.bin.index.json as huggyllama/llama-7b ships LLaMA-1 (what transformers 4's
`save_pretrained(safe_serialization=False)` wrote: huggingface_hub's `split_torch_state_dict_into_shards`, then
`torch.save` per shard; transformers 5 writes safetensors only). Then, each in a fresh subprocess:

    layer      bench.models.llm.load_llm_block(dir, -1)       the last layer, as fp32 (booster.dtype's default)
    layer-bin  the same from the .bin shards                         memory-mapped torch.load(weights_only=True)
    full       AutoModel.from_pretrained(dir, dtype=float32)         the whole base model, same dtype
    full-auto  AutoModel.from_pretrained(dir)                        the checkpoint's dtype: transformers 5 maps the
                                                                     shards and pages weights in only when read

Each child imports everything first (torch, transformers, the LLaMA modeling module, bench) and does its own load
once on a tiny 2-layer checkpoint (lazy imports, first-call code paths), then resets its peak RSS
(`echo 5 > /proc/self/clear_refs` resets VmHWM to the current RSS; without it ru_maxrss after imports is the
baseline), then loads and reports the peak RSS increase (VmHWM - VmRSS before; RSS counts mapped shard pages too)
and the wall seconds of the call; then it reads every loaded weight once (a reduction, as a forward pass would
read them) and reports the peak again, which is what a lazily mapped load really costs. "layer bytes" is the
loaded layer's parameter bytes; the goal is layer-load peak <= 1.5x layer bytes. The shards were just written, so
every load reads from the page cache. `load_llm_block` also hashes the shard it reads (sha256, stored as
llm.file_hash for provenance), which is part of its seconds.

    .venv/bin/python benchmarks/layer_load.py [--hidden 1024 --layers 16 --repeats 2 --dtype fp32]

Figures: benchmarks/README.md (2).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import gc, json, resource, sys, time
import torch, transformers, safetensors
import transformers.models.llama.modeling_llama
from transformers import AutoModel
from bench.config import RunConfig, override, resolve
from bench.models.llm import load_llm_block

mode, path, dtype, warm = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]

def load(p):
    if mode.startswith("layer"):
        sets = {"booster.variant": "rllm", "booster.source": p, "booster.layer": -1, "booster.dtype": dtype,
                "booster.llm_norm": "none"}
        return load_llm_block(resolve(override(RunConfig(), sets)).booster)
    if mode == "full":
        return AutoModel.from_pretrained(p, dtype=DTYPE)
    return AutoModel.from_pretrained(p)  # "full-auto": the checkpoint's dtype, tensors mapped lazily from the shards

load(warm)  # warm-up on a tiny checkpoint: lazy imports, first-call code paths and allocator pools
gc.collect()

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before, peak = status("VmRSS"), lambda: status("VmHWM")
    how = "VmHWM after clear_refs"
except OSError:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    how = "ru_maxrss"
t0 = time.perf_counter()
m = load(path)
seconds = time.perf_counter() - t0
extra = peak() - before
tensors = list(m.parameters()) + list(m.buffers())
with torch.no_grad():  # read every weight once, as a forward pass would: lazily mapped pages become resident
    checksum = sum(float(t.sum()) for t in tensors)  # reductions: no temporary copies
touched = peak() - before
print(json.dumps({"mode": mode, "seconds": seconds, "extra": extra, "touched": touched, "baseline": before, "how": how,
                  "bytes": sum(t.numel() * t.element_size() for t in tensors),
                  "params": sum(p.numel() for p in m.parameters()),
                  "dtype": str(next(m.parameters()).dtype)}))
"""


FORMATS = {"safetensors": "model-*.safetensors", "bin": "pytorch_model*.bin"}  # sub-folder: its shards


def write_checkpoint(d: Path, hidden: int, inter: int, layers: int, heads: int, vocab: int, shard: str) -> dict:
    """d/safetensors (bf16, save_pretrained) and d/bin (fp16 .bin shards + index) of one random LLaMA."""
    import torch
    import transformers
    from huggingface_hub import split_torch_state_dict_into_shards

    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                      num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                                      max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(d / "safetensors", max_shard_size=shard)
    sd = {k: v.to(torch.float16) for k, v in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(sd, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=shard)
    (d / "bin").mkdir()
    for fname, names in split.filename_to_tensors.items():
        torch.save({n: sd[n] for n in names}, d / "bin" / fname)
    if split.is_sharded:
        (d / "bin" / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": split.metadata, "weight_map": split.tensor_to_filename}))
    config.save_pretrained(d / "bin")
    del model, sd
    return describe(d)


def describe(d: Path) -> dict:
    """format -> (number of shards, bytes on disk)."""
    out = {}
    for fmt, pattern in FORMATS.items():
        shards = sorted((d / fmt).glob(pattern))
        out[fmt] = (len(shards), sum(p.stat().st_size for p in shards))
    return out


def child(mode: str, d: Path, dtype: str, warm: Path) -> dict:
    fmt = "bin" if mode.endswith("bin") else "safetensors"
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(d / fmt), dtype, str(warm / fmt)], cwd=ROOT,
                         capture_output=True, text=True, timeout=1200)
    if out.returncode:
        raise SystemExit(f"{mode} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--shard-size", default="100MB", help="save_pretrained max_shard_size")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="dtype the layer is loaded as")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dir", type=Path, help="reuse/keep the checkpoint here instead of a temp dir")
    a = p.parse_args(argv)

    print(f"# layer_load  {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; load1 {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="layer-load-") as tmp:
        d = a.dir or Path(tmp) / "llama"
        t0 = time.perf_counter()
        if (d / "bin" / "config.json").is_file():
            ck = describe(d)
        else:
            d.mkdir(parents=True, exist_ok=True)
            ck = write_checkpoint(d, a.hidden, a.intermediate, a.layers, a.heads, a.vocab, a.shard_size)
        warm = Path(tmp) / "warm-up"
        if not (warm / "bin" / "config.json").is_file():
            warm.mkdir()
            write_checkpoint(warm, 64, 128, 2, 4, 256, "1GB")
        print(f"# checkpoint: LLaMA-shaped, hidden {a.hidden}, intermediate {a.intermediate}, {a.layers} layers, "
              f"vocab {a.vocab}: bf16 safetensors, {ck['safetensors'][0]} shards, {mib(ck['safetensors'][1])}; fp16 "
              f".bin, {ck['bin'][0]} shards, {mib(ck['bin'][1])} (written in {time.perf_counter() - t0:.0f} s)")
        modes = ("layer", "layer-bin", "full", "full-auto")
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for r in range(a.repeats):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                l0 = os.getloadavg()[0]
                res = child(mode, d, a.dtype, warm)
                res["load1"] = l0
                runs[mode].append(res)
                print(f"  {mode:9s} repeat {r}: {res['seconds']:7.2f} s, peak RSS +{mib(res['extra'])} after loading, "
                      f"+{mib(res['touched'])} after reading every weight (tensors {mib(res['bytes'])} {res['dtype']}, "
                      f"{res['how']}, load1 {l0:.2f})", flush=True)

    layer_bytes = runs["layer"][0]["bytes"]
    what = {
        "layer": f"one layer: load_llm_block(dir, -1), {a.dtype}, bf16 safetensors",
        "layer-bin": f"one layer: load_llm_block(dir, -1), {a.dtype}, fp16 .bin shards",
        "full": f"whole model: AutoModel.from_pretrained(dir, dtype={a.dtype})",
        "full-auto": "whole model: AutoModel.from_pretrained(dir) (checkpoint dtype, lazily mapped)",
    }
    print("\n| load | seconds (median) | peak RSS increase: load (max) | ... after reading each weight once (max) "
          "| tensors | load peak / layer bytes |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for mode, rs in runs.items():
        sec = statistics.median(x["seconds"] for x in rs)
        pk = max(x["extra"] for x in rs)
        tp = max(x["touched"] for x in rs)
        summary[mode] = (sec, pk, tp)
        print(f"| {what[mode]} | {sec:.2f} | {mib(pk)} | {mib(tp)} | {mib(rs[0]['bytes'])} {rs[0]['dtype']} "
              f"| {'**' if mode.startswith('layer') else ''}{pk / layer_bytes:.2f}x"
              f"{'**' if mode.startswith('layer') else ''} |")
    loads = [x["load1"] for v in runs.values() for x in v]
    (ls, lp, _), (fs, fp, _) = summary["layer"], summary["full"]
    print(f"\nlayer vs whole model at the same dtype: {fs / ls:.1f}x faster, {fp / lp:.1f}x less peak memory; "
          f"layer bytes {mib(layer_bytes)}; load1 {min(loads):.1f}-{max(loads):.1f}")
    for mode in ("layer", "layer-bin"):
        peak = summary[mode][1]
        print(f"goal {mode} peak <= 1.5x layer bytes: {'met' if peak <= 1.5 * layer_bytes else 'NOT met'} "
              f"({peak / layer_bytes:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
