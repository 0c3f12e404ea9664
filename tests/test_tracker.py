"""The store in MLflow, against a real `mlflow server` (SQLite, artifacts served from a temp folder) started
here and read back with MLflow's own client: a grid run with a dead tracker finishes and warns once;
`bench export mlflow` backfills every run (config, curves, results, tags, predictions and log), a second
export adds nothing; `bench run --force --tracker mlflow` logs live and replaces the reruns (each run once)."""

from __future__ import annotations

import contextlib
import os
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

    # 1. a dead tracker: the grid runs and is stored; one warning
    dead = f"http://127.0.0.1:{_free_port()}"
    assert cli.main([*run, "--tracker", "mlflow", "--tracker-uri", dead]) == 0
    err = capsys.readouterr().err
    assert err.count(f"MLflow at {dead} failed") == 1, err
    assert _runs(mlflow_uri, "ci") == []

    # 2. the export backfills every stored run, read back through MLflow's client
    assert cli.main(["export", "mlflow", "--uri", mlflow_uri, "--results", str(results), "--grid", "ci", *sets]) == 0
    assert "5 runs added" in capsys.readouterr().out
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
    assert cli.main(["export", "mlflow", "--uri", mlflow_uri, "--results", str(results), "--grid", "ci", *sets]) == 0
    assert "0 runs added, 0 replaced (rerun since), 5 already there" in capsys.readouterr().out
    assert len(_runs(mlflow_uri, "ci")) == 5

    # 4. live: --force reruns every run; each is logged as it is stored and replaces its earlier MLflow run
    assert cli.main([*run, "--force", "--tracker", "mlflow", "--tracker-uri", mlflow_uri]) == 0
    assert "MLflow" not in capsys.readouterr().err
    now = {r.data.tags["bench.run_id"]: r for r in _runs(mlflow_uri, "ci")}
    assert sorted(now) == sorted(grid.run_ids())
    for rid, r in now.items():
        row = pd.read_parquet(results / "runs" / f"{rid}.parquet").iloc[0]
        assert r.data.tags["bench.started_unix"] == repr(float(row["started_unix"]))
        assert r.info.run_id != logged[rid].info.run_id
