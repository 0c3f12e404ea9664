"""Writing the store: one dispatcher at a time (a lock), every file whole or absent, the row last.

Every file appears whole or not at all (temp file + os.replace), so a killed process leaves at most
hidden temp files and live logs, which `clean_stale` removes; the run row is written last, so a row
with status ok means its history, predictions and log (and weights, when saved) exist. The process
holding the lock also keeps the compacted tables (bench.store.index) in step: when it takes the lock,
every `index.compact_every()` runs it commits, and when it lets the lock go.

A write the folder refuses (full, read-only, no permission, or the folder removed under the dispatcher)
raises `StoreUnwritable`, which names the folder and the space or permission needed: the dispatcher stops
there, since every later run would meet the same wall.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
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
from bench.errors import BenchError, one_line
from bench.store import index, layout, schema

_HELD: dict[str, int] = {}  # results directories whose lock this process holds -> runs committed since a refresh
_FOLDER: dict[str, tuple[int, int]] = {}  # the same -> (st_dev, st_ino) of the folder that was locked

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file-size limit (ulimit -f) or filesystem cap


class StoreUnwritable(BenchError):
    """The results folder refuses writes: `kind` is full | read-only | permission | removed | error."""

    def __init__(self, results: Path, kind: str, detail: str, needed: int = 0, then: str = ""):
        self.results, self.kind, self.detail, self.needed = Path(results), kind, detail, needed
        what = {"full": "is full", "read-only": "is read-only", "permission": "cannot be written (no permission)",
                "removed": "was removed (or replaced) while bench run was writing it"}.get(kind, "cannot be written")
        then = then or f"{self.fix}, then rerun the same command"
        super().__init__(f"results folder {self.results} {what} ({detail}): {then}")

    @property
    def fix(self) -> str:
        """What the user does about it, before rerunning the same command."""
        return {"full": f"free at least {mb(self.needed)} there" if self.needed else "free some space there",
                "read-only": "make it writable again (or pass another --results)",
                "permission": "give this user write permission on it (or pass another --results)",
                "removed": "the runs stored there went with it; the rerun recreates the folder"}.get(
            self.kind, "make it writable (or pass another --results)")


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{max(n, 1) / 1e3:.0f} kB"


def unwritable(results: Path, err: OSError, path: Path | None = None, needed: int = 0) -> StoreUnwritable:
    """The OSError of a store write as a StoreUnwritable naming the folder, the file and the reason."""
    kind = ("full" if err.errno in FULL else "read-only" if err.errno == errno.EROFS
            else "permission" if err.errno in (errno.EACCES, errno.EPERM) else "error")
    where = ""
    if path is not None:
        with contextlib.suppress(ValueError):
            where = f" writing {Path(path).relative_to(results)}"
    return StoreUnwritable(results, kind, f"{err.strerror or err}{where}", needed)


def check_folder(results: Path) -> None:
    """Raise StoreUnwritable if the locked results folder is gone or is another folder now (rm -rf, mv)."""
    locked = _FOLDER.get(os.path.realpath(results))
    if locked is None:
        return
    try:
        st = os.stat(results)
        same = (st.st_dev, st.st_ino) == locked
    except FileNotFoundError:
        same = False
    if not same:
        raise StoreUnwritable(results, "removed", "its lock is on the old one")


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _history_bytes(run_id: str, epochs: list[Mapping[str, Any]]) -> bytes:
    rows = [{"run_id": run_id, **e} for e in epochs]
    return _parquet_bytes(pa.Table.from_pylist(rows, schema=schema.HISTORY))


def _predictions_bytes(y_score: np.ndarray, y_true: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, y_score=y_score, y_true=y_true)
    return buf.getvalue()


def _row_bytes(row: Mapping[str, Any]) -> bytes:
    schema.check_row(row)
    return _parquet_bytes(pa.Table.from_pylist([dict(row)], schema=schema.run_schema()))


def write_history(results: Path, run_id: str, epochs: list[Mapping[str, Any]]) -> None:
    write_atomic(layout.history_path(results, run_id), _history_bytes(run_id, epochs))


def write_run(results: Path, row: Mapping[str, Any]) -> None:
    """Write the run's row (columns of `bench.store.schema`); its presence with status ok commits the run."""
    write_atomic(layout.run_path(results, row["run_id"]), _row_bytes(row))


