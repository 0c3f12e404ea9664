"""The result store: one row per run with its history, test predictions and log, under one folder.

Knows nothing about torch. `layout` says where files live, `schema` what a row holds, `writer` how
the one dispatcher writes (locked, whole files, row last), `index` how the store reads as one dataset
(compacted tables kept in step with the per-run files), `reader` how anyone reads, `quarantine` what a
file that cannot be read becomes (set aside, read as absent).
"""

from bench.store.layout import HISTORY, LOGS, PREDICTIONS, RUNNING_SUFFIX, RUNS, log_path, run_path
from bench.store.reader import (check_predictions, column, read_analysis, read_analysis_arrays, read_history,
                                read_predictions, read_run, read_runs, single_class, statuses)
from bench.store.writer import clean_stale, commit, results_lock, write_analysis, write_history, write_run

__all__ = [
    "HISTORY", "LOGS", "PREDICTIONS", "RUNNING_SUFFIX", "RUNS", "check_predictions", "clean_stale", "column", "commit",
    "log_path", "read_analysis", "read_analysis_arrays", "read_history", "read_predictions", "read_run", "read_runs",
    "results_lock", "run_path", "single_class", "statuses", "write_analysis", "write_history", "write_run",
]
