"""The result store: one parquet row per run, its history and its test predictions, written atomically.

Layout under the results directory:
    runs/<run_id>.parquet         one row: status, config (flattened), metrics, provenance
    history/<run_id>.parquet      one row per epoch: train loss, val ACC/AUC, lr
    predictions/<run_id>.npz      y_score (N x C) and y_true (N x L) of the test split
    logs/<run_id>.log             the run's log (written by the runner)

Every file appears whole or not at all (temp file + os.replace), so a killed process never leaves a
half-written row; the run row is written last, so a row with status ok means its other files exist.
Knows nothing about torch.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.crashsafe import write_atomic

RUNS, HISTORY, PREDICTIONS, LOGS = "runs", "history", "predictions", "logs"


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def run_path(results: Path, run_id: str) -> Path:
    return Path(results) / RUNS / f"{run_id}.parquet"


def write_history(results: Path, run_id: str, epochs: list[Mapping[str, Any]]) -> None:
    df = pd.DataFrame(list(epochs))
    df.insert(0, "run_id", run_id)
    write_atomic(Path(results) / HISTORY / f"{run_id}.parquet", _parquet_bytes(df))


def write_predictions(results: Path, run_id: str, y_score: np.ndarray, y_true: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, y_score=y_score, y_true=y_true)
    write_atomic(Path(results) / PREDICTIONS / f"{run_id}.npz", buf.getvalue())


def write_run(results: Path, row: Mapping[str, Any]) -> None:
    """Write the run's row last: its presence with status ok is the commit point of the run."""
    write_atomic(run_path(results, row["run_id"]), _parquet_bytes(pd.DataFrame([dict(row)])))


def read_run(results: Path, run_id: str) -> dict | None:
    path = run_path(results, run_id)
    if not path.exists():
        return None
    return pd.read_parquet(path).iloc[0].to_dict()


def run_status(results: Path, run_id: str) -> str | None:
    """'ok', 'failed', or None when the run has no row yet."""
    row = read_run(results, run_id)
    return None if row is None else row["status"]


def read_runs(results: Path) -> pd.DataFrame:
    """The whole store as one DataFrame, one row per run (empty when there are no runs)."""
    files = sorted((Path(results) / RUNS).glob("*.parquet"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def read_history(results: Path, run_ids: list[str] | None = None) -> pd.DataFrame:
    folder = Path(results) / HISTORY
    files = sorted(folder.glob("*.parquet")) if run_ids is None else [folder / f"{r}.parquet" for r in run_ids]
    frames = [pd.read_parquet(f) for f in files if f.exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_predictions(results: Path, run_id: str) -> dict[str, np.ndarray]:
    with np.load(Path(results) / PREDICTIONS / f"{run_id}.npz") as z:
        return {k: z[k] for k in z.files}
