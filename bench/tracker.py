"""The store seen in MLflow: `bench export mlflow` (any time, idempotent) and `bench run --tracker mlflow` (live).

One MLflow experiment per grid (its name); one MLflow run per stored run, keyed by the tag `bench.run_id`:
a run already there with the same start (`bench.started_unix`) and terminated (the last thing logged) is left
alone; one whose stored run has been rerun since (a failed run retried, --force) is replaced, and so is one
left RUNNING (cut off by a server or network that died mid-log), so each run appears once, whole, as stored.
An MLflow run holds

    params     the flattened config (`data.task`, `train.lr`, `booster.layer`, ...)
    metrics    the history per epoch (train_loss, val_acc, val_auc, lr, epoch_s; step = epoch) and the stored
               results as `result.<column>` (test_auc, val_auc at the best epoch, best_epoch, train_s, ...)
    tags       status, error, label, task, host, git sha, attempt, SLURM job; its name is `<run_id> <label>`
    artifacts  the test predictions (<run_id>.npz) and the run's log

Everything is read back from the store (so what MLflow shows is what `bench report` reads). Live logging is
the dispatcher's, after each run is stored: a tracker that fails warns once and is left alone for the rest of
the grid (a run never waits on it or fails for it); `bench export mlflow` backfills what it missed.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa

from bench import store
from bench.errors import BenchError, one_line
from bench.store import layout, schema

CURVES = ("train_loss", "val_acc", "val_auc", "lr", "epoch_s", "test_acc", "test_auc")
TAGS = ("status", "label", "task", "hostname", "git_sha", "attempt", "slurm_job_id", "device", "started_at",
        "finished_at")
KEY, STAMP = "bench.run_id", "bench.started_unix"
SERVERS, DATABASES = ("http", "https"), ("sqlite", "postgresql", "mysql", "mssql")
DONE = ("FINISHED", "FAILED", "KILLED")  # set_terminated, the last call of _log_run, was made
CUT = "cut off"  # the stamp of an MLflow run left RUNNING: matches no stored run, so it is logged again


def check_uri(uri: str, flag: str = "--uri") -> str:
    """A tracking URI MLflow can use without a local file store: http(s)://HOST[:PORT] (a `mlflow server`) or a
    database URL. Anything else (a typo, an empty string, a bare path) MLflow would take for a folder to create."""
    fix = "give http(s)://HOST:PORT of a `mlflow server`, or a database such as sqlite:///PATH"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as e:
        raise BenchError(f"{flag} {uri!r} is not a URI ({one_line(e)}); {fix}") from None
    scheme = parts.scheme.split("+")[0]  # postgresql+psycopg2
    server = scheme in SERVERS and bool(parts.hostname)
    database = scheme in DATABASES and bool(parts.netloc or parts.path)
    if server or database or scheme == "databricks":
        return uri
    raise BenchError(f"{flag} {uri!r} is not an MLflow tracking server or database; {fix}")


def _client(uri: str, retries: int):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise BenchError("MLflow is not installed: pip install -e '.[mlflow]'") from None
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))  # a dead server: fail, not hang
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # its "View run" lines, amid bench's
    return MlflowClient(tracking_uri=uri)


def _experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name)


def _logged(client, experiment_id: str) -> dict[str, tuple[str, str | None]]:
    """bench run_id -> (MLflow run id, its bench.started_unix, or "cut off" for a run never terminated) of the
    experiment's live runs."""
    out, token = {}, None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for r in page:
            key = r.data.tags.get(KEY)
            if key:
                out[key] = (r.info.run_id, r.data.tags.get(STAMP) if r.info.status in DONE else CUT)
        token = page.token
        if not token:
            return out


def _stamp(row: dict) -> str:
    v = row.get("started_unix")
    return repr(float(v)) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "none"


def _value(v):
    try:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
    except TypeError:
        pass
    return v


