"""The tuned-params files: `<results>/tuned/<task>__<variant>.json`, written by `bench tune`, applied by
`bench run --params tuned|DIR`.

Each file holds the best parameters of one task and variant with their provenance (study, storage,
trial counts, searched space, base config). `bench run --params tuned` applies them to every run of a
grid by its task and label (`with_params`), and the stored row names the file in `params_file`.
This module must not import optuna, directly or through another module: running a grid does not need it
(tests/test_tune.py runs `bench run --params tuned` with optuna blocked).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

from bench.config import flatten, override, resolve, run_id
from bench.crashsafe import write_atomic
from bench.errors import BenchError, one_line
from bench.grid import Grid, grid_path
from bench.tune import safe_name

TUNED = "tuned"  # <results>/tuned/<task>__<variant>.json


def tuned_path(folder: Path, task: str, variant: str) -> Path:
    return Path(folder) / f"{safe_name(task)}__{safe_name(variant)}.json"


def write_tuned(path: Path, doc: dict) -> None:
    """Write one tuned-params file whole or not at all."""
    write_atomic(path, (json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_tuned(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{path} is not a readable tuned-params file ({one_line(e)}): rerun bench tune") from None
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
        which = f"--task {task} --variant {variant} " if len(missing) == 1 else ""
        raise BenchError(
            f"--params {params}: no tuned parameters for {len(missing)} task/variant(s) ({listed}); make "
            f"{'it' if len(missing) == 1 else 'them all'} with `bench tune --grid {g} {which}--trials N --results "
            f"{results}` (with the same --set options; studies already done add no trials)")
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
