"""Executing a grid: preflight checks, the dispatcher and its resume rule, backends, the one-run worker."""

from bench.run.dispatch import RunOptions, Summary, describe, run_all, run_one, wanted
from bench.run.preflight import check_offline, check_tasks, preflight

__all__ = ["RunOptions", "Summary", "check_offline", "check_tasks", "describe", "preflight", "run_all", "run_one",
           "wanted"]
