"""The study loop: one Optuna study per task, variant and base config, scored on **val** only.

    bench tune --task T --variant V [--grid G] --trials N [--timeout S] [--storage URL] [--study NAME]
               [--jobs K] [--space FILE] [--pruner median|hyperband|none] [--seed N] [--set key=value ...]

The base config is the grid's first run whose label is V, with `data.task=T` (and so the grid's first
seed); `--grid` defaults to `smoke` (offline, minutes on CPU): pass the grid you will compare with, e.g.
`--grid paper`, so the tuned values fit its epochs and model. Each trial overrides the searched dotted
keys of that base, trains on train, reports val AUC after every epoch (the pruner may stop it there)
and scores the best val AUC. The test split is never loaded: the data is read with splits=(train, val).
Trials write nothing to the run store.

Study: `--study` or `<task>__<variant>__<hash>`, the hash over the base config without the searched
fields (another base is another study), kept in `--storage` (see `bench.tune.storage`). The study is
loaded if it exists, so a rerun continues it: `--trials N` is the study's total (complete, pruned and
failed trials of every process, not counting trials cut short by a killed or interrupted process), so
`--trials 40` after 20 adds 20, and several processes (`--jobs K`, or `bench tune` started on several
machines against one PostgreSQL URL) stop together at N (racing processes may overshoot by at most one
trial each). A trial whose process died (its pid is gone on this host, or no heartbeat for STALE_S
seconds) is marked failed, as interrupted, when a process next starts or asks for a trial.

Sampler: TPE (multivariate, constant liar for parallel workers), reseeded for every trial from
`--seed` and the trial number, so a fresh study replays exactly and a resumed or parallel one does not
redraw earlier trials' startup points. Pruner: median (default), hyperband or none, per epoch.

The best parameters go to `<results>/tuned/<task>__<variant>.json` after every new best and at the end
(see `bench.tune.params`).
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from bench.config import RunConfig, flatten, override, resolve, run_id, to_dict
from bench.crashsafe import pid_alive
from bench.data import ensure_file, load_splits, resolve_root, task_spec
from bench.errors import BenchError, one_line
from bench.grid import Grid, load_grid
from bench.train import fit, pick_device
from bench.tune.params import TUNED, tuned_path, write_tuned
from bench.tune.space import Param, load_space
from bench.tune.storage import default_storage, describe_storage, open_storage
from bench.upstream import optuna_storage, optuna_trial_id

DEFAULT_GRID = "smoke"
METRIC = "val_auc"
HEARTBEAT_S = 30.0  # a running trial stamps `heartbeat` this often
STALE_S = 600.0  # a running trial without a heartbeat for this long is taken as dead
PRUNERS = ("median", "hyperband", "none")


# ------------------------------------------------------------------------------------- base and study


def base_config(grid: Grid, task: str, variant: str) -> RunConfig:
    """The grid's first run labelled `variant` (for `task` if the grid has it), with data.task=task."""
    labels = list(dict.fromkeys(c.label for c in grid.runs))
    runs = [c for c in grid.runs if c.label == variant]
    if not runs:
        near = difflib.get_close_matches(variant, labels, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise BenchError(f"grid {grid.name} has no variant '{variant}': {hint}variants: {', '.join(labels)}")
    run = next((c for c in runs if c.data.task == task), runs[0])
    task_spec(task, run.data.size)  # unknown task or size -> one line
    try:
        return resolve(override(run, {"data.task": task}))
    except BenchError as e:
        raise BenchError(f"{task}/{variant}: {e}") from None


def _drop(d: dict, key: str) -> None:
    *sections, name = key.split(".")
    for s in sections:
        d = d[s]
    d.pop(name, None)


def base_hash(base: RunConfig, searched) -> str:
    """Hash of the resolved base config without the searched fields (and the label and params file)."""
    d = to_dict(resolve(base))
    d.pop("label")
    d.pop("params_file")
    for key in searched:
        _drop(d, key)
    return hashlib.sha1(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def study_name(base: RunConfig, searched) -> str:
    return f"{base.data.task}__{base.label}__{base_hash(base, searched)}"


# ------------------------------------------------------------------------------------------ the setup


@dataclass(frozen=True)
class TuneSetup:
    """Everything a worker process needs (picklable)."""

    base: RunConfig
    grid: str
    space: dict[str, Param]
    study: str
    storage: str
    n_trials: int
    timeout: float | None
    seed: int
    pruner: dict
    sampler: dict
    data_root: Path
    device: str | None
    results: Path

    @property
    def export_path(self) -> Path:
        return tuned_path(Path(self.results) / TUNED, self.base.data.task, self.base.label)


def prepare(task: str, variant: str, *, grid: str | None = None, sets: Mapping[str, Any] | None = None,
            trials: int, timeout: float | None = None, storage: str | None = None, study: str | None = None,
            space: str | Path | None = None, pruner: str | None = None, seed: int = 0,
            data_root: str | Path | None = None, device: str | None = None,
            results: Path = Path("results"), download: bool = True) -> TuneSetup:
    """Check everything the user can get wrong before any trial: grid, variant, task, space, data, storage."""
    if trials < 1:
        raise BenchError(f"--trials must be >= 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise BenchError(f"--timeout must be > 0 seconds, got {timeout}")
    g = load_grid(grid or DEFAULT_GRID, sets or {})
    base = base_config(g, task, variant)
    sf = load_space(space, base)
    if not sf.params:
        raise BenchError("the search space is empty: list parameters under 'params:' in the space file")
    pruner_opts = dict(sf.pruner)
    if pruner is not None:
        pruner_opts["type"] = pruner
    _make_pruner(pruner_opts, base.train.epochs)  # validate now
    _make_sampler(sf.sampler, seed)
    name = study or study_name(base, sf.params)
    if not name.strip():
        raise BenchError("--study must not be empty")
    storage = storage or default_storage(results, name)
    root = resolve_root(data_root)
    ensure_file(task_spec(base.data.task, base.data.size), root, download=download)
    if base.booster.source and base.booster.variant != "baseline":
        from bench.models.llm import llm_hidden_size

        llm_hidden_size(base.booster.source, base.booster.revision)
    pick_device(device)
    open_storage(storage)  # connects (RDB) or creates the journal file: fail here, not in a worker
    return TuneSetup(base, str(grid or DEFAULT_GRID), sf.params, name, storage, trials, timeout, seed,
                     pruner_opts, sf.sampler, root, device, Path(results))


def _make_pruner(opts: Mapping[str, Any], epochs: int):
    opts = dict(opts)
    kind = opts.pop("type", "median")
    if kind not in PRUNERS:
        raise BenchError(f"pruner type must be one of {', '.join(PRUNERS)}, got {kind!r}")
    try:
        if kind == "median":
            return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 1, **opts})
        if kind == "hyperband":
            return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": epochs, **opts})
        if opts:
            raise TypeError(f"unexpected options {sorted(opts)}")
        return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as e:
        raise BenchError(f"pruner {kind}: {one_line(e)}") from None


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random state is reset for every trial from (seed, trial number).

    One seeded TPESampler per process would replay the same startup points in every process sharing
    a study, and again after a resume; seeding by trial number (unique in the storage) avoids both and
    keeps a fresh single-process study exactly reproducible. TPE reads the history from the study, so a
    new inner sampler per trial loses nothing.
    """

    def __init__(self, seed: int, **tpe_options):
        self._seed, self._options = seed, tpe_options
        self._inner = self._make(0)

    def _make(self, number: int) -> optuna.samplers.TPESampler:
        seed = int.from_bytes(hashlib.sha1(f"{self._seed}:{number}".encode()).digest()[:4], "little")
        return optuna.samplers.TPESampler(seed=seed, **self._options)

    def before_trial(self, study, trial) -> None:
        self._inner = self._make(trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _make_sampler(opts: Mapping[str, Any], seed: int) -> TrialSeededTPE:
    opts = {"multivariate": True, "constant_liar": True, **opts}
    if "seed" in opts:
        raise BenchError("sampler: set the seed with --seed, not in the space file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return TrialSeededTPE(seed, **opts)
        except (TypeError, ValueError) as e:
            raise BenchError(f"sampler: {one_line(e)}") from None


def _study(setup: TuneSetup):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(setup.storage)
    try:
        study = optuna.create_study(storage=storage, study_name=setup.study, direction="maximize",
                                    sampler=_make_sampler(setup.sampler, setup.seed),
                                    pruner=_make_pruner(setup.pruner, setup.base.train.epochs), load_if_exists=True)
    except ValueError as e:  # e.g. an existing study of the same name that minimizes
        raise BenchError(f"study {setup.study} in {describe_storage(setup.storage)}: {one_line(e)}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise BenchError(f"study {setup.study} in {describe_storage(setup.storage)} minimizes; use another --study")
    if "base_run_id" not in study.user_attrs:
        for key, value in dict(task=setup.base.data.task, variant=setup.base.label, grid=setup.grid,
                               base_run_id=run_id(setup.base), metric=METRIC, seed=setup.seed,
                               space={k: p.to_dict() for k, p in setup.space.items()}).items():
            study.set_user_attr(key, value)
    return study


# --------------------------------------------------------------------------------------- the workers


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_stale(study, log: Callable[[str], None] = print) -> list[int]:
    """Mark RUNNING trials whose process is gone as failed (user attr `interrupted`); their numbers."""
    host, now, failed = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        whost, _, wpid = worker.rpartition(":")
        beat = t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else now)
        if whost == host and wpid.isdigit() and (int(wpid) == os.getpid() or not pid_alive(int(wpid))):
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


def tally(study) -> dict:
    """Trial counts; `counted` is what --trials compares with (running included, interrupted excluded)."""
    trials = study.get_trials(deepcopy=False)
    n = {s: 0 for s in ("complete", "pruned", "failed", "running", "interrupted")}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            n["complete"] += 1
        elif t.state == TrialState.PRUNED:
            n["pruned"] += 1
        elif t.state == TrialState.RUNNING:
            n["running"] += 1
        elif t.state == TrialState.FAIL:
            n["interrupted" if t.user_attrs.get("interrupted") else "failed"] += 1
    n["done"] = n["complete"] + n["pruned"] + n["failed"]
    n["counted"] = n["done"] + n["running"]
    return n


class _Heartbeat:
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


def _short(params: Mapping[str, Any]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k.split('.')[-1]}={fmt(v)}" for k, v in params.items())


def _objective(setup: TuneSetup, trial, splits, spec, device) -> float:
    params = {}
    for key, p in setup.space.items():
        try:
            params[key] = p.suggest(trial)
        except ValueError as e:  # the study searched this key as another kind (e.g. float, now categorical)
            raise BenchError(f"study {setup.study} already searched {key} differently ({one_line(e)}); "
                             "keep its search space or start another study with --study NAME") from None
    cfg = resolve(override(setup.base, params))
    trial.set_user_attr("run_id", run_id(cfg))

    def on_epoch(epoch: int, val_auc: float) -> None:
        trial.report(val_auc if val_auc is not None else math.nan, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    result = fit(cfg, splits, spec, device, on_epoch=on_epoch)
    m = result.metrics
    for key in ("best_epoch", "epochs_run", "train_s"):
        if m.get(key) is not None:
            trial.set_user_attr(key, m[key])
    value = m[METRIC]
    if value is None or not math.isfinite(value):
        raise ValueError(f"best {METRIC} is {value}")
    return float(value)


def work(setup: TuneSetup, tag: str = "", log: Callable[[str], None] | None = None) -> None:
    """Ask, train, tell until the study has `n_trials` counted trials or the timeout passes."""
    say = log or (lambda msg: print(msg, flush=True))
    prefix = f"[{tag}] " if tag else ""
    deadline = time.monotonic() + setup.timeout if setup.timeout else None
    device = pick_device(setup.device)
    spec = task_spec(setup.base.data.task, setup.base.data.size)
    splits = load_splits(spec, setup.data_root, download=False, splits=("train", "val"))  # never test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = _study(setup)
        while True:
            fail_stale(study, lambda m: say(prefix + m))
            if deadline is not None and time.monotonic() >= deadline:
                say(f"{prefix}timeout: no new trials")
                break
            if tally(study)["counted"] >= setup.n_trials:
                break
            trial = study.ask()
            trial.set_user_attr("worker", _worker_id())
            trial.set_user_attr("heartbeat", time.time())
            beat = _Heartbeat(optuna_storage(study), optuna_trial_id(trial), HEARTBEAT_S)
            state, note = TrialState.COMPLETE, ""
            try:
                value = _objective(setup, trial, splits, spec, device)
            except optuna.TrialPruned:
                beat.stop()
                state = TrialState.PRUNED
                frozen = study.tell(trial, state=state)
                epoch, auc = max(frozen.intermediate_values.items(), default=(-1, math.nan))
                note = f"pruned after epoch {epoch} (val AUC {auc:.4f})"
            except BaseException as e:
                beat.stop()
                user_error = isinstance(e, BenchError)
                interrupted = isinstance(e, (KeyboardInterrupt, SystemExit))
                # a stopped trial, or one the user's setup broke, does not count towards --trials
                trial.set_user_attr("interrupted" if interrupted or user_error else "error",
                                    f"{type(e).__name__}: {e}".splitlines()[0][:500])
                study.tell(trial, state=TrialState.FAIL)
                if interrupted or user_error:
                    raise
                state, note = TrialState.FAIL, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            else:
                beat.stop()
                study.tell(trial, value)
                note = f"val AUC {value:.4f}"
            n = tally(study)
            try:
                best = study.best_trial
            except ValueError:
                best = None
            best_txt = f"best val AUC {best.value:.4f} (trial {best.number})" if best else "no complete trial yet"
            say(f"{prefix}trial {trial.number} {note} [{_short(trial.params)}] | "
                f"{n['done']}/{setup.n_trials} done, {best_txt}")
            if state == TrialState.COMPLETE and best is not None and best.number == trial.number:
                export(study, setup)


def _worker_entry(setup: TuneSetup, tag: str, threads: int | None) -> None:
    """A `--jobs` child process: same loop; a user error is one line and exit 2."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # the running trial is marked interrupted, not left RUNNING
    try:
        work(setup, tag)
    except BenchError as e:
        print(f"bench: error: [{tag}] {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def run(setup: TuneSetup, jobs: int = 1, log: Callable[[str], None] | None = None) -> dict:
    """Run `jobs` worker processes (this one included) on the study; export and summarise it."""
    if jobs < 1:
        raise BenchError(f"--jobs must be >= 1, got {jobs}")
    say = log or (lambda msg: print(msg, flush=True))
    threads = None
    if jobs > 1 and pick_device(setup.device).type == "cpu":
        threads = max(1, (os.cpu_count() or 1) // jobs)
    children = []
    if jobs > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        children = [ctx.Process(target=_worker_entry, args=(setup, f"w{i}", threads), daemon=False)
                    for i in range(1, jobs)]
        for c in children:
            c.start()
    old_threads = None
    if threads:
        import torch

        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    old_term = None
    if threading.current_thread() is threading.main_thread():  # a scheduler's SIGTERM: stop like Ctrl-C
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        work(setup, "w0" if jobs > 1 else "", say)
    except BaseException:
        for c in children:  # stop the other workers too; each marks its running trial interrupted
            if c.is_alive():
                c.terminate()
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if old_threads:
            import torch

            torch.set_num_threads(old_threads)
        for c in children:
            c.join()
    bad = [c.exitcode for c in children if c.exitcode not in (0, None)]
    if bad:
        raise BenchError(f"{len(bad)} of {jobs - 1} worker processes failed (exit codes {bad}); see their messages above")
    study = _study(setup)
    path = export(study, setup)
    try:
        best = study.best_trial
    except ValueError:
        best = None
    return {"study": setup.study, "storage": describe_storage(setup.storage), **tally(study),
            "n_trials": setup.n_trials, "best_value": best.value if best else None,
            "best_trial": best.number if best else None, "best_params": best.params if best else None,
            "export": path}


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------------------- export


def export(study, setup: TuneSetup) -> Path | None:
    """Write the study's best parameters and their provenance; None while no trial is complete."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    base = resolve(setup.base)
    params = {k: best.params[k] for k in setup.space if k in best.params}
    flat_base = flatten(base)
    flat_base.pop("label")
    n = tally(study)
    doc = {
        "task": base.data.task,
        "variant": base.label,
        "params": params,
        "metric": METRIC,
        "best_value": best.value,
        "best_trial": best.number,
        "study": setup.study,
        "storage": describe_storage(setup.storage),
        "n_trials": n["done"],
        "n_complete": n["complete"],
        "n_pruned": n["pruned"],
        "n_failed": n["failed"],
        "grid": setup.grid,
        "base_run_id": run_id(base),
        "tuned_run_id": run_id(override(base, params)),
        "searched": sorted(setup.space),
        "space": {k: p.to_dict() for k, p in setup.space.items()},
        "sampler_seed": setup.seed,
        "base": flat_base,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_tuned(setup.export_path, doc)
    return setup.export_path