def _log_run(client, experiment_id: str, results: Path, row: dict) -> str:
    from mlflow.entities import Metric, Param, RunTag

    rid = row["run_id"]
    started = row.get("started_unix")
    start_ms = int(float(started) * 1000) if _value(started) is not None else None
    tags = {KEY: rid, STAMP: _stamp(row), **{f"bench.{k}": str(row[k]) for k in TAGS if _value(row.get(k)) is not None}}
    if _value(row.get("error")):
        tags["bench.error"] = str(row["error"])[:5000]
    run = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=f"{rid} {row.get('label', '')}")
    mid = run.info.run_id
    params = [Param(k, str(row[k])[:6000]) for k in schema.config_columns() if _value(row.get(k)) is not None]
    metrics = []
    ts = start_ms or 0
    hist = store.read_history(results, [rid])
    for rec in hist.to_dict("records"):
        for k in CURVES:
            v = _value(rec.get(k))
            if v is not None:
                metrics.append(Metric(k, float(v), ts, int(rec["epoch"])))
    for k, tp in schema.METRICS.items():
        v = _value(row.get(k))
        if v is not None and (pa.types.is_integer(tp) or pa.types.is_floating(tp)):
            metrics.append(Metric(f"result.{k}", float(v), ts, 0))
    for i in range(0, len(params), 100):  # MLflow's limits per batch
        client.log_batch(mid, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(mid, metrics=metrics[i:i + 1000])
    preds = layout.predictions_path(results, rid)
    if preds.is_file():
        client.log_artifact(mid, str(preds))
    log = store.log_path(results, rid)
    if log.is_file():
        client.log_artifact(mid, str(log))
    end_ms = start_ms + int(float(row["wall_s"]) * 1000) if start_ms and _value(row.get("wall_s")) is not None else None
    client.set_terminated(mid, status="FINISHED" if row.get("status") == "ok" else "FAILED", end_time=end_ms)
    return mid


def export(results: Path, uri: str, experiment: str, run_ids: Iterable[str] | None = None) -> dict[str, int]:
    """Every stored run (or those of `run_ids`) into `experiment`: {'added', 'replaced', 'repaired', 'unchanged'}
    ('repaired': cut off mid-log before, logged again)."""
    results = Path(results)
    check_uri(uri)
    if not (results / layout.RUNS).is_dir():
        raise BenchError(f"no result store at {results} (no {layout.RUNS}/ folder); pass the --results folder of "
                         "a `bench run`")
    client = _client(uri, retries=2)
    try:
        exp = _experiment(client, experiment)
        logged = _logged(client, exp)
    except BenchError:
        raise
    except Exception as e:  # noqa: BLE001 - connection refused, HTTP errors, a bad URI
        raise BenchError(f"cannot reach the MLflow tracking server at {uri} ({one_line(e)[:300]}); start it "
                         "(`mlflow server ...`) or fix --uri") from None
    rows = store.read_runs(results)
    if run_ids is not None:
        rows = rows[rows["run_id"].isin(set(run_ids))]
    counts = {"added": 0, "replaced": 0, "repaired": 0, "unchanged": 0}
    for row in rows.to_dict("records"):
        row = {k: _value(v) for k, v in row.items()}
        have = logged.get(row["run_id"])
        if have is not None and have[1] == _stamp(row):
            counts["unchanged"] += 1
            continue
        try:
            if have is not None:
                client.delete_run(have[0])
            _log_run(client, exp, results, row)
        except Exception as e:  # noqa: BLE001 - the server or network gone mid-export
            logged_now = counts["added"] + counts["replaced"] + counts["repaired"]
            raise BenchError(f"MLflow at {uri} failed while logging run {row['run_id']} ({one_line(e)[:300]}); "
                             f"{logged_now} runs logged before it: rerun the same command to finish (a run cut off "
                             "is logged again)") from None
        counts["added" if have is None else "repaired" if have[1] == CUT else "replaced"] += 1
    return counts


class Tracker:
    """Live logging for `bench run --tracker mlflow`: each run as it is stored; never raises."""

    def __init__(self, uri: str, experiment: str, backfill: str | None = None):
        """`backfill`: the `bench export mlflow ...` command that adds what this tracker could not log."""
        self.uri, self.experiment = check_uri(uri, "--tracker-uri"), experiment
        self.backfill = backfill or f"bench export mlflow --uri {uri}"
        self.dead: str | None = None
        self.client = _client(uri, retries=0)  # an uninstalled MLflow is the user's to fix, before the grid
        self.exp = self.logged = None

    def _fail(self, e: BaseException) -> None:
        self.dead = one_line(e)[:300]
        print(f"bench: warning: MLflow at {self.uri} failed ({self.dead}); not logging the rest of this grid live, "
              f"the runs are stored as usual: `{self.backfill}` adds them later",
              file=sys.stderr, flush=True)

    def log(self, results: Path, run_id: str) -> None:
        if self.dead:
            return
        try:
            if self.exp is None:
                self.exp = _experiment(self.client, self.experiment)
                self.logged = _logged(self.client, self.exp)
            row = {k: _value(v) for k, v in (store.read_run(results, run_id) or {}).items()}
            have = self.logged.get(run_id)
            if not row or (have is not None and have[1] == _stamp(row)):
                return
            if have is not None:
                self.client.delete_run(have[0])
            self.logged[run_id] = (_log_run(self.client, self.exp, Path(results), row), _stamp(row))
        except Exception as e:  # noqa: BLE001 - whatever the tracker does, the grid goes on
            self._fail(e)

