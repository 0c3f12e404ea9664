"""Statistics over ok runs: per-cell mean ± sample std, paired deltas vs baseline, BH adjustment.

Pure pandas/scipy, no files and no drawing, so every number in a report can be checked in a test.
A cell is (task, size, setting, label) and its statistics are over seeds: when a label spans several
runs per seed (e.g. a grid crossing LLMs and layers under one label), each seed's value is first the
mean of those runs, so seeds, not runs, are the replicates. A delta pairs each variant run with the
baseline run that shares its data/vit/train settings and seed (see `pairs`); the tests are
`bench.report.engine`'s.
"""

from __future__ import annotations

import pandas as pd

from bench.config import RLLM_DEFAULTS
from bench.models.registry import baselines, layer_variants
from bench.report.collect import pair_keys
from bench.report import engine

METRICS = {"acc": "test_acc", "auc": "test_auc"}
CELL = ["task", "size", "setting", "label"]
ROW = ["task", "size", "setting"]
KNOBS = {f"booster.{k}": v for k, v in RLLM_DEFAULTS.items()}
# Ablation axes: column -> title. The LLM axis uses the derived `llm` column (llm.source, else booster.source).
AXES = {**{k: k.split(".")[1] for k in KNOBS}, "llm.layers": "LLM layer index", "llm": "LLM"}


