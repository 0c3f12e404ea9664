"""Which studies `bench tune` runs and what each needs: their base configs, seeds, names and setups.

Studies: one per (task, variant) of the grid (`--grid`, default `smoke`), or those `--task` / `--variant`
select; a `--task` the grid lacks takes every variant of the grid. A study's base config is the grid's
first run with that label (for that task if the grid has it), with `data.task` set; pass the grid you will
compare with, e.g. `--grid paper`, so the tuned values fit its epochs and model. Every study of a task
searches the same space (the fair rule in `bench.tune.space`) and gets the same `--trials` budget.

Seeds: K = `--seeds`; by default 3 when the task's val split has fewer than 500 images per medmnist.INFO,
else 1. They are 1000, 1001, ...: disjoint from the grids' evaluation seeds, so no final run's seed took part
in a choice.

Study name: `--study` (one study only) or `<task>__<variant>__<hash>`, the hash over the base config
without the searched fields and the seed, plus the tuning seeds (another base or K is another study),
kept in `--storage` (see `bench.tune.storage`). The study is loaded if it exists, so a rerun continues it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import ResolvedConfig, override, resolve, to_dict
from bench.data import resolve_root, task_spec
from bench.errors import BenchError
from bench.grid import Grid, load_grid
from bench.train import pick_device
from bench.tune.params import TUNED, tuned_path
from bench.tune.sampling import make_pruner, make_sampler
from bench.tune.space import Param, load_space
from bench.tune.storage import default_storage, open_storage

DEFAULT_GRID = "smoke"
METRIC = "val_auc"
OBJECTIVE = "mean over the seeds of each seed's best val AUC"
SMALL_VAL = 500  # a val split smaller than this gets SMALL_VAL_SEEDS seeds per trial by default
SMALL_VAL_SEEDS = 3
FIRST_TUNE_SEED = 1000  # trials train with seeds 1000, 1001, ...: never a grid's evaluation seed


def variants_of(grid: Grid, task: str) -> list[str]:
    """The grid's variants (labels) for `task`, in grid order; every variant when the grid lacks the task."""
    labels = [c.label for c in grid.runs if c.data.task == task] or [c.label for c in grid.runs]
    return list(dict.fromkeys(labels))


def base_config(grid: Grid, task: str, variant: str) -> ResolvedConfig:
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


def base_hash(base: ResolvedConfig, searched, seeds: Sequence[int]) -> str:
    """Hash of the resolved base config without the searched fields (and the label, params file and seed),
    plus the tuning seeds."""
    d = to_dict(base)
    for key in ("label", "params_file", "seed"):
        d.pop(key)
    for key in searched:
        _drop(d, key)
    d["tune_seeds"] = list(seeds)
    return hashlib.sha1(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def study_name(base: ResolvedConfig, searched, seeds: Sequence[int]) -> str:
    return f"{base.data.task}__{base.label}__{base_hash(base, searched, seeds)}"



@dataclass(frozen=True)
class TuneSetup:
    """Everything a worker process needs for one study (picklable)."""

    base: ResolvedConfig
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
            make_pruner(pruner_opts, len(task_seeds) * base.train.epochs)  # validate now
            make_sampler(sf.sampler, seed)
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
