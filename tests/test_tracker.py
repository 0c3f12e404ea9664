"""The store in MLflow, against a real `mlflow server` (SQLite, artifacts served from a temp folder) started
here and read back with MLflow's own client: a grid run with a dead tracker finishes and warns once;
`bench export mlflow` backfills every run (config, curves, results, tags, predictions and log), a second
export adds nothing; `bench run --force --tracker mlflow` logs live and replaces the reruns (each run once)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import cli
from bench.config import flatten, resolve, run_id
from bench.grid import load_grid

mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional extra: pip install -e '.[mlflow]' (CI does)")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    server = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(server), "server", "--backend-store-uri", f"sqlite:///{base / 'db.sqlite'}",
                             "--artifacts-destination", str(base / "artifacts"), "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=open(base / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            # no job runner: its 7 huey consumer processes take minutes to start on a small box
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    t0 = time.monotonic()
    while True:  # its start is slow on a busy machine (minutes at a load of 16 on 2 cores)
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{uri}/health", timeout=5).status == 200:
                break
        if proc.poll() is not None or time.monotonic() - t0 > 600:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start:\n{(base / 'server.log').read_text()[-2000:]}")
        time.sleep(1)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()



def _runs(uri: str, experiment: str) -> list:
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else list(client.search_runs([exp.experiment_id], max_results=1000))


def test_export_and_live_tracking_show_every_run_once(mlflow_uri, ci_env, tmp_path, one_thread, capsys):
    from bench.config import parse_sets

    results = tmp_path / "results"
    sets = ["--set", f"booster.source={ci_env[1]}"]
    grid = load_grid("ci", parse_sets([f"booster.source={ci_env[1]}"]))
    run = ["run", "--grid", "ci", "--data-root", str(ci_env[0]), "--results", str(results), *sets, "--device", "cpu"]

    # 1. a dead tracker: the grid runs and is stored; one warning, naming the command that adds them
    dead = f"http://127.0.0.1:{_free_port()}"
    assert cli.main([*run, "--tracker", "mlflow", "--tracker-uri", dead]) == 0
    err = capsys.readouterr().err
    assert err.count(f"MLflow at {dead} failed") == 1, err
    assert _runs(mlflow_uri, "ci") == []
    hint = re.search(r"`(bench export mlflow [^`]*)` adds them later", err).group(1)
    assert shlex.split(hint) == ["bench", "export", "mlflow", "--uri", dead, "--results", str(results), "--grid", "ci",
                                 *sets]

    # 2. the export, as the hint says (at the live server), backfills every stored run, read back through MLflow's
    # client; MLflow's own "View run" lines stay out of bench's output
    assert cli.main([a if a != dead else mlflow_uri for a in shlex.split(hint)[1:]]) == 0
    out = capsys.readouterr().out
    assert "5 runs added" in out and "View run" not in out, out
    logged = {r.data.tags["bench.run_id"]: r for r in _runs(mlflow_uri, "ci")}
    assert sorted(logged) == sorted(grid.run_ids())
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    for cfg in grid.runs:
        rid = run_id(cfg)
        r = logged[rid]
        assert r.info.status == "FINISHED" and r.data.tags["bench.status"] == "ok"
        want = {k: str(v) for k, v in flatten(resolve(cfg)).items() if v is not None}
        assert {k: r.data.params[k] for k in want} == want
        hist = pd.read_parquet(results / "history" / f"{rid}.parquet")
        got = client.get_metric_history(r.info.run_id, "val_auc")
        assert [(m.step, m.value) for m in got] == list(zip(hist["epoch"], hist["val_auc"]))
        row = pd.read_parquet(results / "runs" / f"{rid}.parquet").iloc[0]
        assert r.data.metrics["result.test_auc"] == pytest.approx(row["test_auc"])
        assert r.data.tags["bench.git_sha"] == str(row["git_sha"]) and r.data.tags["bench.hostname"] == row["hostname"]
        files = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert files == {f"{rid}.npz", f"{rid}.log"}
        local = client.download_artifacts(r.info.run_id, f"{rid}.npz", str(tmp_path / "dl"))
        with np.load(local) as got_z, np.load(results / "predictions" / f"{rid}.npz") as want_z:
            assert np.array_equal(got_z["y_score"], want_z["y_score"])

    # 3. idempotent: a second export adds nothing
    export = ["export", "mlflow", "--uri", mlflow_uri, "--results", str(results), "--grid", "ci", *sets]
    assert cli.main(export) == 0
    assert "0 runs added, 0 replaced (rerun since), 5 already there" in capsys.readouterr().out
    assert len(_runs(mlflow_uri, "ci")) == 5

    # 3b. the server gone right after a run was created (before its params, metrics and end): one line, exit 2;
    # the run left RUNNING and empty is logged again, whole, by the next export
    cut = run_id(grid.runs[0])
    client.delete_run(logged[cut].info.run_id)
    real = mlflow.tracking.MlflowClient.log_batch

    def server_gone(self, *a, **k):
        raise mlflow.exceptions.MlflowException("API request to /api/2.0/mlflow/runs/log-batch failed: Max retries "
                                                "exceeded (Connection refused)")

    mlflow.tracking.MlflowClient.log_batch = server_gone
    try:
        assert cli.main(export) == 2
    finally:
        mlflow.tracking.MlflowClient.log_batch = real
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"failed while logging run {cut}" in err, err
    (stale,) = [r for r in _runs(mlflow_uri, "ci") if r.data.tags["bench.run_id"] == cut]
    assert stale.info.status == "RUNNING" and not stale.data.params and stale.data.tags["bench.status"] == "ok"
    assert cli.main(export) == 0
    assert "0 runs added, 0 replaced (rerun since), 4 already there, 1 repaired (cut off before)" in capsys.readouterr().out
    (again,) = [r for r in _runs(mlflow_uri, "ci") if r.data.tags["bench.run_id"] == cut]
    assert again.info.status == "FINISHED" and again.data.params == logged[cut].data.params
    assert {a.path for a in client.list_artifacts(again.info.run_id)} == {f"{cut}.npz", f"{cut}.log"}
    logged[cut] = again

    # 4. live: --force reruns every run; each is logged as it is stored and replaces its earlier MLflow run
    assert cli.main([*run, "--force", "--tracker", "mlflow", "--tracker-uri", mlflow_uri]) == 0
    captured = capsys.readouterr()
    assert "MLflow" not in captured.err and "View run" not in captured.out
    now = {r.data.tags["bench.run_id"]: r for r in _runs(mlflow_uri, "ci")}
    assert sorted(now) == sorted(grid.run_ids())
    for rid, r in now.items():
        row = pd.read_parquet(results / "runs" / f"{rid}.parquet").iloc[0]
        assert r.data.tags["bench.started_unix"] == repr(float(row["started_unix"]))
        assert r.info.run_id != logged[rid].info.run_id


@pytest.mark.parametrize("uri", ["http://[::1", "mlflow", "ht!tp:/x", "", "file:///tmp/mlruns"])
def test_a_uri_mlflow_cannot_use_is_one_line_and_creates_nothing(uri, ci_env, tmp_path, capsys, monkeypatch):
    """MLflow takes a bare word or a typo for a local folder (its deprecated file store: an error, and mlruns/ left
    behind) and an empty URI for its default; bench refuses them first. (No server needed.)"""
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    assert cli.main(["export", "mlflow", "--uri", uri, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--uri {uri!r} is not" in err, err
    run = ["run", "--grid", "ci", "--data-root", str(ci_env[0]), "--results", str(tmp_path / "r"), "--set",
           f"booster.source={ci_env[1]}", "--tracker", "mlflow", "--tracker-uri", uri]
    assert cli.main(run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--tracker-uri {uri!r} is not" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no mlruns/, no r/


def test_export_from_a_folder_with_no_store_is_one_line(tmp_path, capsys):
    assert cli.main(["export", "mlflow", "--uri", "http://127.0.0.1:1", "--results", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no result store at" in err and not (tmp_path / "nonexistent").exists()
