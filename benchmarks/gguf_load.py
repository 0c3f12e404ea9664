"""Benchmark: one layer read from a GGUF file vs transformers' full GGUF load of the same file.

    layer  bench.models.llm.load_llm_block(smollm2-135m, last)     its 9 tensors dequantized to fp32
    full   AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)  every tensor dequantized (transformers' loader)

Each in a fresh subprocess that imports everything first and resets its peak RSS (`echo 5 > /proc/self/clear_refs`),
then loads once and reports the wall seconds and the peak RSS increase (VmHWM - VmRSS before). The file is read
once before the timings, so both read from the page cache. The layer load includes the file's sha256 (provenance).

    .venv/bin/python benchmarks/gguf_load.py [--source smollm2-135m] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch, transformers, gguf
import transformers.models.llama.modeling_llama
from transformers import AutoModelForCausalLM
from bench.config import BoosterConfig
from bench.models.gguf_file import find
from bench.models.llm import load_llm_block

mode, source = sys.argv[1], sys.argv[2]
path = find(source)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
t = time.perf_counter()
if mode == "layer":
    b = BoosterConfig(variant="rllm", source=source, layer="last", residual="in", llm_norm="none", freeze="frozen",
                      init="pretrained", pos_emb="none", mask="bidirectional")
    out = load_llm_block(b)
else:
    out = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
s = time.perf_counter() - t
print(json.dumps({"mode": mode, "s": s, "peak_bytes": status("VmHWM:") - before}))
"""


def child(mode: str, source: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-c", CHILD, mode, source], capture_output=True, text=True, env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.models.gguf_file import find

    path = find(args.source)
    path.read_bytes()  # into the page cache for both
    print(f"{path.name}: {path.stat().st_size / 1e6:.0f} MB; load average {os.getloadavg()[0]:.2f} at start")
    res = {m: [child(m, args.source) for _ in range(args.repeats)] for m in ("layer", "full")}
    med = {m: (statistics.median(r["s"] for r in rs), statistics.median(r["peak_bytes"] for r in rs))
           for m, rs in res.items()}
    for m, (s, peak) in med.items():
        print(f"{m:>5}: {s:7.2f} s   peak RSS +{peak / 2**20:7.0f} MiB")
    print(f"ratio layer/full: time {med['layer'][0] / med['full'][0]:.3f}x, memory {med['layer'][1] / med['full'][1]:.3f}x "
          f"(goal <= 0.1x and <= 0.2x); load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
