"""Where each file of a run lives under the results directory (the one place that spells the paths).

    runs/<run_id>.parquet         one row: status, config, metrics, provenance (bench.store.schema)
    history/<run_id>.parquet      one row per epoch
    predictions/<run_id>.npz      y_score (N x C) and y_true (N x L) of the test split
    logs/<run_id>.log             the run's log; <run_id>.running.log while it trains
    weights/<run_id>.safetensors  the trained weights, without the frozen LLM layer (runs with save_weights only;
                                  bench.models.restore reads them)
    analyze/<kind>/<run_id>.parquet  what `bench analyze <kind>` measured on the run's saved model (robustness: one
                                  row per corruption and severity; tokens: one row per image), and for tokens
                                  analyze/tokens/<run_id>.npz, the activation maps themselves
    index/runs.parquet            every row of runs/ in one file, index/history.parquet every history
                                  (bench.store.index: a cache kept in step by the dispatcher)
"""

from __future__ import annotations

from pathlib import Path

RUNS, HISTORY, PREDICTIONS, LOGS, INDEX, WEIGHTS = "runs", "history", "predictions", "logs", "index", "weights"
ANALYZE = "analyze"
ANALYSES = ("robustness", "tokens")  # the kinds of `bench analyze`
RUNNING_SUFFIX = ".running.log"
LOCK_FILE = ".bench.lock"


def run_path(results: Path, run_id: str) -> Path:
    return Path(results) / RUNS / f"{run_id}.parquet"


def index_path(results: Path, kind: str) -> Path:
    """The compacted table of `kind` (RUNS or HISTORY)."""
    return Path(results) / INDEX / f"{kind}.parquet"


def history_path(results: Path, run_id: str) -> Path:
    return Path(results) / HISTORY / f"{run_id}.parquet"


def predictions_path(results: Path, run_id: str) -> Path:
    return Path(results) / PREDICTIONS / f"{run_id}.npz"


def weights_path(results: Path, run_id: str) -> Path:
    return Path(results) / WEIGHTS / f"{run_id}.safetensors"


def analysis_path(results: Path, kind: str, run_id: str, suffix: str = ".parquet") -> Path:
    """What `bench analyze <kind>` wrote about one run (kind: robustness, tokens)."""
    return Path(results) / ANALYZE / kind / f"{run_id}{suffix}"


def log_path(results: Path, run_id: str) -> Path:
    return Path(results) / LOGS / f"{run_id}.log"


def failed_log_path(results: Path, run_id: str) -> Path:
    """The log of a forced rerun that failed while an ok result was kept."""
    return Path(results) / LOGS / f"{run_id}.failed.log"


def running_log_path(results: Path, run_id: str) -> Path:
    return Path(results) / LOGS / f"{run_id}{RUNNING_SUFFIX}"
