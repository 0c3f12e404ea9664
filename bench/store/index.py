"""The store read as one dataset: compacted tables kept in step with the per-run files.

The per-run files (`runs/<id>.parquet`, `history/<id>.parquet`) stay the commit points. Beside them,
`index/runs.parquet` and `index/history.parquet` hold the same rows in one file each, plus the stamp
(mtime, size) of the per-run file each row came from. A reader keeps the compacted rows whose file still
has that stamp and reads one by one only the files that are new or rewritten since, so it is right with
a stale, missing or unreadable index, and on a read-only store. Only the process holding the results
lock (the dispatcher) writes the index (`refresh`), whole or not at all (`write_atomic`): when it takes
the lock, every `compact_every()` runs it commits, and when it lets the lock go.

A snapshot never mixes two versions of a file: every file is opened once and read from that handle (an
`os.replace` by the writer leaves an open handle on the old, whole file), and a file's stamp is taken from
the same handle. A rewrite is told by its stamp: a copied store (same mtimes and sizes) keeps its index
valid; the one rewrite it could miss, same size within one mtime tick of a refresh that read the previous
version, would need the dispatcher to commit the same run twice within milliseconds.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.crashsafe import write_atomic
from bench.store import layout, quarantine, schema

MTIME, SIZE = "_file_mtime_ns", "_file_size"  # the stamp of the per-run file a compacted row came from
STAMP = pa.schema([(MTIME, pa.int64()), (SIZE, pa.int64())])
KINDS = (layout.RUNS, layout.HISTORY)
COMPACT_EVERY = 64  # committed runs between two refreshes: readers read at most this many files one by one
READ_THREADS = 4  # for files read one by one


def compact_every() -> int:
    """COMPACT_EVERY, or $BENCH_COMPACT_EVERY (e.g. 1 to refresh after every run)."""
    value = os.environ.get("BENCH_COMPACT_EVERY", "")
    return int(value) if value.isdigit() and int(value) > 0 else COMPACT_EVERY


def row_schema(kind: str) -> pa.Schema:
    return schema.run_schema() if kind == layout.RUNS else schema.HISTORY


def _sort_keys(kind: str) -> list[tuple[str, str]]:
    return [("run_id", "ascending")] + ([("epoch", "ascending")] if kind == layout.HISTORY else [])


def scan(results: Path, kind: str) -> dict[str, tuple[int, int]]:
    """{run_id: (mtime_ns, size)} of the per-run files of `kind` (temp files are hidden, never listed)."""
    out = {}
    try:
        with os.scandir(Path(results) / kind) as entries:
            for e in entries:
                if e.name.endswith(".parquet") and not e.name.startswith("."):
                    try:
                        st = e.stat()
                    except FileNotFoundError:
                        continue
                    out[e.name[: -len(".parquet")]] = (st.st_mtime_ns, st.st_size)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return out


def conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """`table` with exactly `target`'s columns: missing ones (files written before a column existed) null,
    unknown ones dropped, types cast."""
    names = table.schema.names
    cols = [table.column(f.name).cast(f.type) if f.name in names else pa.nulls(len(table), f.type) for f in target]
    return pa.Table.from_arrays(cols, schema=target)


def _with_stamp(table: pa.Table, stamp: tuple[int, int]) -> pa.Table:
    n = len(table)
    return table.append_column(MTIME, _int64s([stamp[0]] * n)).append_column(SIZE, _int64s([stamp[1]] * n))


# Arrays built from their buffers: pa.array() imports pandas (0.35 s), and `bench list` must start fast.
def _int64s(values: list[int]) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(np.asarray(values, np.int64))])


def _strings(values: list[str]) -> pa.Array:
    data = [v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.large_string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
                                 ).cast(pa.string())


def read_file(path: Path, columns: list[str] | None = None) -> tuple[pa.Table, tuple[int, int]] | None:
    """One per-run file and the stamp of exactly that version (None if it is gone, or corrupt: then it is set
    aside, bench.store.quarantine)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        if columns is not None:
            columns = [c for c in columns if c in pf.schema_arrow.names]
        return pf.read(columns=columns), (st.st_mtime_ns, st.st_size)
    except (pa.ArrowException, OSError) as e:  # truncated, garbage, or a page that does not decode
        quarantine.set_aside(path, e, st)
        return None