def write_analysis(results: Path, kind: str, run_id: str, table: pa.Table,
                   arrays: Mapping[str, np.ndarray] | None = None) -> None:
    """Store what `bench analyze <kind>` measured on one run: its arrays (if any) first, then the table, which
    readers take as the analysis being there. Analyses only add files beside the runs, so they need no lock."""
    try:
        if arrays is not None:
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            write_atomic(layout.analysis_path(results, kind, run_id, ".npz"), buf.getvalue())
        write_atomic(layout.analysis_path(results, kind, run_id), _parquet_bytes(table))
    except OSError as e:
        raise unwritable(results, e, layout.analysis_path(results, kind, run_id)) from e


def commit(results: Path, outcome: Mapping[str, Any], previous: str | None) -> str:
    """Write one run's outcome (row, history, predictions, weights, log). Returns what happened: ok | failed | kept.

    A forced rerun that fails never replaces an ok row: the ok result stays and the failure's log is
    kept beside it."""
    row = outcome["row"]
    rid = row["run_id"]
    check_folder(results)
    log_text = (outcome.get("log") or "").encode()
    if row["status"] == "ok":
        weights = outcome.get("weights")  # none: a weights file of an earlier training no longer matches the row
        result, stale = "ok", [] if weights is not None else [layout.weights_path(results, rid)]
        files = [(layout.history_path(results, rid), _history_bytes(rid, outcome["history"])),
                 (layout.predictions_path(results, rid), _predictions_bytes(outcome["y_score"], outcome["y_true"]))]
        files += [(layout.weights_path(results, rid), weights)] if weights is not None else []
        files += [(layout.log_path(results, rid), log_text), (layout.run_path(results, rid), _row_bytes(row))]
    elif previous == "ok":
        result, stale = "kept", []
        files = [(layout.failed_log_path(results, rid), log_text)]
    else:  # history, predictions or weights left by an attempt killed before its row are not this row's
        result, stale = "failed", [layout.history_path(results, rid), layout.predictions_path(results, rid),
                                   layout.weights_path(results, rid)]
        files = [(layout.log_path(results, rid), log_text), (layout.run_path(results, rid), _row_bytes(row))]
    path = None
    try:
        for path in stale:
            path.unlink(missing_ok=True)
        for path, data in files:  # the row last: it commits the run
            write_atomic(path, data)
        path = layout.running_log_path(results, rid)
        path.unlink(missing_ok=True)
    except OSError as e:
        raise unwritable(results, e, path, sum(len(d) for _, d in files)) from e
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
        warnings.warn(f"could not update the index of {results} ({one_line(e)}); reads stay right, only slower",
                      stacklevel=2)
    _HELD[os.path.realpath(results)] = 0


def clean_stale(results: Path) -> int:
    """Remove what a killed process left: hidden temp files (never read) and live logs of unfinished runs."""
    n = 0
    for sub in (layout.RUNS, layout.HISTORY, layout.PREDICTIONS, layout.LOGS, layout.INDEX, layout.WEIGHTS,
                *(f"{layout.ANALYZE}/{k}" for k in layout.ANALYSES)):
        folder = Path(results) / sub
        if not folder.is_dir():
            continue
        leftovers = list(folder.glob(".*.tmp"))
        if sub == layout.LOGS:
            leftovers += folder.glob(f"*{layout.RUNNING_SUFFIX}")
        for p in leftovers:
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                raise unwritable(results, e, p) from e
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
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise unwritable(results, e, path) from e
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
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        except OSError as e:
            raise unwritable(results, e, path) from e
        st = os.stat(results)
        _HELD[key], _FOLDER[key], held = 0, (st.st_dev, st.st_ino), True
        _refresh(results)
        yield
        _refresh(results)
    finally:
        if held:
            del _HELD[key], _FOLDER[key]
        os.close(fd)