def seed_means(runs: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Per cell and seed: the mean of `cols` over that seed's runs (one run, unless the label spans several)."""
    return runs.groupby(CELL + ["seed"], sort=True)[cols].mean()


def cell_stats(ok: pd.DataFrame) -> pd.DataFrame:
    """n (seeds), mean and sample std over seeds (ddof=1; missing for n=1) of each test metric per cell."""
    g = seed_means(ok, list(METRICS.values())).groupby(level=CELL, sort=True)
    parts = [g[col].agg(["count", "mean", "std"]).set_axis([f"{m}_n", f"{m}_mean", f"{m}_std"], axis=1)
             for m, col in METRICS.items()]
    return pd.concat(parts, axis=1)


def best_cells(cells: pd.DataFrame, metric: str) -> pd.Series:
    """True for the label(s) with the highest mean in each (task, size, setting) row."""
    means = cells[f"{metric}_mean"]
    top = means.groupby(level=ROW).transform("max")
    return means.notna() & (means == top)


def pairs(ok: pd.DataFrame) -> pd.DataFrame:
    """Each ok variant run next to its ok baseline: same data.*, vit.*, train.* and seed.

    Columns: the variant's cell, seed, run ids and `<metric>` / `<metric>_base` for each metric.
    Variant runs whose baseline is missing or failed simply have no pair.
    """
    keys = pair_keys(ok.columns)
    arm = ["arm"] if "arm" in ok.columns else []
    is_base = ok["booster.variant"].isin(baselines())
    base = ok.loc[is_base, keys + ["run_id", *METRICS.values()]].drop_duplicates(keys)
    var = ok.loc[~is_base, list(dict.fromkeys(CELL + arm + keys)) + ["run_id", *METRICS.values()]]
    merged = var.merge(base, on=keys, how="inner", suffixes=("", "_base"))
    return merged[CELL + arm + ["seed", "run_id", "run_id_base"]
                  + [c for m in METRICS.values() for c in (m, f"{m}_base")]]


def deltas(paired: pd.DataFrame) -> pd.DataFrame:
    """Per variant cell and metric: n_pairs (seeds), mean, ci_low, ci_high, p, p_bh (columns delta_<m>_*)."""
    rows = []
    for m, col in METRICS.items():
        both = paired.dropna(subset=[col, f"{col}_base"])
        per_seed = seed_means(both, [col, f"{col}_base"])
        for cell, grp in per_seed.groupby(level=CELL, sort=True):
            res = engine.paired(grp[col].to_numpy(float), grp[f"{col}_base"].to_numpy(float))
            rows.append({**dict(zip(CELL, cell)), **{f"delta_{m}_{k}": v for k, v in res.items()}})
    cols = [f"delta_{m}_{k}" for m in METRICS for k in ("n_pairs", "mean", "ci_low", "ci_high", "p")]
    out = pd.DataFrame(rows, columns=CELL + cols).groupby(CELL, sort=True).first()
    return bh_adjust(out.reindex(columns=cols))


def bh_adjust(d: pd.DataFrame) -> pd.DataFrame:
    """Benjamini–Hochberg per metric: ACC's p-values are one family, AUC's another (all rows of the table)."""
    d = d.copy()
    for m in METRICS:
        d[f"delta_{m}_p_bh"] = engine.bh(d[f"delta_{m}_p"].to_numpy(float))
    return d


def ablation_runs(ok: pd.DataFrame, axis: str) -> pd.DataFrame | None:
    """The ok rllm runs that differ only in `axis`; None when the axis takes fewer than two values.

    Other LLM knobs are held at the R-LLM defaults; knob axes also hold the LLM, its layer and block
    length at the one combination where the axis was swept most; the layer axis keeps LLMs run at two
    or more layers (compared per LLM); the LLM axis holds the configured layer and block length.
    """
    runs = ok[ok["booster.variant"].isin(layer_variants())]
    for knob, default in KNOBS.items():
        if knob != axis and knob in runs.columns:
            runs = runs[runs[knob].astype(str) == str(default)]
    runs = runs[runs[axis].notna()]
    if axis in KNOBS:
        runs = _hold(runs, ["llm", "booster.layer", "booster.num_layers"], axis)
    elif axis == "llm":
        runs = _hold(runs, ["booster.layer", "booster.num_layers"], axis)
    elif axis == "llm.layers":  # a layer sweep needs two layers of the same LLM
        runs = _hold(runs, ["booster.num_layers"], axis)
        runs = runs[runs.groupby("llm")[axis].transform(lambda s: s.astype(str).nunique()) > 1]
    return runs if runs[axis].astype(str).nunique() >= 2 else None


def _hold(runs: pd.DataFrame, cols: list[str], axis: str) -> pd.DataFrame:
    """Keep one combination of `cols`: the one where `axis` takes the most values, then the most runs."""
    cols = [c for c in cols if c in runs.columns]
    if runs.empty or not cols:
        return runs
    key = runs[cols[0]].astype(str)
    for c in cols[1:]:
        key = key + "|" + runs[c].astype(str)
    spread = runs.groupby(key)[axis].agg(lambda s: (s.astype(str).nunique(), len(s)))
    return runs[key == spread.sort_values(ascending=False, kind="stable").index[0]]


def first_layer(layers: pd.Series) -> pd.Series:
    """'30,31' -> 30: the x position of a layer block on a layer-index curve."""
    return pd.to_numeric(layers.astype(str).str.split(",").str[0], errors="coerce")


NAMED_LAYERS = {"first": 0.0, "middle": 0.5, "last": 1.0}


def layer_position(layers: pd.Series) -> pd.Series:
    """Sort key of layer blocks: the first index, or first < middle < last for named positions."""
    first = layers.astype(str).str.split(",").str[0]
    return pd.to_numeric(first, errors="coerce").fillna(first.map(NAMED_LAYERS))


def summary(grid: pd.DataFrame) -> pd.DataFrame:
    """The summary.csv table: one row per planned cell with run counts, stats, best flags and deltas.

    Cells with no ok run keep NaN statistics (missing, never zero); baseline rows have no delta; a
    variant cell without any ok pair has delta_<m>_n_pairs = 0 and NaN elsewhere.
    """
    counts = grid.groupby(CELL, sort=True)["status"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=["ok", "failed", "missing"], fill_value=0)
    counts.insert(0, "planned", counts.sum(axis=1))
    variant = grid.groupby(CELL, sort=True)["booster.variant"].first()
    ok = grid[grid["status"] == "ok"]
    cells = cell_stats(ok).reindex(counts.index)
    for m in METRICS:
        cells[f"{m}_n"] = cells[f"{m}_n"].fillna(0).astype(int)
        cells[f"best_{m}"] = best_cells(cells, m)
    out = counts.join(variant).join(cells).join(deltas(pairs(ok)))
    for m in METRICS:
        n = f"delta_{m}_n_pairs"
        out[n] = out[n].where(out["booster.variant"].isin(baselines()), out[n].fillna(0)).astype("Int64")
    return out.reset_index()
