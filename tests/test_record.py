"""The record grid's machinery: portable stores (no host, no absolute paths), the CPU estimate of `bench list`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import RunConfig, override, resolve
from bench.run.calibrate import Timing, run_seconds

BENCH = [sys.executable, "-m", "bench"]


def test_run_seconds_counts_the_images_train_py_trains_and_scores():
    cfg = resolve(override(RunConfig(), {"data.task": "breastmnist", "train.epochs": 3, "train.batch_size": 64}))
    # BreastMNIST: 546 train (8 whole batches of 64 = 512 trained, the ragged 34 dropped), 78 val, 156 test
    expected = 3 * (512 * 2e-3 + 78 * 5e-4) + 156 * 5e-4
    assert run_seconds(cfg, Timing(train_image_s=2e-3, eval_image_s=5e-4)) == pytest.approx(expected)
    audited = resolve(override(cfg, {"train.audit_test": True}))  # the protocol audit scores test every epoch
    assert run_seconds(audited, Timing(2e-3, 5e-4)) == pytest.approx(expected + 2 * 156 * 5e-4)


def _portable_grid(tmp_path: Path) -> Path:
    grid = tmp_path / "portable.yaml"
    grid.write_text(
        "name: portable\nportable: true\n"
        "defaults:\n  data: {task: breastmnist, size: 28}\n  vit: {arch: tiny, patch: 7, depth: 1}\n"
        "  booster: {source: minilm-l6, layer: -1}\n"
        "  train: {epochs: 1, batch_size: 16, eval_batch_size: 64, warmup_epochs: 0}\n"
        "variants:\n  baseline: {booster.variant: baseline}\n  rllm: {booster.variant: rllm}\n"
        "  broken: {booster.variant: rllm, train.lr: 1.0e+30}\n"  # diverges: a failed row with a traceback
    )
    return grid


def test_a_portable_grid_stores_no_host_name_and_no_absolute_path(tmp_path, fixture_root):
    root = fixture_root("breastmnist")
    results = tmp_path / "store"
    proc = subprocess.run([*BENCH, "run", "--grid", str(_portable_grid(tmp_path)), "--results", str(results),
                           "--data-root", str(root)], capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    import pandas as pd

    rows = pd.concat([pd.read_parquet(f) for f in (results / "runs").glob("*.parquet")])
    assert sorted(rows.label) == ["baseline", "broken", "rllm"]
    assert rows.hostname.isna().all()
    assert (rows[rows.label == "broken"].status == "failed").all()
    # the unscrubbed worker would have written these: the packaged LLM's folder, the data root, the host
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    forbidden = [str(root), str(results), site_packages, str(Path.home())]
    host = socket.gethostname()
    for f in [*(results / "runs").glob("*.parquet"), *(results / "logs").glob("*.log")]:
        text = f.read_bytes().decode("utf-8", "replace")
        for path in forbidden:
            assert path not in text, f"{f.name} holds {path}"
        if len(host) > 3:  # a very short host name ('vm') also occurs in ordinary words
            assert host not in text, f"{f.name} holds the host name"
    rllm = rows[rows.label == "rllm"].iloc[0]
    assert rllm["llm.source"].startswith("<site-packages>/")  # still says which file it was, without the machine
    assert rllm["data.md5"] and rllm.status == "ok"


def test_bench_list_cpu_estimate_times_each_setting(tmp_path, fixture_root):
    root = fixture_root("breastmnist")
    proc = subprocess.run([*BENCH, "list", "--grid", str(_portable_grid(tmp_path)), "--results", str(tmp_path / "s"),
                           "--cpu-estimate", "--jobs", "2"], capture_output=True, text=True, timeout=600,
                          env=_env(root))
    assert proc.returncode == 0, proc.stderr
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"CPU estimate on this machine (2 worker(s) x {threads} torch thread(s), 3 distinct models" in proc.stdout
    assert "whole grid: 3 runs," in proc.stdout
    bad = subprocess.run([*BENCH, "list", "--grid", str(_portable_grid(tmp_path)), "--cpu-estimate", "--jobs", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--jobs" in bad.stderr


def _env(root: Path) -> dict:
    return {**os.environ, "BENCH_DATA_ROOT": str(root)}
