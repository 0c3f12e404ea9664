"""Faults a multi-day grid meets (issue 16), each injected for real, and what the user sees.

    store folder full          a small tmpfs filled to the last byte (else RLIMIT_FSIZE in a subprocess)
    store folder read-only     the folder bind-mounted over itself read-only (root ignores chmod)
    store folder removed       rm -rf of the folder while the dispatcher holds its lock
    data file deleted/changed  the file removed / rewritten on disk between two runs
    SIGTERM                    os.kill on a real `bench run` subprocess (--jobs 2), while list/report run beside it
    Dask worker lost           SIGKILL of the worker process of a LocalCluster training the run
    PostgreSQL dropped         the test's own PostgreSQL cluster stopped and started again under `bench tune`
    hub unreachable            HF endpoint on a closed local port; one model in the hub cache, one not

In-process faults fire from a wrapper around `bench.store.commit` (after the first run is stored): the
wrapper only picks the moment, the fault itself is the kernel's. Runs are the `ci` grid's (fixture data,
a tiny random LLaMA, ViT depth 2, one epoch): seconds each on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from postgres_helpers import postgres_cluster
from process_helpers import stored_ids, wait_for

import bench.store
from bench import cli, store
from bench.grid import load_grid

BENCH = str(Path(sys.executable).with_name("bench"))


@pytest.fixture(scope="module")
def env(ci_env):
    """(fixture data root, tiny LLaMA dir): conftest's, for the `ci` grid."""
    return ci_env


def run_args(env, results, *extra, grid="ci") -> list[str]:
    root, llm = env
    return ["run", "--grid", str(grid), "--data-root", str(root), "--results", str(results),
            "--set", f"booster.source={llm}", *extra]


def grid_ids(env, *sets, grid="ci") -> set[str]:
    from bench.config import parse_sets

    return set(load_grid(str(grid), parse_sets([f"booster.source={env[1]}", *sets])).run_ids())


@pytest.fixture
def breast_grid(tmp_path) -> Path:
    """The ci grid on breastmnist only: baseline, rllm, adapters (3 runs)."""
    path = tmp_path / "breast.yaml"
    text = (Path(__file__).parents[1] / "ablations" / "ci.yaml").read_text()
    path.write_text(text.replace("data.task: [breastmnist, adrenalmnist3d]", "data.task: [breastmnist]"))
    return path


