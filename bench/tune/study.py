"""The study loop: one Optuna study per task, variant and base config, scored on **val** only.

    bench tune [--grid G] [--task T ...] [--variant V ...] --trials N [--seeds K|auto] [--timeout S]
               [--storage URL] [--study NAME] [--jobs K | --backend dask --scheduler ADDRESS] [--space FILE]
               [--pruner median|hyperband|none] [--seed N] [--set key=value ...]

Studies: one per (task, variant) of the grid (`--grid`, default `smoke`), or those `--task` / `--variant`
select; a `--task` the grid lacks takes every variant of the grid. A study's base config is the grid's
first run with that label (for that task if the grid has it), with `data.task` set; pass the grid you will
compare with, e.g. `--grid paper`, so the tuned values fit its epochs and model. Every study of a task
searches the same space (the fair rule in `bench.tune.space`) and gets the same `--trials` budget.

Objective: the mean, over K training seeds, of each seed's best val AUC (K = `--seeds`; by default 3 when
the task's val split has fewer than 500 images per medmnist.INFO, else 1). The seeds are 1000, 1001, ...:
disjoint from the grids' evaluation seeds, so no final run's seed took part in a choice. The seeds run one
after the other, each a full `fit` on train with val after every epoch; the test split is never loaded
(the data is read with splits=(train, val)) and trials write nothing to the run store. Each seed's best
val AUC and best epoch go to the trial's user attributes `seed_val_auc` / `seed_best_epoch` (with `seeds`).

Pruning steps: seed k's epoch e (both from 0) is step k*E + e, E the epochs; a trial reports at every
step the sum of the best val AUCs so far of the seeds run so far, divided by K: the running mean over the
K seeds with the seeds not yet run counting 0. Trials at one step have run the same seeds and epochs, so
comparing these values is comparing running means at equal progress; the value never decreases, and at
the last step it is the objective. (Median: `n_warmup_steps` counts these steps; hyperband's
max_resource is K*E.)

Study name: `--study` (one study only) or `<task>__<variant>__<hash>`, the hash over the base config
without the searched fields and the seed, plus the tuning seeds (another base or K is another study),
kept in `--storage` (see `bench.tune.storage`). The study is loaded if it exists, so a rerun continues
it: `--trials N` is the study's total (complete, pruned and failed trials of every process, not counting
trials cut short by a killed or interrupted process), so `--trials 40` after 20 adds 20, and several
processes (`--jobs K`, a Dask cluster, or `bench tune` started on several machines against one
PostgreSQL URL) stop together at N. Racing processes may each start one trial past N; the budget is the
first N counted trials by trial number, and only those are exported, so every variant's budget is exactly
N. A trial whose process died (its pid is gone on this host, or no heartbeat for STALE_S seconds) is
marked failed, as interrupted, when a process next starts or asks for a trial.

Sampler: TPE (multivariate, constant liar for parallel workers), reseeded for every trial from
`--seed` and the trial number, so a fresh study replays exactly and a resumed or parallel one does not
redraw earlier trials' startup points.

The best parameters go to `<results>/tuned/<task>__<variant>.json` after every new best and at the end
(see `bench.tune.params`). Spreading studies over processes, GPUs and Dask: `bench.tune.dispatch`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from bench.config import RunConfig, flatten, override, resolve, run_id, to_dict
from bench.crashsafe import pid_alive
from bench.data import resolve_root, task_spec
from bench.data.loading import load_splits
from bench.errors import BenchError, one_line
from bench.grid import Grid, load_grid
from bench.train import fit, pick_device
from bench.tune.params import TUNED, tuned_path, write_tuned
from bench.tune.space import Param, load_space
from bench.tune.storage import (
    RECONNECT_S,
    connection_error,
    connection_lost,
    default_storage,
    describe_storage,
    open_storage,
    wait_for_storage,
)
from bench.upstream import optuna_storage, optuna_trial_id

DEFAULT_GRID = "smoke"
METRIC = "val_auc"
OBJECTIVE = "mean over the seeds of each seed's best val AUC"
SMALL_VAL = 500  # a val split smaller than this gets SMALL_VAL_SEEDS seeds per trial by default
SMALL_VAL_SEEDS = 3
FIRST_TUNE_SEED = 1000  # trials train with seeds 1000, 1001, ...: never a grid's evaluation seed
HEARTBEAT_S = 30.0  # a running trial stamps `heartbeat` this often
STALE_S = 600.0  # a running trial without a heartbeat for this long is taken as dead
PRUNERS = ("median", "hyperband", "none")


# ------------------------------------------------------------------------------------- base and study


def variants_of(grid: Grid, task: str) -> list[str]:
    """The grid's variants (labels) for `task`, in grid order; every variant when the grid lacks the task."""
    labels = [c.label for c in grid.runs if c.data.task == task] or [c.label for c in grid.runs]
    return list(dict.fromkeys(labels))


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


