"""Reading the store, typed by `bench.store.schema`; never blocks or disturbs a writer, and writes nothing but
moving a file that cannot be read aside (bench.store.quarantine).

`read_runs`, `read_history` and `statuses` read the store as one dataset (`bench.store.index`: the
compacted tables plus the per-run files newer than them), sorted by run id (and epoch). pandas is
imported only by the functions that return a DataFrame, so `statuses` (the runner's resume check and
`bench list`) starts without it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pyarrow as pa

from bench.errors import one_line
from bench.store import index, layout, quarantine, schema

if TYPE_CHECKING:
    import pandas as pd


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Nullable pandas dtypes, so an int column with a missing value stays an int column."""
    import pandas as pd

    mapping = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    return table.drop_columns([index.MTIME, index.SIZE]).to_pandas(types_mapper=mapping.get)


def read_runs(results: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """One row per stored run, sorted by run id, with every schema column (or `columns`, plus run_id)."""
    table, _ = index.snapshot(results, layout.RUNS, columns)
    return _to_pandas(table)


def read_run(results: Path, run_id: str) -> dict | None:
    """The run's row as its own file has it now (the commit point), or None."""
    got = index.read_file(layout.run_path(results, run_id))
    return None if got is None else index.conform(got[0], schema.run_schema()).to_pylist()[0]


def statuses(results: Path, run_ids: Iterable[str]) -> dict[str, str | None]:
    """{run_id: 'ok' | 'failed' | None}: the runner's resume check."""
    return column(results, "status", run_ids)


def column(results: Path, name: str, run_ids: Iterable[str]) -> dict:
    """{run_id: the run's value in column `name`, None when not stored}, reading only that column."""
    run_ids = list(run_ids)
    table, _ = index.snapshot(results, layout.RUNS, [name], run_ids=run_ids)
    stored = dict(zip(table.column("run_id").to_pylist(), table.column(name).to_pylist()))
    return {rid: stored.get(rid) for rid in run_ids}


def read_history(results: Path, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-epoch history of `run_ids` (all runs when None), sorted by run id and epoch; runs without a
    history file are left out."""
    table, _ = index.snapshot(results, layout.HISTORY, run_ids=run_ids)
    return _to_pandas(table)


PREDICTED = ("y_score.npy", "y_true.npy")


def read_predictions(results: Path, run_id: str) -> dict[str, np.ndarray]:
    """The run's test predictions; a file that does not decode (a bad CRC inside) raises ValueError."""
    try:
        with np.load(layout.predictions_path(results, run_id)) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{layout.predictions_path(results, run_id)} is corrupt ({one_line(e)})") from e


def check_predictions(results: Path, run_ids: Iterable[str]) -> None:
    """Set aside (bench.store.quarantine: one warning each) the predictions files of `run_ids` that are not whole
    archives of both arrays: truncated or garbage. Reads only each file's zip directory, not its arrays."""
    for rid in run_ids:
        path = layout.predictions_path(results, rid)
        try:
            with zipfile.ZipFile(path) as z:
                lacking = [n for n in PREDICTED if n not in z.namelist()]
            if lacking:
                raise zipfile.BadZipFile(f"no {', '.join(lacking)} in it")
        except FileNotFoundError:
            continue
        except (zipfile.BadZipFile, OSError) as e:
            quarantine.set_aside(path, e)


def single_class(results: Path, run_id: str, task_type: str) -> bool | None:
    """True when the run's stored test predictions are all one class (binary: one side of 0.5; multi-label: every
    label constant; otherwise one argmax), so its ACC is a majority rate; None without stored predictions. Read from
    the predictions, never stored in the row: no column, no run id changes."""
    try:
        score = np.asarray(read_predictions(results, run_id)["y_score"], dtype=float)
    except (OSError, KeyError, ValueError):
        return None
    if task_type == "multi-label, binary-class":
        labels = score > 0.5
    elif task_type == "binary-class":
        labels = (score[:, -1] if score.ndim == 2 else score) > 0.5
    else:
        labels = score.argmax(1)
    return bool((labels == labels[:1]).all())


def read_analysis(results: Path, kind: str, run_ids: Iterable[str]) -> pd.DataFrame:
    """The rows `bench analyze <kind>` stored for `run_ids` (runs without them are left out), with their run_id and
    the table's metadata as `attrs` per run (`attrs["meta"][run_id]`)."""
    import pandas as pd
    import pyarrow.parquet as pq

    parts, meta = [], {}
    for rid in run_ids:
        path = layout.analysis_path(results, kind, rid)
        if path.is_file():
            table = pq.read_table(path)
            meta[rid] = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()
                         if not k.startswith(b"pandas")}
            parts.append(table.to_pandas().assign(run_id=rid))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"run_id": []})
    out.attrs["meta"] = meta
    return out


def read_analysis_arrays(results: Path, kind: str, run_id: str) -> dict[str, np.ndarray]:
    with np.load(layout.analysis_path(results, kind, run_id, ".npz")) as z:
        return {k: z[k] for k in z.files}
