"""Optuna studies over one variant's training hyperparameters, scored on **val** only.

    bench tune --task T --variant V [--grid G] --trials N [--timeout S] [--storage URL] [--study NAME]
               [--jobs K] [--space FILE] [--pruner median|hyperband|none] [--seed N] [--set key=value ...]

The base config is the grid's first run whose label is V, with `data.task=T` (and so the grid's first
seed); `--grid` defaults to `smoke` (offline, minutes on CPU): pass the grid you will compare with, e.g.
`--grid paper`, so the tuned values fit its epochs and model. Each trial overrides the searched dotted
keys of that base, trains on train, reports val AUC after every epoch (the pruner may stop it there)
and scores the best val AUC. The test split is never loaded: the data is read with splits=(train, val).
Trials write nothing to the run store.

Study: `--study` or `<task>__<variant>__<hash>`, the hash over the base config without the searched
fields (another base is another study). Storage: `--storage` is an Optuna RDB URL (sqlite:///f.db,
postgresql://user@host/db, ...) or a journal file path; by default `<results>/optuna/<study>.log`, a
journal file several processes on one machine share safely. The study is loaded if it exists, so a
rerun continues it: `--trials N` is the study's total (complete, pruned and failed trials of every
process, not counting trials cut short by a killed or interrupted process), so `--trials 40` after 20
adds 20, and several processes (`--jobs K`, or `bench tune` started on several machines against one
PostgreSQL URL) stop together at N (racing processes may overshoot by at most one trial each).
A trial whose process died (its pid is gone on this host, or no heartbeat for STALE_S seconds) is
marked failed, as interrupted, when a process next starts or asks for a trial.

Sampler: TPE (multivariate, constant liar for parallel workers), reseeded for every trial from
`--seed` and the trial number, so a fresh study replays exactly and a resumed or parallel one does not
redraw earlier trials' startup points. Pruner: median (default), hyperband or none, per epoch.

Search space (`--space FILE`, YAML; every key optional):

    params:                 # merged into DEFAULT_SPACE by key; null drops a key (keeps the grid's value)
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      train.batch_size: {type: categorical, choices: [32, 64, 128]}
      vit.drop_path: null
    replace: false          # true: search only the params listed here
    pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 1}   # or hyperband (min_resource, ...)
    sampler: {n_startup_trials: 10}                                  # TPESampler options

The best parameters go to `<results>/tuned/<task>__<variant>.json` (after every new best and at the
end), with their provenance; `bench run --params tuned` applies them to every run of a grid by its
task and label (`with_params`) and the stored row names the file in `params_file`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import importlib.util
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import yaml
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from bench.crashsafe import pid_alive, write_atomic
from bench.config import RunConfig, all_keys, field_types, flatten, override, resolve, run_id, to_dict
from bench.data import ensure_file, load_splits, resolve_root, task_spec
from bench.errors import BenchError
from bench.grid import Grid, grid_path, load_grid
from bench.train import fit, pick_device
from bench.upstream import optuna_storage, optuna_trial_id

DEFAULT_GRID = "smoke"
TUNED = "tuned"  # <results>/tuned/<task>__<variant>.json
OPTUNA = "optuna"  # <results>/optuna/<study>.log, the default journal storage
METRIC = "val_auc"
HEARTBEAT_S = 30.0  # a running trial stamps `heartbeat` this often
STALE_S = 600.0  # a running trial without a heartbeat for this long is taken as dead
NOT_SEARCHABLE = ("data.task", "data.size", "seed", "label", "booster.variant")  # what defines the study
PARAM_FIELDS = {"type", "low", "high", "log", "step", "choices"}
TYPES = ("float", "int", "categorical")
PRUNERS = ("median", "hyperband", "none")
FILE_KEYS = ("params", "replace", "pruner", "sampler")


@dataclass(frozen=True)
class Param:
    """One searched config key: `float`/`int` in [low, high] (optionally log or stepped), or `categorical`."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))

    def to_dict(self) -> dict:
        d = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                d["step"] = self.step
        return d


