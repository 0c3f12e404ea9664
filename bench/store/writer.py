"""Writing the store: one dispatcher at a time (a lock), every file whole or absent, the row last.

Every file appears whole or not at all (temp file + os.replace), so a killed process leaves at most
hidden temp files and live logs, which `clean_stale` removes; the run row is written last, so a row
with status ok means its history, predictions and log (and weights, when saved) exist. The process
holding the lock also keeps the compacted tables (bench.store.index) in step: when it takes the lock,
every `index.compact_every()` runs it commits, and when it lets the lock go.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import io
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.crashsafe import write_atomic
from bench.errors import BenchError
from bench.store import index, layout, schema

_HELD: dict[str, int] = {}  # results directories whose lock this process holds -> runs committed since a refresh


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_history(results: Path, run_id: str, epochs: list[Mapping[str, Any]]) -> None:
    rows = [{"run_id": run_id, **e} for e in epochs]
    table = pa.Table.from_pylist(rows, schema=schema.HISTORY)
    write_atomic(layout.history_path(results, run_id), _parquet_bytes(table))


def write_predictions(results: Path, run_id: str, y_score: np.ndarray, y_true: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, y_score=y_score, y_true=y_true)
    write_atomic(layout.predictions_path(results, run_id), buf.getvalue())


def write_weights(results: Path, run_id: str, data: bytes | None) -> None:
    """The run's saved weights (a safetensors file's bytes, made by bench.models.restore), or none: a weights file
    left by an earlier training of this run is removed, as it no longer matches the row."""
    path = layout.weights_path(results, run_id)
    if data is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, data)


def write_run(results: Path, row: Mapping[str, Any]) -> None:
    """Write the run's row (columns of `bench.store.schema`); its presence with status ok commits the run."""
    schema.check_row(row)
    table = pa.Table.from_pylist([dict(row)], schema=schema.run_schema())
    write_atomic(layout.run_path(results, row["run_id"]), _parquet_bytes(table))


def commit(results: Path, outcome: Mapping[str, Any], previous: str | None) -> str:
    """Write one run's outcome (row, history, predictions, weights, log). Returns what happened: ok | failed | kept.

    A forced rerun that fails never replaces an ok row: the ok result stays and the failure's log is
    kept beside it."""
    row = outcome["row"]
    rid = row["run_id"]
    log_text = (outcome.get("log") or "").encode()
    if row["status"] == "ok":
        write_history(results, rid, outcome["history"])
        write_predictions(results, rid, outcome["y_score"], outcome["y_true"])
        write_weights(results, rid, outcome.get("weights"))
        write_atomic(layout.log_path(results, rid), log_text)
        write_run(results, row)
        result = "ok"
    elif previous == "ok":
        write_atomic(layout.failed_log_path(results, rid), log_text)
        result = "kept"
    else:
        for stale in (layout.history_path(results, rid), layout.predictions_path(results, rid),
                      layout.weights_path(results, rid)):
            stale.unlink(missing_ok=True)  # left by an attempt killed before its row: not this row's
        write_atomic(layout.log_path(results, rid), log_text)
        write_run(results, row)
        result = "failed"
    layout.running_log_path(results, rid).unlink(missing_ok=True)
    key = os.path.realpath(results)
    if key in _HELD:
        _HELD[key] += 1
        if _HELD[key] >= index.compact_every():
            _refresh(results)
    return result


def _refresh(results: Path) -> None:
    """Bring the compacted tables in step; they are a cache, so a failure is a warning, never a lost run."""
    try:
        index.refresh(results)
    except (OSError, pa.ArrowException) as e:
        warnings.warn(f"could not update the index of {results} ({e}); reads stay right, only slower", stacklevel=2)
    _HELD[os.path.realpath(results)] = 0


def clean_stale(results: Path) -> int:
    """Remove what a killed process left: hidden temp files (never read) and live logs of unfinished runs."""
    n = 0
    for sub in (layout.RUNS, layout.HISTORY, layout.PREDICTIONS, layout.LOGS, layout.INDEX, layout.WEIGHTS):
        folder = Path(results) / sub
        if not folder.is_dir():
            continue
        leftovers = list(folder.glob(".*.tmp"))
        if sub == layout.LOGS:
            leftovers += folder.glob(f"*{layout.RUNNING_SUFFIX}")
        for p in leftovers:
            p.unlink(missing_ok=True)
            n += 1
    return n


@contextlib.contextmanager
def results_lock(results: Path):
    """Exclusive use of a results directory for one dispatcher; released by the kernel even on SIGKILL."""
    results = Path(results)
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create the results directory {results}: {e.strerror}; pass a writable --results") from None
    path = results / layout.LOCK_FILE
    key = os.path.realpath(results)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise BenchError(f"{results} is in use by another `bench run` ({holder}); wait for it to finish "
                             "or use another --results directory") from None
        except OSError:  # a filesystem without flock (some NFS setups): go on unlocked
            warnings.warn(f"cannot lock {path}; make sure no other `bench run` uses {results}", stacklevel=2)
        os.ftruncate(fd, 0)
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        _HELD[key], held = 0, True
        _refresh(results)
        yield
        _refresh(results)
    finally:
        if held:
            del _HELD[key]
        os.close(fd)
