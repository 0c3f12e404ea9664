"""Watching a `bench` process from a test: wait for a condition on its store, read which rows it stored."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench import store


def stored_ids(results: Path) -> set[str]:
    """The run ids with a row file in the store."""
    return {p.stem for p in (results / store.RUNS).glob("*.parquet")}


def wait_for(cond, proc: subprocess.Popen, timeout: float = 150.0) -> None:
    """Poll `cond()` until true; fail with the process's output if it exits first, kill it on `timeout`."""
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"bench exited {proc.returncode} early:\n{proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.05)