def default_seeds(task: str, size: int) -> int:
    """K when --seeds is auto: SMALL_VAL_SEEDS below SMALL_VAL val images (medmnist.INFO), else 1."""
    return SMALL_VAL_SEEDS if task_spec(task, size).n_samples["val"] < SMALL_VAL else 1


def tune_seeds(k: int) -> tuple[int, ...]:
    return tuple(range(FIRST_TUNE_SEED, FIRST_TUNE_SEED + k))


def _drop(d: dict, key: str) -> None:
    *sections, name = key.split(".")
    for s in sections:
        d = d[s]
    d.pop(name, None)


def base_hash(base: RunConfig, searched, seeds: Sequence[int]) -> str:
    """Hash of the resolved base config without the searched fields (and the label, params file and seed),
    plus the tuning seeds."""
    d = to_dict(resolve(base))
    for key in ("label", "params_file", "seed"):
        d.pop(key)
    for key in searched:
        _drop(d, key)
    d["tune_seeds"] = list(seeds)
    return hashlib.sha1(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def study_name(base: RunConfig, searched, seeds: Sequence[int]) -> str:
    return f"{base.data.task}__{base.label}__{base_hash(base, searched, seeds)}"


# ------------------------------------------------------------------------------------------ the setup


@dataclass(frozen=True)
class TuneSetup:
    """Everything a worker process needs for one study (picklable)."""

    base: RunConfig
    grid: str
    space: dict[str, Param]
    seeds: tuple[int, ...]
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
    def name(self) -> str:
        return f"{self.base.data.task}/{self.base.label}"

    @property
    def steps(self) -> int:
        """Pruning steps of a whole trial: every epoch of every seed."""
        return len(self.seeds) * self.base.train.epochs

    @property
    def objective(self) -> str:
        return "val AUC" if len(self.seeds) == 1 else f"mean val AUC ({len(self.seeds)} seeds)"

    @property
    def export_path(self) -> Path:
        return tuned_path(Path(self.results) / TUNED, self.base.data.task, self.base.label)


def select(grid: Grid, tasks: Sequence[str] = (), variants: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The (task, variant) pairs to tune: every pair of the grid, or those the filters keep."""
    pairs = [(t, v) for t in dict.fromkeys(tasks or (c.data.task for c in grid.runs)) for v in variants_of(grid, t)]
    labels = list(dict.fromkeys(c.label for c in grid.runs))
    for v in dict.fromkeys(variants):
        if v not in labels:
            near = difflib.get_close_matches(v, labels, n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise BenchError(f"grid {grid.name} has no variant '{v}': {hint}variants: {', '.join(labels)}")
        if not any(pv == v for _, pv in pairs):
            raise BenchError(f"grid {grid.name} has no variant '{v}' for {', '.join(dict.fromkeys(tasks))}; its "
                             f"variants there: {', '.join(dict.fromkeys(pv for _, pv in pairs))}")
    return [(t, v) for t, v in pairs if not variants or v in variants]


def prepare(*, grid: str | None = None, tasks: Sequence[str] = (), variants: Sequence[str] = (),
            sets: Mapping[str, Any] | None = None, trials: int, seeds: int | str | None = None,
            timeout: float | None = None, storage: str | None = None, study: str | None = None,
            space: str | Path | None = None, pruner: str | None = None, seed: int = 0,
            data_root: str | Path | None = None, device: str | None = None, results: Path = Path("results"),
            download: bool = True, log: Callable[[str], None] | None = None) -> list[TuneSetup]:
    """One setup per study, after checking everything the user can get wrong before any trial: grid, tasks,
    variants, space, seeds, data, LLM sources, device and storage. `log` gets the notes (keys left out)."""
    from bench.run.preflight import preflight

    say = log or (lambda msg: print(msg, flush=True))
    if trials < 1:
        raise BenchError(f"--trials must be >= 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise BenchError(f"--timeout must be > 0 seconds, got {timeout}")
    k = _seeds_option(seeds)
    g = load_grid(grid or DEFAULT_GRID, sets or {})
    pairs = select(g, tasks, variants)
    if study is not None and len(pairs) != 1:
        raise BenchError(f"--study names one study, but {len(pairs)} are selected; use it with one --task and one "
                         "--variant, or drop it")
    if study is not None and not study.strip():
        raise BenchError("--study must not be empty")
    setups = []
    for task in dict.fromkeys(t for t, _ in pairs):
        bases = {v: base_config(g, task, v) for v in variants_of(g, task)}  # the whole task: the fair rule
        sf = load_space(space, bases)
        if not sf.params:
            raise BenchError("the search space is empty: list parameters under 'params:' in the space file")
        for key, takes in sf.left_out.items():
            say(f"note: {task}: {key} is not searched for any variant (only {', '.join(takes)} take it; every "
                "variant of a task searches the same keys); it keeps the grid's value")
        for variant in (v for t, v in pairs if t == task):
            base = bases[variant]
            if base.train.audit_test:
                raise BenchError(f"{task}/{variant}: train.audit_test=true evaluates the test split every epoch, and "
                                 "bench tune never reads test: tune with --set train.audit_test=false")
            task_seeds = tune_seeds(k or default_seeds(task, base.data.size))
            pruner_opts = {**sf.pruner, **({"type": pruner} if pruner is not None else {})}
            _make_pruner(pruner_opts, len(task_seeds) * base.train.epochs)  # validate now
            _make_sampler(sf.sampler, seed)
            name = study or study_name(base, sf.params, task_seeds)
            setups.append(TuneSetup(base, str(grid or DEFAULT_GRID), sf.params, task_seeds, name,
                                    storage or default_storage(results, name), trials, timeout, seed, pruner_opts,
                                    sf.sampler, resolve_root(data_root), device, Path(results)))
    preflight([s.base for s in setups], setups[0].data_root, download=download)  # data files, LLM sources
    pick_device(device)
    for url in dict.fromkeys(s.storage for s in setups):
        open_storage(url)  # connects (RDB) or creates the journal file: fail here, not in a worker
    return setups


def _seeds_option(seeds: int | str | None) -> int | None:
    """--seeds: a count >= 1, or auto/None (the default rule)."""
    if seeds is None or seeds == "auto":
        return None
    text = str(seeds).strip()
    if not text.isdigit() or int(text) < 1:
        raise BenchError(f"--seeds must be auto or a whole number >= 1, got {seeds!r}")
    return int(text)


def _make_pruner(opts: Mapping[str, Any], steps: int):
    """The per-step pruner; `steps` is a whole trial's (every epoch of every seed)."""
    opts = dict(opts)
    kind = opts.pop("type", "median")
    if kind not in PRUNERS:
        raise BenchError(f"pruner type must be one of {', '.join(PRUNERS)}, got {kind!r}")
    try:
        if kind == "median":
            return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 1, **opts})
        if kind == "hyperband":
            return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": steps, **opts})
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
    where = f"study {setup.study} in {describe_storage(setup.storage)}"
    try:
        study = optuna.create_study(storage=storage, study_name=setup.study, direction="maximize",
                                    sampler=_make_sampler(setup.sampler, setup.seed),
                                    pruner=_make_pruner(setup.pruner, setup.steps), load_if_exists=True)
    except ValueError as e:  # e.g. an existing study of the same name that minimizes
        raise BenchError(f"{where}: {one_line(e)}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise BenchError(f"{where} minimizes; use another --study")
    attrs = study.user_attrs
    if "base_run_id" in attrs and attrs.get("seeds") != list(setup.seeds):
        was = f"seeds {attrs['seeds']}" if "seeds" in attrs else "one seed per trial (an older bench tune)"
        raise BenchError(f"{where} was tuned with {was}, not seeds {list(setup.seeds)}: its trials score another "
                         "objective; match --seeds or use another --study")
    if "base_run_id" not in attrs:
        for key, value in dict(task=setup.base.data.task, variant=setup.base.label, grid=setup.grid,
                               base_run_id=run_id(setup.base), metric=METRIC, objective=OBJECTIVE,
                               seeds=list(setup.seeds), seed=setup.seed,
                               space={k: p.to_dict() for k, p in setup.space.items()}).items():
            study.set_user_attr(key, value)
    return study


# --------------------------------------------------------------------------------------- the workers

# (study name, storage trial id) of the trials this process is running (Dask runs several at once); the name
# matters: each study's journal file numbers its trials from 0
_RUNNING_HERE: set[tuple[str, int]] = set()


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_stale(study, log: Callable[[str], None] = print) -> list[int]:
    """Mark RUNNING trials whose process is gone as failed (user attr `interrupted`); their numbers."""
    host, now, failed = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        whost, _, wpid = worker.rpartition(":")
        beat = t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else now)
        mine = wpid.isdigit() and int(wpid) == os.getpid()
        here = (study.study_name, optuna_trial_id(t)) in _RUNNING_HERE
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
    """The mean over the setup's seeds of each seed's best val AUC, reporting every step (module docstring)."""
    params = {}
    for key, p in setup.space.items():
        try:
            params[key] = p.suggest(trial)
        except ValueError as e:  # the study searched this key as another kind (e.g. float, now categorical)
            raise BenchError(f"study {setup.study} already searched {key} differently ({one_line(e)}); "
                             "keep its search space or start another study with --study NAME") from None
    cfg = resolve(override(setup.base, params))
    trial.set_user_attr("run_id", run_id(cfg))  # the run `bench run --params tuned` makes of the grid's first seed
    trial.set_user_attr("seeds", list(setup.seeds))
    epochs, k = cfg.train.epochs, len(setup.seeds)
    bests, best_epochs, train_s = [], [], 0.0
    for i, seed in enumerate(setup.seeds):
        best_so_far = [-math.inf]

        def on_epoch(epoch: int, val_auc: float | None, i=i, best_so_far=best_so_far) -> None:
            if val_auc is not None and math.isfinite(val_auc):
                best_so_far[0] = max(best_so_far[0], val_auc)
            running = (sum(bests) + best_so_far[0]) / k if math.isfinite(best_so_far[0]) else math.nan
            trial.report(running, i * epochs + epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        m = fit(override(cfg, {"seed": seed}), splits, spec, device, on_epoch=on_epoch).metrics
        value = m[METRIC]
        if value is None or not math.isfinite(value):
            raise ValueError(f"best {METRIC} of seed {seed} is {value}")
        bests.append(float(value))
        best_epochs.append(m.get("best_epoch"))
        train_s += m.get("train_s") or 0.0
        trial.set_user_attr("seed_val_auc", bests)
        trial.set_user_attr("seed_best_epoch", best_epochs)
        trial.set_user_attr("train_s", train_s)
    return sum(bests) / k


def _reconnect(study, setup: TuneSetup, trial, err: BaseException, say: Callable[[str], None]) -> None:
    """The study's database connection dropped: wait until it answers again, then fail the trial that was in
    flight as interrupted (it does not count towards --trials, so the study runs another in its place)."""
    shown = describe_storage(setup.storage)
    err = connection_error(err) or err
    say(f"lost the connection to the study's storage {shown} ({one_line(err, 200)}); waiting up to "
        f"{RECONNECT_S:.0f}s for it to come back")
    storage = optuna_storage(study)
    wait_for_storage(storage, setup.study, shown, err)
    if trial is None:
        say("storage back; the study goes on")
        return
    trial_id = optuna_trial_id(trial)
    _RUNNING_HERE.discard((study.study_name, trial_id))
    try:
        storage.set_trial_user_attr(trial_id, "interrupted", f"storage connection lost: {one_line(err)}"[:500])
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        say(f"storage back; trial {trial.number}, in flight when it dropped, failed as interrupted (not counted); "
            "the study goes on")
    except (UpdateFinishedTrialError, KeyError):  # its result was stored before the drop
        say(f"storage back; trial {trial.number} was stored before the drop; the study goes on")


def work(setup: TuneSetup, tag: str = "", log: Callable[[str], None] | None = None, deadline: float | None = None,
         export_best: bool = True, stop: Callable[[], bool] | None = None) -> None:
    """Ask, train, tell until the study has `n_trials` counted trials, `deadline` (time.monotonic) passes or
    `stop()` says so; `export_best`: write the tuned file at every new best (where the results folder is seen)."""
    say = log or (lambda msg: print(msg, flush=True))
    prefix = f"[{tag + ' ' if tag else ''}{setup.name}] "
    device = pick_device(setup.device)
    spec = task_spec(setup.base.data.task, setup.base.data.size)
    splits = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = _study(setup)
        while True:
            trial = None
            try:
                fail_stale(study, lambda m: say(prefix + m))
                if deadline is not None and time.monotonic() >= deadline:
                    say(f"{prefix}timeout: no new trials")
                    break
                if (stop and stop()) or tally(study)["counted"] >= setup.n_trials:
                    break
                if splits is None:  # only a study with trials left to run loads its data
                    splits = load_splits(spec, setup.data_root, download=False, splits=("train", "val"))  # never test
                trial = study.ask()
                trial_id = optuna_trial_id(trial)
                _RUNNING_HERE.add((study.study_name, trial_id))
                trial.set_user_attr("worker", _worker_id())
                trial.set_user_attr("heartbeat", time.time())
                beat = _Heartbeat(optuna_storage(study), trial_id, HEARTBEAT_S)
                state, note = TrialState.COMPLETE, ""
                try:
                    value = _objective(setup, trial, splits, spec, device)
                except optuna.TrialPruned:
                    beat.stop()
                    state = TrialState.PRUNED
                    frozen = study.tell(trial, state=state)
                    step, running = max(frozen.intermediate_values.items(), default=(-1, math.nan))
                    seed, epoch = divmod(step, setup.base.train.epochs)
                    where = f"epoch {epoch}" + (f" of seed {setup.seeds[seed]} (step {step})" if len(setup.seeds) > 1 else "")
                    note = f"pruned after {where}, running {setup.objective} {running:.4f}"
                except BaseException as e:
                    beat.stop()
                    if connection_lost(e):  # the trial is not at fault: no verdict on it (see _reconnect)
                        raise
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
                    note = f"{setup.objective} {value:.4f}"
                finally:
                    _RUNNING_HERE.discard((study.study_name, trial_id))
                n = tally(study)
                best = best_in_budget(study, setup.n_trials)
                best_txt = f"best {setup.objective} {best.value:.4f} (trial {best.number})" if best else "no complete trial yet"
                say(f"{prefix}trial {trial.number} {note} [{_short(trial.params)}] | "
                    f"{n['done']}/{setup.n_trials} done, {best_txt}")
                if export_best and state == TrialState.COMPLETE and best is not None and best.number == trial.number:
                    export(study, setup)
            except BaseException as e:  # a dropped database connection: wait for it, then go on
                if not connection_lost(e):
                    raise
                _reconnect(study, setup, trial, e, lambda m: say(prefix + m))


# ------------------------------------------------------------------------------------------- export


def export(study, setup: TuneSetup) -> Path | None:
    """Write the budget's best parameters and their provenance; None while no trial of it is complete."""
    best = best_in_budget(study, setup.n_trials)
    if best is None:
        return None
    base = resolve(setup.base)
    params = {k: best.params[k] for k in setup.space if k in best.params}
    flat_base = flatten(base)
    flat_base.pop("label")
    in_budget = budget(study, setup.n_trials)
    count = {s: sum(t.state == s for t in in_budget) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    doc = {
        "task": base.data.task,
        "variant": base.label,
        "params": params,
        "metric": METRIC,
        "objective": OBJECTIVE,
        "seeds": list(setup.seeds),
        "best_value": best.value,
        "best_seed_val_auc": best.user_attrs.get("seed_val_auc"),
        "best_trial": best.number,
        "study": setup.study,
        "storage": describe_storage(setup.storage),
        "budget": setup.n_trials,
        "n_trials": sum(count.values()),
        "n_complete": count[TrialState.COMPLETE],
        "n_pruned": count[TrialState.PRUNED],
        "n_failed": count[TrialState.FAIL],
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


def summarise(setup: TuneSetup, write: bool = True) -> dict:
    """A study's state: trial counts, the budget's best, and (with `write`) its exported file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = _study(setup)
        best = best_in_budget(study, setup.n_trials)
        path = export(study, setup) if write else None
        return {"task": setup.base.data.task, "variant": setup.base.label, "study": setup.study,
                "storage": describe_storage(setup.storage), **tally(study), "n_trials": setup.n_trials,
                "best_value": best.value if best else None, "best_trial": best.number if best else None,
                "best_params": best.params if best else None, "export": path}