def default_space(base: RunConfig) -> dict[str, Param]:
    """Ranges for a ViT trained on MedMNIST; warmup scales with the base's epochs; lr_mult only when fine-tuning."""
    epochs = resolve(base).train.epochs
    space = [
        Param("train.lr", "float", 1e-4, 5e-3, log=True),
        Param("train.weight_decay", "float", 1e-4, 0.3, log=True),
        Param("train.warmup_epochs", "float", 0.0, round(min(10.0, max(0.5, 0.2 * epochs)), 2)),
        Param("train.batch_size", "categorical", choices=(32, 64, 128, 256)),
        Param("train.label_smoothing", "float", 0.0, 0.2),
        Param("vit.drop_path", "float", 0.0, 0.3),
        Param("train.aug", "float", 0.0, 1.5),
    ]
    if resolve(base).booster.freeze == "finetune":
        space.append(Param("booster.lr_mult", "float", 0.01, 1.0, log=True))
    return {p.key: p for p in space}


# ----------------------------------------------------------------------------------------------- space


def _field_type(key: str) -> type:
    """The Python type of a dotted config key (Optional unwrapped)."""
    cls: Any = RunConfig
    *sections, name = key.split(".")
    for s in sections:
        cls = field_types(cls)[s]
    tp = field_types(cls)[name]
    if isinstance(tp, types.UnionType):
        tp = next(a for a in tp.__args__ if a is not type(None))
    return tp


def _number(value: Any, where: str) -> float:
    """YAML reads `1e-4` (no dot) as a string: accept any number-like scalar."""
    if isinstance(value, bool):
        raise BenchError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BenchError(f"{where}: expected a number, got {value!r}") from None


def parse_param(key: str, spec: Any, base: RunConfig, where: str) -> Param:
    """Check one search-space entry against the config: the key, its type, and that every extreme resolves."""
    ctx = f"{where}: {key}"
    if key not in all_keys():
        near = difflib.get_close_matches(key, all_keys(), n=1)
        hint = f"did you mean '{near[0]}'?" if near else "use dotted config keys such as train.lr"
        raise BenchError(f"{where}: unknown parameter '{key}': {hint}")
    if key in NOT_SEARCHABLE:
        raise BenchError(f"{ctx} defines the study, it cannot be searched; use --task/--variant/--set instead")
    if not isinstance(spec, Mapping):
        raise BenchError(f"{ctx}: expected a mapping like {{type: float, low: 0.0001, high: 0.01, log: true}}, got {spec!r}")
    extra = set(spec) - PARAM_FIELDS
    if extra:
        raise BenchError(f"{ctx}: unknown field '{sorted(extra)[0]}' (fields: {', '.join(sorted(PARAM_FIELDS))})")
    kind = spec.get("type")
    if kind not in TYPES:
        raise BenchError(f"{ctx}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    ftype = _field_type(key)
    if kind == "categorical":
        choices = spec.get("choices")
        if set(spec) - {"type", "choices"}:
            raise BenchError(f"{ctx}: a categorical takes only 'choices', e.g. {{type: categorical, choices: [32, 64]}}")
        if not isinstance(choices, list) or not choices:
            raise BenchError(f"{ctx}: 'choices' must be a non-empty list")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise BenchError(f"{ctx}: choices must be scalars, got {choices!r}")
        param = Param(key, kind, choices=tuple(choices))
        extremes = list(choices)
    else:
        if ftype not in (int, float):
            raise BenchError(f"{ctx} is a {ftype.__name__} field: use type categorical with choices")
        if kind == "float" and ftype is int:
            raise BenchError(f"{ctx} is an integer field: use type int or categorical")
        if "choices" in spec or "low" not in spec or "high" not in spec:
            raise BenchError(f"{ctx}: a {kind} needs 'low' and 'high' (and no 'choices')")
        low, high = _number(spec["low"], f"{ctx}.low"), _number(spec["high"], f"{ctx}.high")
        step = None if spec.get("step") is None else _number(spec["step"], f"{ctx}.step")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise BenchError(f"{ctx}: 'log' is true or false, got {log!r}")
        if kind == "int":
            if not all(float(v).is_integer() for v in (low, high) + ((step,) if step else ())):
                raise BenchError(f"{ctx}: an int range needs integer low/high/step")
            low, high, step = int(low), int(high), None if step is None else int(step)
        if not low < high:
            raise BenchError(f"{ctx}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise BenchError(f"{ctx}: a log range needs low > 0, got {low}")
        if log and step is not None:
            raise BenchError(f"{ctx}: 'log' and 'step' cannot be combined")
        param = Param(key, kind, low, high, log=log, step=step)
        extremes = [low, high]
    for value in extremes:
        try:
            resolve(override(base, {key: value}))
        except BenchError as e:
            raise BenchError(f"{ctx}={value!r} does not fit this variant: {e}") from None
    return param


@dataclass(frozen=True)
class SpaceFile:
    params: dict[str, Param]
    pruner: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)


def load_space(path: str | Path | None, base: RunConfig) -> SpaceFile:
    """DEFAULT_SPACE, with the file's `params` merged in (or replacing it), plus pruner and sampler options."""
    space = default_space(base)
    if path is None:
        return SpaceFile(space)
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"search-space file '{path}' does not exist")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise BenchError(f"{path}: malformed YAML ({' '.join(str(e).split())})") from None
    if not isinstance(doc, Mapping):
        raise BenchError(f"{path}: a search-space file is a mapping with keys {', '.join(FILE_KEYS)}")
    for key in doc:
        if key not in FILE_KEYS:
            hint = ("parameters go under 'params:'" if key in all_keys()
                    else f"use {', '.join(FILE_KEYS)}")
            raise BenchError(f"{path}: unknown key '{key}': {hint}")
    params = doc.get("params") or {}
    if not isinstance(params, Mapping):
        raise BenchError(f"{path}: 'params' maps dotted config keys to ranges, e.g. train.lr: {{type: float, ...}}")
    replace = doc.get("replace", False)
    if not isinstance(replace, bool):
        raise BenchError(f"{path}: 'replace' is true or false")
    if replace:
        space = {}
    for key, spec in params.items():
        if spec is None:
            if key not in all_keys():
                parse_param(str(key), {}, base, str(path))  # raises the unknown-key error
            space.pop(key, None)
        else:
            space[key] = parse_param(str(key), spec, base, str(path))
    for section in ("pruner", "sampler"):
        if not isinstance(doc.get(section) or {}, Mapping):
            raise BenchError(f"{path}: '{section}' is a mapping of options")
    return SpaceFile(space, dict(doc.get("pruner") or {}), dict(doc.get("sampler") or {}))


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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def tuned_path(folder: Path, task: str, variant: str) -> Path:
    return Path(folder) / f"{_safe(task)}__{_safe(variant)}.json"