def after_first_commit(monkeypatch, fault) -> None:
    """Inject `fault()` right after the dispatcher stored its first run."""
    real = bench.store.commit
    calls = []

    def commit(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        if len(calls) == 1:
            fault()
        return out

    monkeypatch.setattr(bench.store, "commit", commit)


def one_line_error(err: str, rc: int, expect_rc: int) -> str:
    assert rc == expect_rc, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: "), err
    assert "Traceback" not in err
    return lines[0]


def assert_whole(results: Path, expected: set[str]) -> pd.DataFrame:
    """Every stored file reads whole; an ok row has its history, predictions and log; the store read through
    its index equals the per-run files; no run is ok unless it finished."""
    files = sorted((results / store.RUNS).glob("*.parquet"))
    one_by_one = pd.concat([pq.read_table(p).to_pandas() for p in files]) if files else pd.DataFrame()
    for p in (results / store.HISTORY).glob("*.parquet"):
        pq.read_table(p)
    for p in (results / store.PREDICTIONS).glob("*.npz"):
        with np.load(p) as z:
            assert np.isfinite(z["y_score"]).all()
    rows = store.read_runs(results)
    assert sorted(rows["run_id"]) == sorted(one_by_one.get("run_id", []))
    assert set(rows["run_id"]) <= expected
    for rid in rows.loc[rows["status"] == "ok", "run_id"]:
        assert len(pq.read_table(results / store.HISTORY / f"{rid}.parquet")) >= 1
        assert (results / store.PREDICTIONS / f"{rid}.npz").is_file() and store.log_path(results, rid).is_file()
    return rows


def rerun_completes(env, results, expected, capsys, *extra, grid="ci") -> None:
    capsys.readouterr()
    assert cli.main(run_args(env, results, *extra, grid=grid)) == 0, capsys.readouterr()
    rows = assert_whole(results, expected)
    assert set(rows["run_id"]) == expected and (rows["status"] == "ok").all()
    assert not list(results.rglob("*.tmp")) and not list(results.rglob(f"*{store.RUNNING_SUFFIX}"))


def fill(folder: Path) -> None:
    """Write a file until the filesystem has no byte left."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 14, 1 << 10, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


# ----------------------------------------------------------------------------------- store faults


def test_disk_full_stops_the_grid_with_one_line_and_a_rerun_resumes(env, breast_grid, tmp_path, capsys, monkeypatch,
                                                                    mounts, one_thread):
    """A real ENOSPC: the results folder on a 16 MB tmpfs filled to the last byte after the first run (with
    the index refreshed after every run, so it is written too)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    results = fs / "results"
    expected = grid_ids(env, grid=breast_grid)
    monkeypatch.setenv("BENCH_COMPACT_EVERY", "1")
    if not mounts("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(fs)):
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN) to fill it; "
                    "test_file_size_limit_stops_the_grid_with_one_line covers a full disk's sibling, EFBIG")
    after_first_commit(monkeypatch, lambda: fill(fs))
    rc = cli.main(run_args(env, results, grid=breast_grid))
    captured = capsys.readouterr()
    line = one_line_error(captured.err, rc, 3)
    assert f"results folder {results} is full (No space left on device writing " in line
    assert "stopped with 1 runs stored, 2 not" in line and "free at least" in line and "B for the 2 runs left and a rewrite of the index" in line
    assert line.endswith("then rerun the same command to resume") and "Traceback" not in captured.out
    rows = assert_whole(results, expected)
    assert (rows["status"] == "ok").sum() == 1  # the first run; the one being written is failed or absent
    (fs / "filler").unlink()
    rerun_completes(env, results, expected, capsys, grid=breast_grid)


def test_file_size_limit_stops_the_grid_with_one_line_and_a_rerun_resumes(env, breast_grid, tmp_path, capsys):
    """A real EFBIG: `bench run` in a subprocess under RLIMIT_FSIZE (SIGXFSZ ignored), stopped like a full disk."""
    import resource

    grid, results, expected = breast_grid, tmp_path / "results", grid_ids(env, grid=breast_grid)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))  # smaller than a run's row

    proc = subprocess.run([BENCH, *run_args(env, results, grid=grid)], check=False, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit, env=dict(os.environ, OMP_NUM_THREADS="1"))
    line = one_line_error(proc.stderr, proc.returncode, 3)
    assert f"results folder {results} is full (File too large writing " in line and "free at least" in line
    assert "Traceback" not in proc.stdout
    assert not (assert_whole(results, expected)["status"] == "ok").any()
    rerun_completes(env, results, expected, capsys, grid=grid)


def test_read_only_results_folder_stops_the_grid_and_a_rerun_resumes(env, breast_grid, tmp_path, capsys, monkeypatch,
                                                                     mounts, one_thread):
    """A real EROFS: after the first run the results folder is bind-mounted over itself read-only (the
    dispatcher's open lock file does not block it: it belongs to the mount below). As root a chmod would not
    stop any write, so without mount rights there is no way to inject it here."""
    results = tmp_path / "results"
    results.mkdir()
    if not mounts("--bind", str(results), str(results)):
        pytest.skip("cannot bind-mount here (needs CAP_SYS_ADMIN), and as root a chmod does not make a folder read-only")
    mounts.undo()
    expected = grid_ids(env, grid=breast_grid)
    after_first_commit(monkeypatch, lambda: (mounts("--bind", str(results), str(results)),
                                             mounts("-o", "remount,bind,ro", str(results))))
    rc = cli.main(run_args(env, results, grid=breast_grid))
    captured = capsys.readouterr()
    line = one_line_error(captured.err, rc, 3)
    assert f"results folder {results} is read-only (Read-only file system writing " in line
    assert "stopped with 1 runs stored, 2 not" in line and "make it writable again" in line
    assert (assert_whole(results, expected)["status"] == "ok").sum() == 1
    mounts.undo()
    mounts.undo()
    rerun_completes(env, results, expected, capsys, grid=breast_grid)


