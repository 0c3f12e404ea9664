"""The runner: the `ci` grid end to end (serial, joblib workers, a real Dask cluster), resume and retry,
failures that do not stop a grid, out-of-memory retry, SIGKILL at any moment, Ctrl-C, the shipped grids.

Everything trains on fixture data with the tiny random LLaMA of conftest's `tiny_llm`, ViT depth 2,
one epoch: a few seconds per run on CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from process_helpers import stored_ids, wait_for

from bench import cli, store
from bench.run import backends
from bench.config import run_id
from bench.grid import load_grid

from conftest import CI_TASKS
BENCH = str(Path(sys.executable).with_name("bench"))



def ci_args(env, results, *extra) -> list[str]:
    root, llm = env
    return ["run", "--grid", "ci", "--data-root", str(root), "--results", str(results),
            "--set", f"booster.source={llm}", *extra]


def ci_grid(env, *sets):
    from bench.config import parse_sets

    return load_grid("ci", parse_sets([f"booster.source={env[1]}", *sets]))


@pytest.fixture(scope="module")
def ci_results(ci_env, tmp_path_factory, one_thread):
    """The ci grid run once in this process (jobs=1); tests copy it before changing it."""
    results = tmp_path_factory.mktemp("ci-serial") / "results"
    assert cli.main(ci_args(ci_env, results)) == 0
    return results


def copy_store(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "results"
    shutil.copytree(src, dst)
    return dst


def assert_store_consistent(results: Path, expected_ids: set[str] | None = None, complete: bool = False) -> pd.DataFrame:
    """Every file readable, no temp files once `complete`, each ok row with its history, predictions and log."""
    rows = store.read_runs(results)
    for p in (results / store.HISTORY).glob("*.parquet"):
        pd.read_parquet(p)
    for p in (results / store.PREDICTIONS).glob("*.npz"):
        store.read_predictions(results, p.stem)
    if rows.empty:
        return rows
    assert rows["run_id"].is_unique
    if expected_ids is not None:
        assert set(rows["run_id"]) <= expected_ids
    for rid in rows.loc[rows["status"] == "ok", "run_id"]:
        assert (results / store.HISTORY / f"{rid}.parquet").is_file()
        assert (results / store.PREDICTIONS / f"{rid}.npz").is_file()
        assert store.log_path(results, rid).is_file()
    if complete:
        assert not list(results.rglob("*.tmp")), list(results.rglob("*.tmp"))
        assert not list(results.rglob(f"*{store.RUNNING_SUFFIX}"))
        assert set(rows["run_id"]) == expected_ids and (rows["status"] == "ok").all(), rows[["run_id", "status", "error"]]
    return rows


# ------------------------------------------------------------------------------------------ serial, resume


def test_ci_grid_serial_stores_every_run_whole(ci_env, ci_results, capsys):
    grid = ci_grid(ci_env)
    assert len(grid.runs) == 5 and {c.data.task for c in grid.runs} == set(CI_TASKS)
    rows = assert_store_consistent(ci_results, set(grid.run_ids()), complete=True)
    assert (rows["attempt"] == 1).all() and not rows["oom_retry"].any()
    assert (rows["worker_pid"] == os.getpid()).all()  # jobs=1 trains in the dispatcher
    assert (rows["data.fixture"]).all()
    # the second run of a task in this process found the dataset in memory
    for task in CI_TASKS:
        cached = rows[rows["task"] == task].sort_values("worker_run_index")["data_cached"].tolist()
        assert cached[1:] == [True] * (len(cached) - 1)
    log = store.log_path(ci_results, rows["run_id"].iloc[0]).read_text()
    assert "epoch 1/1" in log and "status ok" in log and "config {" in log

    before = {p.name: p.stat().st_mtime_ns for p in (ci_results / store.RUNS).iterdir()}
    assert cli.main(ci_args(ci_env, ci_results)) == 0
    out = capsys.readouterr().out
    assert "5 done, 0 failed, 0 to run" in out and "0 ok, 0 failed, 5 skipped" in out
    assert {p.name: p.stat().st_mtime_ns for p in (ci_results / store.RUNS).iterdir()} == before


def test_a_run_shows_live_progress_one_line_per_epoch_when_not_a_terminal(ci_env, tmp_path, capsys, one_thread):
    """Issue 34 item 17: `bench run` printed nothing between its first line and the first finished run (8 minutes
    for smoke under load). Without a terminal (a log file, here pytest's capture) each run says it started and
    then one line per epoch with the loss, val AUC and its ETA: never silent for more than an epoch, no flood."""
    results = tmp_path / "results"
    assert cli.main(ci_args(ci_env, results, "--set", "train.epochs=3", "--set", "data.task=breastmnist")) == 0
    out = capsys.readouterr().out.splitlines()
    rows = store.read_runs(results)
    history = store.read_history(results)
    progress = [line for line in out if line.startswith("  run ")]
    assert len(progress) == len(rows) * 4, out  # started + 3 epochs, per run
    finished = [line.split()[2] for line in out if line.startswith("[")]  # "[k/n] ok RUN_ID ...", in order
    label = dict(zip(rows["run_id"], rows["label"]))
    for i, rid in enumerate(finished):
        mine = progress[4 * i: 4 * i + 4]
        assert mine[0].endswith("started (3 epochs)") and f" {label[rid]} " in mine[0], mine
        for epoch, line in enumerate(mine[1:]):
            h = history[(history["run_id"] == rid) & (history["epoch"] == epoch)].iloc[0]
            assert f"epoch {epoch + 1}/3 loss {h['train_loss']:.4f} val_auc {h['val_auc']:.4f}" in line, line
            assert "so far, eta " in line
        assert mine[-1].endswith("eta 0s)")


def test_runs_in_other_processes_show_each_epoch_from_their_live_logs(tmp_path):
    """With --jobs N, Dask or SLURM the epochs are in the workers: the dispatcher reads them from the live logs the
    workers' RunLog writes. Each epoch line is shown once and only when whole; a retried run's log, started again
    from nothing, is read from its start; a log not there yet (or removed at its commit) is skipped."""
    from bench.run.progress import LiveLogs
    from bench.run.worker import RunLog

    a, b = tmp_path / "a.running.log", tmp_path / "b.running.log"
    shown: list[str] = []
    tail = LiveLogs({a: "rllm breastmnist@28", b: "baseline breastmnist@28"}, shown.append, every=3600)
    log = RunLog(str(a))
    log("run a, attempt 1")
    log("epoch 1/2 train_loss=0.7000 val_auc=0.6000")
    with open(a, "a") as f:
        f.write("2026-01-01T00:00:00 epoch 2/2 train_lo")  # a line its worker is writing right now
    tail.poll()
    assert shown == ["  rllm breastmnist@28: epoch 1/2 train_loss=0.7000 val_auc=0.6000"]
    with open(a, "a") as f:
        f.write("ss=0.6000 val_auc=0.7000\n")
    tail.poll()
    tail.poll()
    assert shown[1:] == ["  rllm breastmnist@28: epoch 2/2 train_loss=0.6000 val_auc=0.7000"]
    log.close()
    retry = RunLog(str(a))  # the retry: the file is written anew
    retry("epoch 1/2 train_loss=0.9000 val_auc=0.5000")
    retry.close()
    tail.poll()
    assert shown[2:] == ["  rllm breastmnist@28: epoch 1/2 train_loss=0.9000 val_auc=0.5000"]
    a.unlink()  # committed: its live log is gone
    other = RunLog(str(b))
    other("epoch 1/1 train_loss=0.5000 val_auc=0.8000")
    other.close()
    tail.start()
    tail.poll()
    tail.stop()
    assert shown[3:] == ["  baseline breastmnist@28: epoch 1/1 train_loss=0.5000 val_auc=0.8000"]


def test_list_and_dry_run(ci_env, ci_results, tmp_path, capsys):
    results = copy_store(ci_results, tmp_path)
    grid = ci_grid(ci_env)
    victim = grid.run_ids()[1]
    row = store.read_run(results, victim)
    store.write_run(results, {**row, "status": "failed", "error": "RuntimeError: boom"})

    assert cli.main(["list", "--grid", "ci", "--results", str(results), "--set", f"booster.source={ci_env[1]}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("grid ci: 5 runs, 4 done, 1 failed, 0 not run")
    assert all(rid in out for rid in grid.run_ids())
    assert f"failed {victim}: RuntimeError: boom" in out

    assert cli.main(ci_args(ci_env, results, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "1 to run (failed runs are retried)" in out and f"{victim}  failed" in out and "retry failed" in out
    assert cli.main(ci_args(ci_env, results, "--dry-run", "--force")) == 0
    assert "5 to run" in capsys.readouterr().out
    assert store.read_run(results, victim)["status"] == "failed"  # a dry run changes nothing


def test_failed_runs_are_retried_and_force_keeps_ok_results(ci_env, ci_results, tmp_path, capsys, monkeypatch):
    results = copy_store(ci_results, tmp_path)
    ids = ci_grid(ci_env).run_ids()
    victim = ids[0]
    row = store.read_run(results, victim)
    store.write_run(results, {**row, "status": "failed", "error": "RuntimeError: boom"})

    assert cli.main(ci_args(ci_env, results, "--skip-failed")) == 0  # left alone
    assert store.read_run(results, victim)["status"] == "failed"

    assert cli.main(ci_args(ci_env, results)) == 0  # retried: only that one runs
    out = capsys.readouterr().out
    assert "1 ok, 0 failed, 4 skipped" in out
    again = store.read_run(results, victim)
    assert again["status"] == "ok" and again["attempt"] == 2 and again["test_auc"] == row["test_auc"]

    # --force reruns everything; a forced rerun that fails keeps the ok row and logs the failure beside it
    import bench.train

    def broken_fit(cfg, *a, **k):
        if run_id(cfg) == ids[1]:
            raise RuntimeError("disk on fire")
        return real_fit(cfg, *a, **k)

    real_fit = bench.train.fit
    monkeypatch.setattr(bench.train, "fit", broken_fit)
    ok_before = store.read_run(results, ids[1])
    assert cli.main(ci_args(ci_env, results, "--force")) == 1
    out = capsys.readouterr().out
    assert "the earlier ok result is kept" in out and "disk on fire" in out
    kept = store.read_run(results, ids[1])
    assert kept["status"] == "ok" and kept["finished_at"] == ok_before["finished_at"]
    assert "disk on fire" in (results / store.LOGS / f"{ids[1]}.failed.log").read_text()
    rows = assert_store_consistent(results, set(ids), complete=True)
    assert rows.set_index("run_id").loc[ids[2], "attempt"] == 2


def test_failures_do_not_stop_the_grid_and_oom_retries_at_half_batch(ci_env, tmp_path, capsys, monkeypatch, one_thread):
    """Seeds 0-4 of one config: exception, NaN loss, OOM once (retried), OOM always, fine."""
    import torch

    import bench.train
    from bench.train import TrainingDiverged

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump({
        "defaults": {"data": {"task": "breastmnist"}, "vit": {"arch": "tiny", "patch": 7, "depth": 2},
                     "booster": {"variant": "baseline"},
                     "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 64, "warmup_epochs": 0}},
        "seeds": [0, 1, 2, 3, 4]}))
    calls = []
    real_fit = bench.train.fit

    def fake_fit(cfg, splits, spec, device, **kw):
        calls.append((cfg.seed, kw.get("micro_batch"), cfg.train.eval_batch_size))
        if cfg.seed == 0:
            raise ValueError("shapes do not match")
        if cfg.seed == 1:
            raise TrainingDiverged("train loss is nan at epoch 0")
        if cfg.seed in (2, 3) and (kw.get("micro_batch") is None or cfg.seed == 3):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(cfg, splits, spec, device, **kw)

    monkeypatch.setattr(bench.train, "fit", fake_fit)
    results = tmp_path / "results"
    args = ["run", "--grid", str(grid_file), "--data-root", str(ci_env[0]), "--results", str(results)]
    assert cli.main(args) == 1  # some failed: exit 1, after the whole grid
    out = capsys.readouterr().out
    assert "done: 2 ok, 3 failed" in out
    rows = store.read_runs(results).set_index("seed")
    assert list(rows["status"].sort_index()) == ["failed", "failed", "ok", "failed", "ok"]
    assert rows.loc[0, "error"] == "ValueError: shapes do not match"
    assert rows.loc[1, "error"].startswith("TrainingDiverged: train loss is nan")
    assert rows.loc[2, "oom_retry"] and rows.loc[2, "micro_batch"] == 4 and rows.loc[2, "train.batch_size"] == 8
    assert "OutOfMemoryError" in rows.loc[3, "error"] and rows.loc[3, "oom_retry"]
    assert not rows.loc[4, "oom_retry"] and rows.loc[4, "micro_batch"] == 8
    assert (2, None, 64) in calls and (2, 4, 32) in calls  # retried once at half the batch (and eval batch)
    assert [c for c in calls if c[0] == 3] == [(3, None, 64), (3, 4, 32)]  # exactly one retry
    # the retried run's numbers are those of a plain run: same effective batch, same data order
    assert rows.loc[2, "run_id"] == run_id(load_grid(str(grid_file)).runs[2])
    for seed in (0, 1, 3):
        assert not (results / store.PREDICTIONS / f"{rows.loc[seed, 'run_id']}.npz").exists()
        assert "FAILED" in store.log_path(results, rows.loc[seed, "run_id"]).read_text()
    assert "out of memory" in store.log_path(results, rows.loc[2, "run_id"]).read_text()

    monkeypatch.setattr(bench.train, "fit", real_fit)  # a rerun retries only the failed ones
    assert cli.main(args) == 0
    rows = store.read_runs(results).set_index("seed")
    assert (rows["status"] == "ok").all() and list(rows["attempt"].sort_index()) == [2, 2, 1, 2, 1]


def test_stale_temp_files_are_removed_and_one_dispatcher_per_store(ci_env, ci_results, tmp_path, capsys):
    results = copy_store(ci_results, tmp_path)
    junk = [results / store.RUNS / ".abc.parquet.x1.tmp", results / store.PREDICTIONS / ".abc.npz.x2.tmp",
            results / store.LOGS / f"abc{store.RUNNING_SUFFIX}"]
    for p in junk:
        p.write_bytes(b"half a file")
    with store.results_lock(results):
        assert cli.main(ci_args(ci_env, results)) == 2
        err = capsys.readouterr().err
        assert "in use by another `bench run`" in err and f"pid {os.getpid()}" in err and err.count("\n") == 1
    assert all(p.exists() for p in junk)  # the refused run touched nothing
    assert cli.main(ci_args(ci_env, results)) == 0
    assert "removed 3 temp/live-log files" in capsys.readouterr().out
    assert not any(p.exists() for p in junk)


# ------------------------------------------------------------------------------------ parallel backends


@pytest.mark.slow
def test_jobs_two_worker_processes_share_cores_and_reuse_data(ci_env, ci_results, tmp_path, capsys):
    results = tmp_path / "results"
    assert cli.main(ci_args(ci_env, results, "--jobs", "2")) == 0
    ids = set(ci_grid(ci_env).run_ids())
    rows = assert_store_consistent(results, ids, complete=True)
    assert "2 worker processes" in capsys.readouterr().out
    assert os.getpid() not in set(rows["worker_pid"]) and rows["worker_pid"].nunique() <= 2
    assert rows["torch_threads"].between(1, max(1, backends.cores() // 2)).all()  # the cores split between 2
    # a worker keeps its datasets: any later run of a task it already ran found the data in memory
    for _, runs in rows.sort_values("worker_run_index").groupby("worker_pid"):
        seen = set()
        for task, cached in zip(runs["task"], runs["data_cached"]):
            assert cached == (task in seen)
            seen.add(task)
    assert rows["data_cached"].any()  # 3 breastmnist runs on 2 workers: one worker ran two
    # same configs, same numbers as the serial run
    serial = store.read_runs(ci_results).set_index("run_id")["test_auc"]
    assert rows.set_index("run_id")["test_auc"].to_dict() == serial.to_dict()


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_its_run_redone(ci_env, tmp_path, capsys):
    """The OS kills a pool worker (e.g. for memory) while it trains: its run is re-dispatched, the grid completes."""
    import threading

    import psutil

    results = tmp_path / "results"
    killed = []

    def killer():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and not killed:
            live = list((results / store.LOGS).glob(f"*{store.RUNNING_SUFFIX}")) if (results / store.LOGS).is_dir() else []
            workers = [c for c in psutil.Process().children(recursive=True) if "popen_loky" in " ".join(c.cmdline())]
            if live and workers:
                workers[0].kill()
                killed.append(workers[0].pid)
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert cli.main(ci_args(ci_env, results, "--jobs", "2", "--set", "train.epochs=2")) == 0
    thread.join()
    assert killed
    assert "a worker process died" in capsys.readouterr().err
    rows = assert_store_consistent(results, set(ci_grid(ci_env, "train.epochs=2").run_ids()), complete=True)
    assert killed[0] not in set(rows["worker_pid"])


@pytest.mark.slow
def test_ctrl_c_stops_pool_workers(ci_env, tmp_path, capsys, monkeypatch):
    """With workers, Ctrl-C reaches the dispatcher (workers ignore SIGINT); it terminates them and keeps what is stored."""
    import psutil

    real_commit, commits, workers = store.commit, [], []

    def commit_then_ctrl_c(*a, **k):
        commits.append(real_commit(*a, **k))
        workers.extend(c.pid for c in psutil.Process().children(recursive=True)
                       if "popen_loky" in " ".join(c.cmdline()))
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "commit", commit_then_ctrl_c)
    results = tmp_path / "results"
    assert cli.main(ci_args(ci_env, results, "--jobs", "2")) == 130
    assert "interrupted: 1 runs finished and stored, 4 not" in capsys.readouterr().out
    assert commits == ["ok"] and len(assert_store_consistent(results)) == 1
    assert not list((results / store.LOGS).glob(f"*{store.RUNNING_SUFFIX}"))
    assert len(workers) == 2 and _gone(workers), "pool workers still alive after Ctrl-C"


@pytest.mark.slow
def test_dask_local_cluster_runs_the_ci_grid_one_gpu_slot_at_a_time(ci_env, ci_results, tmp_path):
    from distributed import LocalCluster

    results = tmp_path / "results"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, resources={"GPU": 1}, host="127.0.0.1",
                      dashboard_address=None, worker_dashboard_address=None) as cluster:
        rc = cli.main(ci_args(ci_env, results, "--backend", "dask", "--scheduler", cluster.scheduler_address))
    assert rc == 0
    rows = assert_store_consistent(results, set(ci_grid(ci_env).run_ids()), complete=True)
    assert os.getpid() not in set(rows["worker_pid"])  # trained in the cluster's worker process
    # two worker threads, but GPU=1 per run: the runs never overlapped
    spans = sorted(zip(rows["started_unix"], rows["started_unix"] + rows["wall_s"]))
    assert all(end <= nxt + 0.05 for (_, end), (nxt, _) in zip(spans, spans[1:]))
    serial = store.read_runs(ci_results).set_index("run_id")["test_auc"]
    assert rows.set_index("run_id")["test_auc"].to_dict() == serial.to_dict()


# ----------------------------------------------------------------------------- kill, interrupt, resume


def _start(env, results, *extra) -> subprocess.Popen:
    proc_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([BENCH, *ci_args(env, results, "--set", "train.epochs=2", *extra)], env=proc_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _mid_run(results: Path, since: float) -> bool:
    """Some run started after `since` is training and has no row yet (older live logs are a killed run's)."""
    live = set()
    for p in (results / store.LOGS).glob(f"*{store.RUNNING_SUFFIX}"):
        try:
            if p.stat().st_mtime >= since:
                live.add(p.name[: -len(store.RUNNING_SUFFIX)])
        except FileNotFoundError:
            pass
    return bool(live - stored_ids(results))


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _gone(pids, timeout=10.0) -> bool:
    import psutil

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_stores_each_run_exactly_once(ci_env, tmp_path):
    results = tmp_path / "results"
    expected = set(ci_grid(ci_env, "train.epochs=2").run_ids())

    # 1. SIGKILL the whole (single-process) run right after its first row is written
    p = _start(ci_env, results)
    wait_for(lambda: len(stored_ids(results)) >= 1, p)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert_store_consistent(results, expected)
    assert len(stored_ids(results)) < len(expected)

    # 2. two worker processes; SIGKILL only the dispatcher while a run trains: its workers exit on their own,
    #    so no orphan keeps training a run the next dispatcher will train again
    since = time.time()
    p = _start(ci_env, results, "--jobs", "2")
    wait_for(lambda: _mid_run(results, since), p)
    kids = _children(p.pid)
    assert kids
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert _gone(kids), "orphaned workers kept training after the dispatcher died"
    assert_store_consistent(results, expected)

    # 3. the rerun removes what the kills left and completes the grid: every run once, all ok, nothing partial
    p = _start(ci_env, results)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    rows = assert_store_consistent(results, expected, complete=True)
    assert len(rows) == len(expected)
    for rid in rows["run_id"]:
        hist = pd.read_parquet(results / store.HISTORY / f"{rid}.parquet")
        assert list(hist["epoch"]) == [0, 1]
        pred = store.read_predictions(results, rid)
        assert np.isfinite(pred["y_score"]).all() and len(pred["y_true"]) == 16


def test_ctrl_c_keeps_finished_runs_serial(ci_env, tmp_path, capsys, monkeypatch, one_thread):
    import bench.train

    real_fit, calls = bench.train.fit, []

    def interrupted_fit(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*a, **k)

    monkeypatch.setattr(bench.train, "fit", interrupted_fit)
    results = tmp_path / "results"
    assert cli.main(ci_args(ci_env, results)) == 130
    captured = capsys.readouterr()
    assert "interrupted: 1 runs finished and stored, 4 not" in captured.out
    assert captured.err == "bench: interrupted; finished runs are kept\n"
    rows = assert_store_consistent(results, set(ci_grid(ci_env).run_ids()))
    assert len(rows) == 1 and rows["status"].iloc[0] == "ok"
    assert not list((results / store.LOGS).glob(f"*{store.RUNNING_SUFFIX}"))


# -------------------------------------------------------------------------------------- shipped grids


def _no_network(monkeypatch):
    import huggingface_hub

    import bench.models.llm.source as llm_source

    def refuse(*a, **k):
        raise AssertionError("touched the network")

    monkeypatch.setattr(llm_source, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr("torchvision.datasets.utils.download_url", refuse)


TABLE1_2D = {"breastmnist", "retinamnist", "pneumoniamnist", "dermamnist", "octmnist", "organamnist"}
TABLE3_3D = {"fracturemnist3d", "adrenalmnist3d", "nodulemnist3d", "vesselmnist3d"}


def test_paper_grid_is_the_papers_tables_and_dry_runs_offline(tmp_path, capsys, monkeypatch):
    """Lai et al.: Table 1 (2D, ViT-S), Table 3 (3D: ViT-3D, ViViT-S, ViViT-M), Tables 5-6 (ViViT-M ablations)."""
    _no_network(monkeypatch)
    grid = load_grid("paper")
    cells = {(c.data.task, c.vit.arch, c.booster.variant, c.booster.residual, c.booster.freeze) for c in grid.runs}
    rllm, mlp, out, hybrid, tuned = ("rllm", "in", "frozen"), ("mlp", None, None), ("rllm", "out", "frozen"), \
        ("rllm", "hybrid", "frozen"), ("rllm", "in", "finetune")
    expected = {(t, "small", *v) for t in TABLE1_2D for v in [("baseline", None, None), rllm]}  # Table 1: no more
    expected |= {(t, a, *v) for t in TABLE3_3D for a in ("vit3d-m", "vivit-s", "vivit-m")
                 for v in [("baseline", None, None), rllm]}
    expected |= {(t, "vivit-m", *v) for t in ("fracturemnist3d", "adrenalmnist3d") for v in [mlp, tuned, out, hybrid]}
    assert cells == expected
    assert len(grid.runs) == 3 * len(expected) and {c.seed for c in grid.runs} == {0, 1, 2}
    blocks = {(c.booster.source, c.booster.layer) for c in grid.runs if c.booster.variant == "rllm"}
    assert blocks == {("huggyllama/llama-7b", "last")}  # LLaMA-1 7B layer 31 of 32
    assert {c.booster.source for c in grid.runs if c.booster.variant == "mlp"} == {"huggyllama/llama-7b"}  # its width
    assert all(c.train.audit_test and not c.booster.bias for c in grid.runs if c.booster.variant != "baseline")
    two_d = [c for c in grid.runs if not c.data.task.endswith("3d")]
    assert {(c.vit.weights, c.vit.head, c.vit.paper_mode, c.train.schedule, c.train.mixup, c.train.randaug_ops)
            for c in two_d} == {("deit_small_patch16_224.fb_in1k", "pretrained", True, "cosine_epoch", 0.8, 2)}
    assert {c.label for c in two_d} == {"baseline-2d", "rllm-2d"}
    three_d = [c for c in grid.runs if c.data.task.endswith("3d")]
    assert {(c.train.optimizer, c.train.lr, c.train.schedule, c.train.batch_size, c.data.std) for c in three_d} == {
        ("adam", 1e-5, "constant", 32, (1.0,))}

    results = tmp_path / "results"
    assert cli.main(["list", "--grid", "paper", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"grid paper: {len(grid.runs)} runs, 0 done, 0 failed, {len(grid.runs)} not run")
    assert cli.main(["run", "--grid", "paper", "--results", str(results), "--data-root", str(tmp_path / "nodata"),
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{len(grid.runs)} to run" in out and "hub model huggyllama/llama-7b is checked and fetched" in out
    assert "breastmnist_224" not in out and "breastmnist.npz is not in" in out
    # without the paper's checkpoints the dry run says Table 1 starts from DeiT-S (the second reading)
    assert "start: baseline-2d, rllm-2d (36 runs): timm deit_small_patch16_224.fb_in1k (no vit.checkpoint)" in out
    assert not results.exists()


def test_paper_grid_with_the_papers_checkpoints_starts_table1_from_them(tmp_path, capsys, monkeypatch):
    """Given LM4VisualEncoding's two files (here: stand-ins storing epoch 299 as theirs do), Table 1's baseline
    starts from ViT-Small and its R-LLM from ViT-Small-LLaMA, at epoch 300 of the 400-epoch schedule; 3D unchanged."""
    import argparse

    import torch

    _no_network(monkeypatch)
    files = {}
    for name, tensor in (("vit-small", torch.zeros(1)), ("vit-llama-small", torch.ones(1))):
        (tmp_path / name).mkdir()
        files[name] = tmp_path / name / "checkpoint.pth"
        torch.save({"model": {"x": tensor}, "optimizer": {}, "lr_scheduler": {}, "epoch": 299, "scaler": {},
                    "args": argparse.Namespace(epochs=300)}, files[name])
    sets = [f"baseline-2d:vit.checkpoint={files['vit-small']}", f"rllm-2d:vit.checkpoint={files['vit-llama-small']}"]
    plain = load_grid("paper")
    grid = load_grid("paper", {k: v for k, _, v in (s.partition("=") for s in sets)})
    two_d = {(c.label, c.vit.checkpoint, c.vit.weights, c.train.start_epoch, c.train.epochs) for c in grid.runs
             if c.vit.arch == "small"}
    assert two_d == {("baseline-2d", str(files["vit-small"]), "", 300, 100),
                     ("rllm-2d", str(files["vit-llama-small"]), "", 300, 100)}
    three_d = [rid for c, rid in zip(grid.runs, grid.run_ids()) if c.vit.arch != "small"]
    assert three_d == [rid for c, rid in zip(plain.runs, plain.run_ids()) if c.vit.arch != "small"]
    argv = [x for s in sets for x in ("--set", s)]
    assert cli.main(["run", "--grid", "paper", "--results", str(tmp_path / "r"), "--data-root", str(tmp_path / "nd"),
                     "--dry-run", *argv]) == 0
    out = capsys.readouterr().out
    assert "start: baseline-2d (18 runs): checkpoint vit-small/checkpoint.pth" in out
    assert "start: rllm-2d (18 runs): checkpoint vit-llama-small/checkpoint.pth" in out
    assert "schedule epochs 300-399 of 400" in out


def test_full_grid_structure(monkeypatch):
    """Every task, every LLM at its first, middle and last layer, every variant: 151 runs per task and seed."""
    from bench.data import tasks

    _no_network(monkeypatch)
    grid = load_grid("full")
    assert {c.data.task for c in grid.runs} == set(tasks()) and {c.seed for c in grid.runs} == {0, 1, 2}
    llms = {"HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-360M", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B",
            "TinyLlama/TinyLlama_v1.1", "meta-llama/Llama-2-7b-hf"}
    mine = [c for c in grid.runs if c.data.task == "breastmnist" and c.seed == 0]
    assert sum(c.booster.variant == "baseline" for c in mine) == 1  # one baseline per task and seed, shared by all LLMs
    for source in llms:
        rllm = [c for c in mine if c.booster.source == source and c.booster.variant == "rllm"]
        assert {c.booster.layer for c in rllm} == {"first", "middle", "last"} and len(rllm) == 3 * 8
        assert len({c.label for c in rllm}) == 8
        assert sum(c.booster.source == source and c.booster.variant == "adapters" for c in mine) == 1
    assert len(mine) == 1 + len(llms) * (1 + 3 * 8) and len(grid.runs) == 18 * 3 * len(mine)
    assert len({run_id(c) for c in grid.runs}) == len(grid.runs)
    regime = {(c.data.task.endswith("3d"), c.vit.arch, c.vit.weights, c.train.optimizer) for c in grid.runs}
    assert regime == {(False, "small", "deit_small_patch16_224.fb_in1k", "adamw"), (True, "vit3d-m", "", "adam")}


def test_smoke_and_ci_grids_expand():
    assert len(load_grid("smoke").runs) == 3
    ci = load_grid("ci")
    assert {c.data.task for c in ci.runs} == set(CI_TASKS) and all(c.train.epochs == 1 for c in ci.runs)


def test_runs_per_gpu_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    from bench.cli import main

    results = tmp_path / "results"
    assert main(["run", "--grid", "smoke", "--runs-per-gpu", "2", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--runs-per-gpu" in err and "--jobs" in err
    assert not results.exists()