def _is_url(storage: str) -> bool:
    return "://" in storage


def describe_storage(storage: str) -> str:
    """A storage for messages and files: URLs without their password."""
    if not _is_url(storage):
        return str(storage)
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 — not a URL sqlalchemy understands; show the scheme only
        return storage.split("://", 1)[0] + "://..."


def open_storage(storage: str):
    """An Optuna storage from an RDB URL or a journal file path; connection problems -> one line."""
    shown = describe_storage(storage)
    if not _is_url(storage):
        path = Path(storage)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as e:
            raise BenchError(f"cannot open journal storage {path}: {e.strerror or e}") from None
        return optuna.storages.JournalStorage(backend)
    try:
        from sqlalchemy.engine import make_url

        url = make_url(storage)
        backend = url.get_backend_name()
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"--storage {shown!r} is not a database URL ({_one_line(e)}); "
                         "use e.g. postgresql://user@host/db, sqlite:///tune.db or a journal file path") from None
    if url.drivername == "postgresql":  # SQLAlchemy 2.1 means psycopg (3) by this; use whichever driver is installed
        driver = next((m for m in ("psycopg", "psycopg2") if importlib.util.find_spec(m)), None)
        if driver:
            storage = url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend in ("postgresql", "mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)
    except ImportError as e:
        raise BenchError(f"cannot use storage {shown}: its database driver is missing ({_one_line(e)}); "
                         "for PostgreSQL: pip install psycopg2-binary (or psycopg[binary])") from None
    except Exception as e:  # noqa: BLE001 — sqlalchemy/driver errors: refused, auth, unknown db, ...
        raise BenchError(f"cannot connect to storage {shown}: {_one_line(e)}") from None


def _one_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None)  # sqlalchemy wraps the driver's error
    text = " ".join(str(orig if orig is not None else err).split("(Background on this error")[0].split())
    return f"{type(orig or err).__name__}: {text}" if text else type(orig or err).__name__


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
    storage = storage or str(Path(results) / OPTUNA / f"{_safe(name)}.log")
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
        raise BenchError(f"pruner {kind}: {_one_line(e)}") from None


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
            raise BenchError(f"sampler: {_one_line(e)}") from None