def test_results_folder_removed_mid_grid_stops_without_recreating_it(env, breast_grid, tmp_path, capsys, monkeypatch,
                                                                     one_thread):
    """rm -rf of the results folder while the grid runs: the dispatcher must not write a fresh, lock-less store
    beside whatever replaced it; it stops, and the rerun starts the grid again."""
    results = tmp_path / "results"
    expected = grid_ids(env, grid=breast_grid)
    after_first_commit(monkeypatch, lambda: shutil.rmtree(results))
    rc = cli.main(run_args(env, results, grid=breast_grid))
    line = one_line_error(capsys.readouterr().err, rc, 3)
    assert f"results folder {results} was removed (or replaced) while bench run was writing it" in line
    assert "rerun the same command" in line
    assert not results.exists()
    rerun_completes(env, results, expected, capsys, grid=breast_grid)


# ------------------------------------------------------------------------------------------ data files


def test_data_file_deleted_or_changed_mid_grid_fails_its_runs_and_the_grid_goes_on(env, tmp_path, capsys, monkeypatch,
                                                                                   one_thread):
    """After the first breastmnist run: breastmnist's file is rewritten (other bytes) and adrenalmnist3d's is
    deleted. The worker holds both in memory by then only for breastmnist; it notices the change on disk."""
    root = tmp_path / "medmnist"
    shutil.copytree(env[0], root)
    results = tmp_path / "results"
    breast, adrenal = root / "breastmnist.npz", root / "adrenalmnist3d.npz"

    def fault():
        breast.write_bytes(breast.read_bytes() + b"changed")
        adrenal.unlink()

    after_first_commit(monkeypatch, fault)
    rc = cli.main(run_args((root, env[1]), results))
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.out + captured.err
    rows = assert_whole(results, grid_ids(env)).set_index("run_id")
    assert len(rows) == 5 and (rows["status"] == "ok").sum() == 1  # the grid went on to every run
    failed = rows[rows["status"] == "failed"]
    assert sorted(failed["task"]) == ["adrenalmnist3d", "adrenalmnist3d", "breastmnist", "breastmnist"]
    for task, error in zip(failed["task"], failed["error"]):
        if task == "breastmnist":
            assert f"{breast} is corrupt (md5 " in error and "bench data fetch breastmnist" in error
        else:
            assert "adrenalmnist3d.npz is not in" in error and "bench data fetch adrenalmnist3d" in error
    assert "breastmnist.npz is corrupt" in captured.out


# ------------------------------------------------------------------- SIGTERM, list and report beside a grid


