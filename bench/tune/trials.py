"""Trials across processes: heartbeats, recovering trials whose process died, and the --trials budget.

`--trials N` is the study's total (complete, pruned and failed trials of every process, not counting
trials cut short by a killed or interrupted process), so `--trials 40` after 20 adds 20, and several
processes (`--jobs K`, a Dask cluster, or `bench tune` started on several machines against one
PostgreSQL URL) stop together at N. Racing processes may each start one trial past N; the budget is the
first N counted trials by trial number, and only those are exported, so every variant's budget is exactly
N. A trial whose process died (its pid is gone on this host, or no heartbeat for STALE_S seconds) is
marked failed, as interrupted, when a process next starts or asks for a trial.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from bench.crashsafe import pid_alive
from bench.upstream import optuna_storage, optuna_trial_id

HEARTBEAT_S = 30.0  # a running trial stamps `heartbeat` this often
STALE_S = 600.0  # a running trial without a heartbeat for this long is taken as dead

# (study name, storage trial id) of the trials this process is running (Dask runs several at once); the name
# matters: each study's journal file numbers its trials from 0
RUNNING_HERE: set[tuple[str, int]] = set()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_stale(study, log: Callable[[str], None] = print) -> list[int]:
    """Mark RUNNING trials whose process is gone as failed (user attr `interrupted`); their numbers."""
    host, now, failed = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        whost, _, wpid = worker.rpartition(":")
        beat = t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else now)
        mine = wpid.isdigit() and int(wpid) == os.getpid()
        here = (study.study_name, optuna_trial_id(t)) in RUNNING_HERE
        if whost == host and wpid.isdigit() and ((mine and not here)
                                                 or (not mine and not pid_alive(int(wpid)))):
            why = f"process {worker} is gone"
        elif now - float(beat) > STALE_S:
            why = f"no heartbeat from {worker or 'its worker'} for {now - float(beat):.0f}s"
        else:
            continue
        try:
            storage = optuna_storage(study)
            storage.set_trial_user_attr(optuna_trial_id(t), "interrupted", why)
            storage.set_trial_state_values(optuna_trial_id(t), TrialState.FAIL)
        except (UpdateFinishedTrialError, KeyError):
            continue  # another process got there first
        failed.append(t.number)
        log(f"trial {t.number} was left running ({why}): marked failed")
    return failed


def _interrupted(t: FrozenTrial) -> bool:
    return t.state == TrialState.FAIL and bool(t.user_attrs.get("interrupted"))


def tally(study) -> dict:
    """Trial counts; `counted` is what --trials compares with (running included, interrupted excluded)."""
    n = {s: 0 for s in ("complete", "pruned", "failed", "running", "interrupted")}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            n["complete"] += 1
        elif t.state == TrialState.PRUNED:
            n["pruned"] += 1
        elif t.state == TrialState.RUNNING:
            n["running"] += 1
        elif t.state == TrialState.FAIL:
            n["interrupted" if _interrupted(t) else "failed"] += 1
    n["done"] = n["complete"] + n["pruned"] + n["failed"]
    n["counted"] = n["done"] + n["running"]
    return n


def budget(study, n_trials: int) -> list[FrozenTrial]:
    """The study's budget: its first `n_trials` counted trials by number (what racing workers start past
    it is left out, so every study of a grid is judged on exactly n_trials)."""
    counted = sorted((t for t in study.get_trials(deepcopy=False) if not _interrupted(t)), key=lambda t: t.number)
    return counted[:n_trials]


def best_in_budget(study, n_trials: int) -> FrozenTrial | None:
    """The best complete trial of the budget (the earliest on a tie); None while none is complete."""
    done = [t for t in budget(study, n_trials) if t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


class Heartbeat:
    def __init__(self, storage, trial_id: int, every: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, every), daemon=True)
        self._thread.start()

    def _beat(self, storage, trial_id, every):
        while not self._stop.wait(every):
            try:
                storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
            except Exception:  # noqa: BLE001 — the trial finished meanwhile, or the storage hiccuped
                return

    def stop(self):
        self._stop.set()
        self._thread.join()
