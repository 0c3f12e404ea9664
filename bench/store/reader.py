"""Reading the store, typed by `bench.store.schema`; never blocks or disturbs a writer."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bench.store import layout, schema

# Nullable pandas dtypes, so an int column with a missing value stays an int column.
_PANDAS = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_PANDAS.get)


def _read(files: list[Path], sch: pa.Schema) -> pa.Table:
    """Files as one table with exactly `sch`: columns a file lacks are null (rows written by older versions)."""
    return ds.dataset([str(f) for f in files], schema=sch, format="parquet").to_table()


def read_runs(results: Path) -> pd.DataFrame:
    """The whole store as one DataFrame, one row per run, every schema column (empty when nothing is stored)."""
    files = sorted((Path(results) / layout.RUNS).glob("*.parquet"))
    if not files:
        return pd.DataFrame(columns=schema.columns())
    return _to_pandas(_read(files, schema.run_schema()))


def read_run(results: Path, run_id: str) -> dict | None:
    path = layout.run_path(results, run_id)
    if not path.exists():
        return None
    return _read([path], schema.run_schema()).to_pylist()[0]


def statuses(results: Path, run_ids: Iterable[str]) -> dict[str, str | None]:
    """{run_id: 'ok' | 'failed' | None}, reading only the status column of the rows that exist (~1 ms each)."""
    folder = Path(results) / layout.RUNS
    present = {p.stem for p in folder.glob("*.parquet")} if folder.is_dir() else set()
    out = {}
    for rid in run_ids:
        if rid in present:
            with pq.ParquetFile(folder / f"{rid}.parquet") as f:
                out[rid] = f.read(columns=["status"]).column(0)[0].as_py()
        else:
            out[rid] = None
    return out


def read_history(results: Path, run_ids: list[str] | None = None) -> pd.DataFrame:
    """Per-epoch history of `run_ids` (all runs when None); runs without a history file are left out."""
    folder = Path(results) / layout.HISTORY
    if run_ids is None:
        files = sorted(folder.glob("*.parquet"))
    else:
        files = [p for p in (layout.history_path(results, r) for r in run_ids) if p.exists()]
    if not files:
        return pd.DataFrame(columns=schema.HISTORY.names)
    return _to_pandas(_read(files, schema.HISTORY))


def read_predictions(results: Path, run_id: str) -> dict[str, np.ndarray]:
    with np.load(layout.predictions_path(results, run_id)) as z:
        return {k: z[k] for k in z.files}