@pytest.mark.slow
def test_sigterm_stops_a_grid_cleanly_while_list_report_work_and_a_second_run_is_refused(env, tmp_path, capsys):
    """A real `bench run --jobs 2` (dispatcher + two loky workers). Beside it: `bench list` and `bench report`
    read the store, a second `bench run` is refused. Then SIGTERM to the whole process group, as a cluster
    scheduler's pre-emption sends it: the dispatcher stores what finished and exits promptly."""
    results = tmp_path / "results"
    args = run_args(env, results, "--set", "train.epochs=3", "--jobs", "2")
    expected = grid_ids(env, "train.epochs=3")
    proc = subprocess.Popen([BENCH, *args], env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for(lambda: len(stored_ids(results)) >= 1, proc, timeout=240)

    list_args = ["list", "--grid", "ci", "--set", f"booster.source={env[1]}", "--set", "train.epochs=3",
                 "--results", str(results)]
    assert cli.main(list_args) == 0
    out = capsys.readouterr().out
    assert out.startswith("grid ci: 5 runs, ") and " done, " in out
    assert cli.main(["report", "--results", str(results), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "all" / "index.html").is_file()
    capsys.readouterr()
    assert cli.main(args) == 2
    line = one_line_error(capsys.readouterr().err, 2, 2)
    assert f"{results} is in use by another `bench run` (pid {proc.pid}" in line

    wait_for(lambda: any((results / store.LOGS).glob(f"*{store.RUNNING_SUFFIX}")), proc, timeout=240)
    os.killpg(proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20, "bench run did not exit promptly on SIGTERM"
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "Traceback" not in out and "UserWarning" not in out and "A worker stopped" not in out, out
    assert "rerun the same command to resume" in out
    assert "bench: stopped by SIGTERM; finished runs are kept; resume with the same command: bench run --grid ci" in out
    rows = assert_whole(results, expected)
    assert (rows["status"] == "ok").all() and len(rows) < len(expected)  # nothing failed or ok that did not finish
    for rid in rows["run_id"]:
        assert len(pq.read_table(results / store.HISTORY / f"{rid}.parquet")) == 3
    rerun_completes(env, results, expected, capsys, "--set", "train.epochs=3")


# ------------------------------------------------------------------------------------------- Dask


def _pid_training(results: Path) -> int | None:
    for p in (results / store.LOGS).glob(f"*{store.RUNNING_SUFFIX}"):
        words = p.read_text().split()
        if "pid" in words and "epoch" in words:  # an epoch done: the run is well under way
            return int(words[words.index("pid") + 1])
    return None


@pytest.mark.slow
def test_a_lost_dask_worker_has_its_run_retried_on_another_at_most_worker_retries_times(env, tmp_path, capsys):
    """SIGKILL of the cluster's worker process training the run (its nanny restarts it): with
    --worker-retries 1 the scheduler's move to another worker trains it to the end; with 0 it is failed."""
    from distributed import LocalCluster

    grid = tmp_path / "one.yaml"
    grid.write_text("name: one\ndefaults:\n  data: {task: breastmnist, size: 28}\n  vit: {arch: tiny, patch: 7, depth: 2}\n"
                    "  booster: {variant: baseline}\n  train: {epochs: 12, batch_size: 8, warmup_epochs: 0}\nseeds: [0]\n")
    assert len(grid_ids(env, grid=grid)) == 1
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      worker_dashboard_address=None) as cluster:
        for retries, want in ((1, "ok"), (0, "failed")):
            results = tmp_path / f"results-{retries}"
            killed = []

            def kill_when_training(results=results, killed=killed):
                while not killed:
                    pid = _pid_training(results) if (results / store.LOGS).is_dir() else None
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    time.sleep(0.05)

            killer = threading.Thread(target=kill_when_training, daemon=True)
            killer.start()
            rc = cli.main(run_args(env, results, "--backend", "dask", "--scheduler", cluster.scheduler_address,
                                   "--worker-retries", str(retries), grid=grid))
            captured = capsys.readouterr()
            assert killed and "Traceback" not in captured.out + captured.err
            row = assert_whole(results, grid_ids(env, grid=grid)).iloc[0]
            assert row["status"] == want and rc == (0 if want == "ok" else 1), captured
            rid = row["run_id"]
            assert f"bench: run {rid} (attempt 1) lost: its Dask worker was lost" in captured.err  # said, in one line
            assert row["attempt"] == 2 and (results / store.LOGS / f"{rid}.attempt1.lost.log").is_file()
            if want == "ok":
                assert row["worker_pid"] != killed[0]
            else:
                assert "its Dask worker was lost 1 times (--worker-retries 0)" in row["error"]


# ------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def postgres():
    """(URL, stop(), start()) of a throwaway PostgreSQL cluster of this test."""
    with postgres_cluster() as cluster:
        yield cluster.url, cluster.stop, cluster.start


@pytest.mark.slow
def test_postgresql_dropped_and_restored_mid_trial_the_study_goes_on(env, tmp_path, capsys, monkeypatch, postgres):
    """The study's database goes away for 3 s in the middle of trial 1 (an immediate stop of the cluster: every
    connection dropped) and comes back: the trial in flight is failed as interrupted (it does not count
    towards --trials), and the study runs to its full budget."""
    import optuna

    from bench.train import RunResult
    from bench.tune import study as tune_study
    from bench.tune.storage import open_storage

    url, stop, start = postgres
    calls = []

    def fit(cfg, splits, spec, device, *, on_epoch=None, **_):
        calls.append(1)
        for epoch in range(3):
            if len(calls) == 2 and epoch == 1:  # down for 3 s from here: the next report meets a dead database
                stop()
                threading.Timer(3.0, start).start()
            on_epoch(epoch, 0.6 + 0.1 * epoch)
        m = {"best_epoch": 2, "val_auc": 0.8, "val_acc": 0.8, "test_auc": None, "test_acc": None, "train_s": 0.0}
        return RunResult(m, [], None, None)

    monkeypatch.setattr(tune_study, "fit", fit)
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["tune", "--task", "breastmnist", "--variant", "baseline", "--grid", "ci", "--trials", "3",
                   "--seeds", "1", "--set", "train.epochs=3", "--storage", url, "--data-root", str(env[0]),
                   "--results", str(tmp_path / "results"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured
    assert "Traceback" not in captured.out + captured.err
    assert "lost the connection to the study's storage" in captured.out
    (name,) = optuna.get_all_study_names(open_storage(url))
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, states
    (lost,) = [t for t in trials if t.state.name == "FAIL"]
    assert "storage connection lost" in lost.user_attrs["interrupted"]


# ------------------------------------------------------------------------------------------- the hub


SHA = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(hub_cache: Path, repo: str, src: Path, files: list[str], absent: tuple[str, ...] = ()) -> None:
    """The layout huggingface_hub leaves after downloading `files` of `repo` (refs/main -> a snapshot), with
    `absent` recorded as not in the repo (.no_exist), as it does after the hub answered 404."""
    folder = hub_cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(SHA)
    (folder / "snapshots" / SHA).mkdir(parents=True)
    for name in files:
        shutil.copy(src / name, folder / "snapshots" / SHA / name)
    for name in absent:
        (folder / ".no_exist" / SHA).mkdir(parents=True, exist_ok=True)
        (folder / ".no_exist" / SHA / name).touch()


@pytest.fixture(scope="module")
def sharded_llm(env, tmp_path_factory) -> Path:
    """The tiny LLaMA saved in shards with an index, as the hub serves most LLMs."""
    import transformers

    out = tmp_path_factory.mktemp("sharded")
    transformers.AutoModel.from_pretrained(env[1]).save_pretrained(out, max_shard_size="40KB")
    assert (out / "model.safetensors.index.json").is_file()
    return out


@pytest.mark.parametrize("layout", [
    "sharded",
    "single-file",  # the cache records model.safetensors.index.json absent (.no_exist): no hub call for it
])
def test_hub_unreachable_fails_uncached_llms_with_the_hint_and_cached_ones_go_on(env, sharded_llm, tmp_path, capsys,
                                                                                  monkeypatch, one_thread, layout):
    """The hub is unreachable: huggingface_hub's offline mode (HF_HUB_OFFLINE), every request refused as with no
    network. (A closed local endpoint is refused too, but after huggingface_hub's 5 retries: ~25 s per file,
    too slow here.) The cached model is whole in the hub cache, as a download leaves it; of `org/uncached`
    only config.json is, what preflight fetched before the network went away, so its weights must come from
    the hub when its run starts. The uncached run comes first: the grid goes on past it."""
    import huggingface_hub.constants as hf

    hub_cache = tmp_path / "hub"
    src = sharded_llm if layout == "sharded" else Path(env[1])
    cached = f"org/cached-{layout}"  # its own id: a worker's layer cache is keyed by source
    files = [p.name for p in src.iterdir() if p.is_file()]
    _cache_repo(hub_cache, cached, src, files, absent=() if layout == "sharded" else ("model.safetensors.index.json",))
    _cache_repo(hub_cache, "org/uncached", src, ["config.json"])
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    grid = tmp_path / "hub.yaml"
    grid.write_text("name: hub\ndefaults:\n  data: {task: breastmnist, size: 28}\n  vit: {arch: tiny, patch: 7, depth: 2}\n"
                    "  booster: {variant: rllm, layer: -1}\n  train: {epochs: 1, batch_size: 8, warmup_epochs: 0}\n"
                    f"axes:\n  booster.source: [org/uncached, {cached}]\nseeds: [0]\n")
    results = tmp_path / "results"
    rc = cli.main(["run", "--grid", str(grid), "--data-root", str(env[0]), "--results", str(results)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured
    rows = assert_whole(results, set(load_grid(str(grid)).run_ids())).set_index("booster.source")
    error = rows.loc["org/uncached", "error"]
    assert rows.loc["org/uncached", "status"] == "failed"
    assert "cannot reach the Hugging Face hub for org/uncached" in error and "hf download org/uncached" in error
    assert rows.loc[cached, "status"] == "ok", rows.loc[cached, "error"]
    assert rc == 1


def _damaged_llm(src: Path, sharded: Path, to: Path, fault: str) -> tuple[Path, str]:
    """A copy of a tiny LLM folder with one fault; and the file the error must name."""
    base = sharded if fault.startswith(("index", "shard")) else src
    shutil.copytree(base, to)
    index = to / "model.safetensors.index.json"
    shards = sorted(to.glob("model-*.safetensors"))
    if fault == "no weights":
        (to / "model.safetensors").unlink()
        return to, str(to)
    if fault in ("truncated", "garbage"):
        path = to / "model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if fault == "truncated" else os.urandom(len(data)))
        return to, str(path)
    if fault == "shard missing":
        shards[-1].unlink()
        return to, shards[-1].name
    if fault == "shard truncated":
        shards[0].write_bytes(shards[0].read_bytes()[:-100])
        return to, str(shards[0])
    if fault == "index garbage":
        index.write_text('{"weight_map": {"a": ')
    elif fault == "index without weight_map":
        index.write_text('{"metadata": {}}')
    elif fault == "index names a tensor its shard lacks":
        data = json.loads(index.read_text())
        data["weight_map"]["layers.1.not_there.weight"] = shards[0].name
        index.write_text(json.dumps(data))
    return to, str(index)


@pytest.mark.parametrize("fault", ["no weights", "truncated", "garbage", "shard missing", "shard truncated",
                                   "index garbage", "index without weight_map", "index names a tensor its shard lacks"])
def test_a_broken_llm_folder_fails_preflight_before_anything_trains(env, sharded_llm, tmp_path, capsys, fault):
    """Issue 34 item 13b: the grid's baseline comes first and would train; a damaged booster.source must stop the
    grid in preflight (one line naming the file, exit 2, nothing written) instead of failing the LLM run later
    with SafetensorError, JSONDecodeError or KeyError."""
    folder, named = _damaged_llm(Path(env[1]), sharded_llm, tmp_path / "llm", fault)
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndefaults:\n  data: {task: breastmnist, size: 28}\n  vit: {arch: tiny, patch: 7, depth: 2}\n"
                    "  booster: {layer: -1}\n  train: {epochs: 1, batch_size: 8, warmup_epochs: 0}\nvariants:\n"
                    "  baseline: {booster.variant: baseline}\n  rllm: {booster.variant: rllm}\nseeds: [0]\n")
    results = tmp_path / "results"
    for extra in (["--dry-run"], []):
        rc = cli.main(["run", "--grid", str(grid), "--data-root", str(env[0]), "--results", str(results),
                       "--set", f"booster.source={folder}", *extra])
        line = one_line_error(capsys.readouterr().err, rc, 2)
        assert named in line, line
        assert not results.exists()


def test_a_path_of_the_wrong_kind_is_one_line(env, tmp_path, capsys):
    """Issue 34 item 13d: --data-root naming a file (NotADirectoryError while downloading into it) and tune's
    --storage naming a directory (IsADirectoryError) were 'unexpected' exit 1; now one line, exit 2, nothing made."""
    from bench.errors import BenchError
    from bench.tune.storage import open_storage

    a_file = tmp_path / "data.npz"
    a_file.write_bytes(b"not a folder")
    results = tmp_path / "results"
    for extra in (["--dry-run"], []):
        rc = cli.main(["run", "--grid", "ci", "--data-root", str(a_file), "--results", str(results), *extra])
        assert f"data directory {a_file}" in one_line_error(capsys.readouterr().err, rc, 2)
    assert cli.main(["data", "list", "--data-root", str(a_file)]) == 2
    assert not results.exists()
    with pytest.raises(BenchError, match=f"--storage {tmp_path} is a directory") as e:
        open_storage(str(tmp_path))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ a fresh machine

NO_IMAGEMAGICK = "import ctypes.util\nctypes.util.find_library = lambda name: None\n"  # wand finds no MagickWand


def test_without_imagemagick_the_analyze_tests_skip_with_the_reason_and_the_error_is_one_line(tmp_path):
    """Issue 34 item 16: medmnistc imports without ImageMagick (importorskip passes), then wand cannot load
    MagickWand. Here wand is kept from finding the library as on a machine without it (a plugin module that
    makes ctypes find nothing): tests/test_analyze.py is skipped, saying why, and bench's error is one line."""
    (tmp_path / "nomagick.py").write_text(NO_IMAGEMAGICK)
    repo = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "nomagick", "-q", "-rs", "-p", "no:cacheprovider",
                           str(repo / "tests" / "test_analyze.py")], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    # exit 5: no test ran (the module skipped whole)
    assert proc.returncode in (0, 5) and "1 skipped" in proc.stdout and "failed" not in proc.stdout, proc.stdout
    assert "needs ImageMagick's MagickWand library" in proc.stdout, proc.stdout
    proc = subprocess.run([sys.executable, "-c", "import nomagick\nfrom bench import cli\nfrom bench.analyze import "
                           "corrupt\ncorrupt.corruptions('breastmnist')"], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bench.errors.BenchError: bench analyze robustness needs ImageMagick's MagickWand")
    assert "apt-get install" in last and "You probably" in last  # wand's four lines, joined into this one


# -------------------------------------------------------------------------------------- the CLI itself


def test_an_unforeseen_error_is_one_line_with_the_traceback_in_a_file(tmp_path, capsys, monkeypatch):
    """Whatever escapes every handler (here an error injected deep in the report's statistics) is one line
    naming the file that holds the traceback, never written into the store."""
    from report_helpers import config
    from report_helpers import store as store_run

    import bench.report

    def broken(*args, **kwargs):
        raise ZeroDivisionError("injected deep in the report")

    results = tmp_path / "results"
    store_run(results, config(), acc=0.8, auc=0.9)
    monkeypatch.setattr(bench.report, "cell_effects", broken)
    rc = cli.main(["report", "--results", str(results), "--out", str(tmp_path / "report")])
    line = one_line_error(capsys.readouterr().err, rc, 1)
    assert "ZeroDivisionError" in line and "(unexpected; the traceback is in " in line
    path = Path(line.split("the traceback is in ")[1].rstrip(")"))
    assert "Traceback (most recent call last)" in path.read_text() and not (results / "logs").exists()
    path.unlink()