def read_compacted(results: Path, kind: str, columns: list[str] | None = None) -> pa.Table | None:
    """The compacted table (with stamps), or None when there is none or it cannot be read: it is only a cache."""
    path = layout.index_path(results, kind)
    target = pa.schema(list(_select(row_schema(kind), columns)) + list(STAMP))
    try:
        with pa.memory_map(str(path)) as source:  # one open: a concurrent replace cannot mix two versions
            pf = pq.ParquetFile(source)
            have = set(pf.schema_arrow.names)
            if not set(target.names) <= have:  # compacted under another schema: a column it lacks may be
                return None  # in the files, so only the files can say (the lock holder rewrites it)
            return conform(pf.read(columns=[n for n in target.names if n in have]), target)
    except (OSError, pa.ArrowException):  # missing, half-copied by hand, or a column whose type changed
        return None


def _select(sch: pa.Schema, columns: list[str] | None) -> pa.Schema:
    if columns is None:
        return sch
    keep = set(columns) | {"run_id"}
    return pa.schema([f for f in sch if f.name in keep])


def snapshot(results: Path, kind: str, columns: list[str] | None = None,
             run_ids: Iterable[str] | None = None) -> tuple[pa.Table, bool]:
    """Every row of `kind` now stored (of `run_ids` when given), with stamps, sorted by run (and epoch);
    and whether it differs from the compacted table (files read one by one, or compacted rows dropped)."""
    results = Path(results)
    target = pa.schema(list(_select(row_schema(kind), columns)) + list(STAMP))
    compacted = read_compacted(results, kind, columns)
    files = scan(results, kind)  # after the compacted table: a file it lacks is read below
    wanted = None if run_ids is None else set(run_ids)
    current: set[str] = set()  # runs whose compacted rows came from the file as it is now
    changed = compacted is None
    if compacted is not None and len(compacted):
        keep = _unchanged(compacted, files)
        changed = not pc.all(keep).as_py()
        if wanted is not None:
            keep = pc.and_(keep, pc.is_in(compacted.column("run_id"), value_set=_strings(sorted(wanted))))
        compacted = compacted.filter(keep)
        current = set(pc.unique(compacted.column("run_id")).to_pylist())
    stale = [results / kind / f"{rid}.parquet" for rid in sorted(set(files) - current) if wanted is None or rid in wanted]

    def read(path: Path) -> pa.Table | None:
        got = read_file(path, None if columns is None else target.names)
        return None if got is None else conform(_with_stamp(*got), target)

    if len(stale) > 8:  # parquet decoding mostly releases the GIL: 2-3x faster on 2 cores
        with ThreadPoolExecutor(READ_THREADS) as pool:
            fresh = [t for t in pool.map(read, stale) if t is not None]
    else:
        fresh = [t for t in map(read, stale) if t is not None]
    if not fresh:
        return (compacted if compacted is not None else target.empty_table()), changed
    parts = ([compacted] if compacted is not None and len(compacted) else []) + fresh
    return pa.concat_tables(parts).sort_by(_sort_keys(kind)), True


def _unchanged(compacted: pa.Table, files: dict[str, tuple[int, int]]) -> pa.ChunkedArray:
    """Per compacted row: does its file still exist with the stamp the row was read with?"""
    at = pc.index_in(compacted.column("run_id"), value_set=_strings(list(files)))  # null where the file is gone
    mtime = _int64s([st[0] for st in files.values()]).take(at)
    size = _int64s([st[1] for st in files.values()]).take(at)
    same = pc.and_(pc.equal(compacted.column(MTIME), mtime), pc.equal(compacted.column(SIZE), size))
    return pc.and_kleene(same, pc.is_valid(same))  # null (file gone) -> False


def refresh(results: Path) -> bool:
    """Rewrite the compacted tables that are out of step with the per-run files; True if any was written.

    Only for the process holding the results lock (bench.store.writer calls it)."""
    wrote = False
    for kind in KINDS:
        table, changed = snapshot(results, kind)
        path = layout.index_path(results, kind)
        if not changed and path.exists() and _same_schema(path, table.schema):
            continue
        if not len(table) and not path.exists():
            continue
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        write_atomic(path, buf.getvalue())
        wrote = True
    return wrote


def _same_schema(path: Path, sch: pa.Schema) -> bool:
    """Whether the compacted file has today's columns (a config field added since is a new column)."""
    try:
        return pq.read_schema(path).remove_metadata().equals(sch.remove_metadata())
    except (OSError, pa.ArrowException):
        return False
