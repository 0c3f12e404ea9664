"""The grid as one table: every planned run with its status (ok | failed | missing) and its stored row.

A report is about a grid, so runs that were planned but never stored must stay visible as missing
rather than disappear; runs in the store that the grid did not plan are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from bench.config import RunConfig, added_defaults, all_keys, flatten, run_id
from bench.errors import BenchError
from bench.grid import Grid
from bench.models.registry import baselines
from bench.store import check_predictions, read_runs

SECTIONS = ("data", "vit", "booster", "train")

# Settings that define the comparison (pairing and table rows); booster.* is what the variants change.
SETTING_PREFIXES = ("data.", "vit.", "train.")
# ...except the starting checkpoint, which is the variant's in the paper: baseline from ViT-Small, R-LLM from
# ViT-Small-LLaMA (LM4VisualEncoding), one recipe; a variant pairs with its baseline across the two files.
VARIANT_START = ("vit.checkpoint", "vit.checkpoint_sha256")
NEEDED = ["status", "error", "label", "task", "size", "seed", "booster.variant", "test_acc", "test_auc",
          "llm.source", "llm.layers", "llm.params", "booster.source"]


def expected_runs(configs: Iterable[RunConfig] | Grid) -> pd.DataFrame:
    """The planned runs of a grid as rows: run_id, label, task, size, seed and every config field.

    Pass the Grid itself when you have it: its expansion already knows every run id (8,154 runs of `full`:
    a second instead of half a minute of re-resolving configs).
    """
    if isinstance(configs, Grid):
        configs, ids = configs.runs, configs.run_ids()
    else:
        configs = list(configs)
        ids = [run_id(c) for c in configs]
    sections: dict = {}
    rows = []
    for cfg, rid in zip(configs, ids):
        flat = {}
        for name in SECTIONS:  # grid runs share their section objects: flatten each distinct one once
            part = getattr(cfg, name)
            if part not in sections:
                sections[part] = {k: v for k, v in flatten(RunConfig(**{name: part})).items() if k.startswith(name + ".")}
            flat.update(sections[part])
        rows.append({"run_id": rid, "label": cfg.label or cfg.booster.variant, "task": cfg.data.task,
                     "size": cfg.data.size, "seed": cfg.seed, **flat,
                     **{k: getattr(cfg, k) for k in ("params_file", "save_weights")}})
    return pd.DataFrame(rows)


def _with_added_defaults(runs: pd.DataFrame) -> pd.DataFrame:
    flat = flatten(RunConfig())
    for key in added_defaults():
        if flat[key] is not None and key in runs.columns and runs[key].isna().any():
            runs[key] = runs[key].fillna(flat[key])
    return runs


def collect(results: Path, expected: pd.DataFrame | None) -> pd.DataFrame:
    """One row per planned run (unique run_id); stored values win, the plan fills in missing runs. A config field
    added after a run was stored reads as its default there: the run did what the default does (the rule that
    keeps such fields out of the run id), so settings do not split on a missing value."""
    runs = _with_added_defaults(read_runs(results))
    if expected is None:
        if runs.empty:
            raise BenchError(f"no runs stored under {Path(results) / 'runs'}: "
                             "run a grid first or pass the right --results")
        grid = runs.drop_duplicates("run_id").reset_index(drop=True)
    else:
        if "run_id" not in expected.columns or expected.empty:
            raise BenchError("the expected runs need a run_id column and at least one row "
                             "(see bench.report.expected_runs)")
        plan = expected.drop_duplicates("run_id").set_index("run_id")
        stored = runs.set_index("run_id") if not runs.empty else pd.DataFrame(index=pd.Index([], name="run_id"))
        have = plan.index.intersection(stored.index)
        if have.empty:
            raise BenchError(f"none of the {len(plan)} planned runs is stored under {Path(results) / 'runs'}: "
                             "run the grid first or pass the right --results")
        # Stored rows as written (dtypes intact); planned-only rows from the plan, marked missing below.
        grid = pd.concat([stored.loc[have], plan.drop(index=have)]).reindex(plan.index)
        if "label" in plan.columns:  # the grid's name for the variant wins over a stored empty label
            named = plan["label"].fillna("").astype(str) != ""
            grid.loc[named, "label"] = plan.loc[named, "label"]
        grid = grid.reset_index()
    check_predictions(results, grid.loc[grid["status"] == "ok", "run_id"])  # a corrupt one: warned, set aside
    grid = _normalise(grid)
    return grid.assign(single_class=single_class(results, grid))


def single_class(results: Path, grid: pd.DataFrame) -> pd.Series:
    """Per row: whether the ok run's stored test predictions are all one class (`bench.store.single_class`); NaN
    for runs that are not ok or have no predictions."""
    from bench.data.info import info
    from bench.store import single_class as one_class

    out = pd.Series(np.nan, index=grid.index, dtype=object)
    for i, rid, status, task in zip(grid.index, grid["run_id"], grid["status"], grid["task"]):
        if status == "ok":
            flag = one_class(Path(results), rid, info().get(task, {}).get("task", "binary-class"))
            out[i] = np.nan if flag is None else flag
    return out


def _normalise(grid: pd.DataFrame) -> pd.DataFrame:
    grid = grid.copy()
    for col in NEEDED:
        if col not in grid.columns:
            grid[col] = np.nan
    grid["status"] = grid["status"].fillna("missing")
    grid["booster.variant"] = grid["booster.variant"].fillna("baseline")
    label = grid["label"].fillna("").astype(str)
    grid["label"] = label.where(label != "", grid["booster.variant"])
    for short, full in (("task", "data.task"), ("size", "data.size")):
        if full in grid.columns:
            grid[short] = grid[short].fillna(grid[full])
    grid["size"] = pd.to_numeric(grid["size"], errors="coerce").astype("Int64")
    grid["seed"] = pd.to_numeric(grid["seed"], errors="coerce").astype("Int64")
    for col in ("test_acc", "test_auc", "llm.params"):
        grid[col] = pd.to_numeric(grid[col], errors="coerce")
    # LLM identity: the resolved provenance when the run recorded it, else the configured source.
    grid["llm"] = grid["llm.source"].where(grid["llm.source"].notna(), grid["booster.source"])
    grid.loc[grid["booster.variant"].isin(baselines()), "llm"] = np.nan
    grid["setting"] = _setting(grid)
    return grid


def _setting(grid: pd.DataFrame) -> pd.Series:
    """'vit.arch=small, train.epochs=100' for the data/vit/train fields that vary within a task and size.

    Task and size are table rows already; any other setting that differs between runs of one task and size
    becomes part of the row, so runs trained differently are never averaged together. A field that differs
    only between tasks (`full`'s 2D recipe vs its 3D one) separates nothing and stays out of the row's name.
    Empty when nothing else varies.
    """
    keys = [k for k in all_keys() if k.startswith(SETTING_PREFIXES) and k in grid.columns and k not in VARIANT_START
            and k not in ("data.task", "data.size") and grid[k].astype(str).nunique(dropna=False) > 1]
    shown = {k: grid[k].map(_text) for k in keys}
    task_size = [grid["task"], grid["size"]]
    keys = [k for k in keys if shown[k].groupby(task_size).nunique().max() > 1]
    if not keys:
        return pd.Series("", index=grid.index)
    text = pd.Series("", index=grid.index)
    for i, k in enumerate(keys):
        text = text + ("" if i == 0 else ", ") + f"{k}=" + shown[k]
    return text


def _text(value) -> str:
    """A setting as text that does not depend on how it was stored (1 and 1.0 read the same)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return f"{float(value):g}"
    return str(value)


def pair_keys(columns: Iterable[str]) -> list[str]:
    """The columns a variant run and its baseline must share: data.*, vit.*, train.* (not the starting checkpoint:
    VARIANT_START) and the seed."""
    columns = set(columns)
    return [k for k in all_keys() if k.startswith(SETTING_PREFIXES) and k in columns and k not in VARIANT_START
            ] + ["seed"]