def _study(setup: TuneSetup):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(setup.storage)
    try:
        study = optuna.create_study(storage=storage, study_name=setup.study, direction="maximize",
                                    sampler=_make_sampler(setup.sampler, setup.seed),
                                    pruner=_make_pruner(setup.pruner, setup.base.train.epochs), load_if_exists=True)
    except ValueError as e:  # e.g. an existing study of the same name that minimizes
        raise BenchError(f"study {setup.study} in {describe_storage(setup.storage)}: {_one_line(e)}") from None
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
            raise BenchError(f"study {setup.study} already searched {key} differently ({_one_line(e)}); "
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
    write_atomic(setup.export_path, (json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n").encode())
    return setup.export_path


# -------------------------------------------------------------------------------- bench run --params


def read_tuned(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{path} is not a readable tuned-params file ({_one_line(e)}): rerun bench tune") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict):
        raise BenchError(f"{path} has no 'params' mapping: it was not written by bench tune; rerun bench tune")
    return doc


def with_params(grid: Grid, params: str | None, results: Path,
                log: Callable[[str], None] | None = None) -> Grid:
    """`bench run --params tuned|DIR`: each run gets `<DIR>/<task>__<label>.json`'s params (DIR defaults to
    <results>/tuned). Every file must exist first (else one line naming them and the `bench tune` to make
    them). Each returned config names the file in `cfg.params_file` (stored in the row, not in the run id);
    the params change the config, so they change the run id."""
    if params in (None, "", "none"):
        return grid
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    folder = Path(results) / TUNED if params == TUNED else Path(params)
    if params != TUNED and not folder.is_dir():
        raise BenchError(f"--params {params}: not 'tuned' and not a directory of tuned-params files")
    need = {}
    for cfg in grid.runs:
        need.setdefault((cfg.data.task, cfg.label), tuned_path(folder, cfg.data.task, cfg.label))
    missing = [(tv, p) for tv, p in need.items() if not p.is_file()]
    if missing:
        (task, variant), _ = missing[0]
        try:
            g = grid.name if grid_path(grid.name).resolve() == Path(grid.path).resolve() else str(grid.path)
        except BenchError:
            g = str(grid.path)
        listed = ", ".join(str(p) for _, p in missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise BenchError(
            f"--params {params}: no tuned parameters for {len(missing)} task/variant(s) ({listed}); make each with "
            f"`bench tune --task {task} --variant {variant} --grid {g} --trials N --results {results}` "
            "(with the same --set options)")
    docs = {tv: read_tuned(p) for tv, p in need.items()}
    noted, runs, seen = set(), [], set()
    for cfg in grid.runs:
        tv = (cfg.data.task, cfg.label)
        doc, path = docs[tv], need[tv]
        try:
            tuned = resolve(override(cfg, doc["params"]))
        except BenchError as e:
            raise BenchError(f"{path}: {e}") from None
        if tv not in noted:
            noted.add(tv)
            skip = set(doc.get("searched", doc["params"])) | {"seed", "label"}
            have = flatten(cfg)
            diff = [k for k, v in (doc.get("base") or {}).items() if k not in skip and k in have and have[k] != v]
            if diff:
                shown = ", ".join(f"{k}={doc['base'][k]!r} (this run {have[k]!r})" for k in diff[:3])
                say(f"note: {path} was tuned with {shown}{' ...' if len(diff) > 3 else ''}")
        rid = run_id(tuned)
        if rid in seen:
            continue
        seen.add(rid)
        runs.append(dataclasses.replace(tuned, params_file=str(path)))
    return dataclasses.replace(grid, runs=runs)

