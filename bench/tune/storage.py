"""Where a study lives: an Optuna RDB URL or a journal file, opened with every failure as one line.

`--storage` is an RDB URL (sqlite:///f.db, postgresql://user@host/db, ...) or a journal file path; by
default `<results>/optuna/<study>.log`, a journal file several processes on one machine share safely.
Messages and exported files show URLs without their password (`describe_storage`). A connection that
drops mid-study (a database restart, a network cut) is waited out (`connection_lost`, `wait_for_storage`):
connections are checked before use (pool_pre_ping), so the study goes on once the database answers.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import optuna

from bench.errors import BenchError, one_line
from bench.tune import safe_name

OPTUNA = "optuna"  # <results>/optuna/<study>.log, the default journal storage


def default_storage(results: Path, study: str) -> str:
    """The default journal file of a study."""
    return str(Path(results) / OPTUNA / f"{safe_name(study)}.log")


def _is_url(storage: str) -> bool:
    return "://" in storage


def describe_storage(storage: str) -> str:
    """A storage for messages and files: URLs without their password."""
    if not _is_url(storage):
        return str(storage)
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 — not a URL sqlalchemy understands; show the scheme only
        return storage.split("://", 1)[0] + "://..."


def open_storage(storage: str):
    """An Optuna storage from an RDB URL or a journal file path; connection problems -> one line."""
    shown = describe_storage(storage)
    if not _is_url(storage):
        path = Path(storage)
        if path.is_dir():
            raise BenchError(f"--storage {path} is a directory: give a journal file path (e.g. {path / 'study.log'}) "
                             "or a database URL (sqlite:///tune.db, postgresql://user@host/db)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as e:
            raise BenchError(f"cannot open journal storage {path}: {e.strerror or e}") from None
        return optuna.storages.JournalStorage(backend)
    try:
        from sqlalchemy.engine import make_url

        url = make_url(storage)
        backend = url.get_backend_name()
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"--storage {shown!r} is not a database URL ({one_line(e)}); "
                         "use e.g. postgresql://user@host/db, sqlite:///tune.db or a journal file path") from None
    if url.drivername == "postgresql":  # SQLAlchemy 2.1 means psycopg (3) by this; use whichever driver is installed
        driver = next((m for m in ("psycopg", "psycopg2") if importlib.util.find_spec(m)), None)
        if driver:
            storage = url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend in ("postgresql", "mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)
    except ImportError as e:
        raise BenchError(f"cannot use storage {shown}: its database driver is missing ({one_line(e)}); "
                         "for PostgreSQL: pip install psycopg2-binary (or psycopg[binary])") from None
    except Exception as e:  # noqa: BLE001 — sqlalchemy/driver errors: refused, auth, unknown db, ...
        raise BenchError(f"cannot connect to storage {shown}: {one_line(e)}") from None



RECONNECT_S = 300.0  # how long a study waits for its database to come back before giving up


def connection_error(err: BaseException) -> BaseException | None:
    """The dropped or refused database connection behind `err` (optuna wraps sqlalchemy's errors in its own,
    whose message blames the data), or None when `err` is a mistake or a bug, not a lost connection."""
    try:
        from sqlalchemy import exc
    except ImportError:
        return None
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError)) or (
                isinstance(e, exc.DBAPIError) and e.connection_invalidated):
            return e
        e = e.__cause__ or e.__context__
    return None


def connection_lost(err: BaseException) -> bool:
    return connection_error(err) is not None


def wait_for_storage(storage, study_name: str, shown: str, first: BaseException, timeout: float = RECONNECT_S) -> None:
    """Block until the study's database answers again (pool_pre_ping reconnects); BenchError after `timeout`."""
    deadline = time.monotonic() + timeout
    delay, last = 0.5, connection_error(first) or first
    while time.monotonic() < deadline:
        try:
            storage.get_study_id_from_name(study_name)
            return
        except Exception as e:  # anything but a lost connection is not ours to wait out
            if not connection_lost(e):
                raise
            last = connection_error(e) or e
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    raise BenchError(f"lost the connection to the study's storage {shown} for {timeout:.0f}s ({one_line(last)}); "
                     "rerun the same command when it is back: the study goes on where it stopped") from None
