"""Benchmark: does CPU bf16 autocast train as well as fp32? The same seeds of real record runs at both precisions.

For each config and seed, `bench.train.fit` runs twice, once at fp32 and once at bf16 (the CPU precision rule forced
each way through `bench.train.cpu_bf16_native`), and prints the per-epoch val AUC curves. Judged: the per-seed
difference bf16 - fp32 of the selected val AUC and of the val AUC over the epochs (mean |difference|), against the
seed-to-seed spread at fp32 (the standard deviation over seeds of the selected val AUC, and the mean over epochs of
the across-seed standard deviation of the curves): equal quality when the differences are within that spread. Also
the paired speed-up of training images/s (fit's own epoch timing), with the load average.

    .venv/bin/python benchmarks/precision_quality.py --seeds 0 1 2 3 4 --variants baseline rllm
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.train  # noqa: E402
from bench.config import RunConfig, override, resolve  # noqa: E402
from bench.data import task_spec  # noqa: E402
from bench.data.loading import load_splits  # noqa: E402

RECORD = {"vit.arch": "tiny", "vit.depth": 6, "vit.patch": 7, "booster.source": "minilm-l6", "train.batch_size": 64,
          "train.lr": 0.001, "train.weight_decay": 0.05, "train.warmup_epochs": 2}  # ablations/record.yaml
VARIANTS = {"baseline": {"booster.variant": "baseline"}, "rllm": {"booster.variant": "rllm"}}


def run(cfg, splits, spec, bf16: bool) -> dict:
    real = bench.train.cpu_bf16_native
    bench.train.cpu_bf16_native = lambda: bf16
    try:
        r = bench.train.fit(cfg, splits, spec, torch.device("cpu"))
    finally:
        bench.train.cpu_bf16_native = real
    return {"curve": [h["val_auc"] for h in r.history], "val_auc": r.metrics["val_auc"],
            "img_s": r.metrics["train_img_per_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=Path(__file__).parents[1] / "../shared/data/medmnist")
    p.add_argument("--task", default="breastmnist")
    p.add_argument("--epochs", type=int, default=9, help="the record's BreastMNIST budget")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (the record: --jobs 2 x 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    spec = task_spec(a.task, 28)
    splits = load_splits(spec, a.data_root.resolve(), download=False, splits=("train", "val"))
    print(f"# precision_quality: {a.task}, {a.epochs} epochs, seeds {a.seeds}, {a.threads} thread(s), "
          f"native bf16 here: {bench.train.cpu_bf16_native()}, load1 {os.getloadavg()[0]:.1f}", flush=True)
    for name in a.variants:
        res = {}
        for seed in a.seeds:
            cfg = resolve(override(RunConfig(), {**RECORD, **VARIANTS[name], "data.task": a.task,
                                                 "train.epochs": a.epochs, "seed": seed}))
            order = (False, True) if seed % 2 == 0 else (True, False)  # alternate which goes first: load drift
            res[seed] = {bf16: run(cfg, splits, spec, bf16) for bf16 in order}
            for bf16 in (False, True):
                r = res[seed][bf16]
                print(f"  {name} seed {seed} {'bf16' if bf16 else 'fp32'}: selected val AUC {r['val_auc']:.4f}, "
                      f"{r['img_s']:.0f} img/s, curve " + " ".join(f"{v:.3f}" for v in r["curve"]), flush=True)
        fp = np.array([res[s][False]["curve"] for s in a.seeds])
        bf = np.array([res[s][True]["curve"] for s in a.seeds])
        sel_fp = np.array([res[s][False]["val_auc"] for s in a.seeds])
        sel_bf = np.array([res[s][True]["val_auc"] for s in a.seeds])
        speed = statistics.median(res[s][True]["img_s"] / res[s][False]["img_s"] for s in a.seeds)
        print(f"{name}: selected val AUC fp32 {sel_fp.mean():.4f} +- {sel_fp.std(ddof=1):.4f} (seed sd), bf16 "
              f"{sel_bf.mean():.4f} +- {sel_bf.std(ddof=1):.4f}; per-seed bf16 - fp32: mean "
              f"{np.mean(sel_bf - sel_fp):+.4f}, max |.| {np.abs(sel_bf - sel_fp).max():.4f}; curves: mean "
              f"|bf16 - fp32| {np.abs(bf - fp).mean():.4f} vs "
              f"seed-to-seed sd {fp.std(axis=0, ddof=1).mean():.4f}; bf16 img/s / fp32 (median of seeds) {speed:.2f}x; "
              f"load1 {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
