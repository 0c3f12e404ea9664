"""The report's "Tuned vs default" section: for each task and variant, the test metrics of the grid's
default config and of its tuned one (the runs `bench run --params tuned` stored), paired over seeds, and
whether tuning changed the ranking of the variants.

Pairing: a tuned run (its row's `params_file` names a tuned-params file) pairs with the ok default run (no
params file) of the same label whose config is the tuned run's with the searched fields (the file's
`searched`) set back: same data, model, training settings and seed. When the file cannot be read any more,
the one default run of that label, task, size and seed pairs with it, and none when there are several.
Δ is tuned − default per seed (each seed's value first averaged over the label's runs, as in the summary),
with a paired-t 95% CI; p is adjusted with Benjamini–Hochberg over this section's comparisons. A variant's
rank is its place among the task's tuned variants by mean test metric over its paired seeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import all_keys, from_flat, override, run_id
from bench.errors import BenchError
from bench.report import engine
from bench.report.stats import METRICS
from bench.report.tables import MISSING, NAMES, Section, Table, fmt_delta, fmt_p, fmt_stat, label_order, row_name
from bench.store import read_runs

CONFIG_KEYS = set(all_keys())
INTRO = ("Each tuned run (trained with `bench run --params tuned`) next to the default run of its grid: same "
         "variant, data, model, schedule and seed, only the searched hyperparameters differ. Δ = tuned − default "
         "per seed, mean [paired-t 95% CI]; p BH is Benjamini–Hochberg over this section. Tuning chose on val "
         "only; these are test metrics, evaluated once per run.")
GROUP = ["task", "size", "label"]


def tuned_section(results: Path, grid: pd.DataFrame, metric: str = "auc") -> Section | None:
    """The section for the default runs of `grid` (the report's rows) and the tuned runs of the store
    that pair with them; None when no stored run was trained with tuned parameters."""
    runs = read_runs(results)
    tuned = runs[(runs["status"] == "ok") & _has_file(runs)]
    if tuned.empty:
        return None
    defaults = grid[(grid["status"] == "ok") & ~_has_file(grid)]
    docs = {f: _read_doc(Path(results), f) for f in tuned["params_file"].unique()}
    paired = _pairs(_labelled(tuned), _labelled(defaults), docs)
    blocks: list = [INTRO]
    if paired.empty:
        blocks.append(f"{len(tuned)} tuned runs are stored, but none has an ok default run of this report to pair "
                      "with: run the grid without --params too.")
        return Section("Tuned vs default", blocks)
    table = _comparison(paired, metric)
    order = label_order(grid["label"])
    table = table.sort_values(["task", "size", "label"], key=lambda c: c.map(order.index) if c.name == "label" else c)
    blocks += [_table(table, metric), *_rankings(table, metric), _budgets(docs, set(paired["params_file"]))]
    return Section("Tuned vs default", blocks)


def _has_file(rows: pd.DataFrame) -> pd.Series:
    if "params_file" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["params_file"].fillna("").astype(str) != ""


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    label = rows["label"].fillna("").astype(str)
    return rows.assign(label=label.where(label != "", rows["booster.variant"]))


def _read_doc(results: Path, params_file: str) -> dict | None:
    """The tuned-params file a row names (as written, or under <results>/tuned); None when it is gone."""
    for path in (Path(params_file), results / "tuned" / Path(params_file).name):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("searched", doc.get("params")), (list, dict)):
            return doc
    return None


def _config(row: pd.Series):
    return from_flat({k: v for k, v in row.items() if k in CONFIG_KEYS and not _missing(v)})


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _pairs(tuned: pd.DataFrame, defaults: pd.DataFrame, docs: dict) -> pd.DataFrame:
    """One row per tuned run with its default run's test metrics (tuned runs without a default are left out)."""
    by_cell = {key: grp for key, grp in defaults.groupby(GROUP + ["seed"])}
    rows = []
    for _, t in tuned.iterrows():
        candidates = by_cell.get((t["task"], t["size"], t["label"], t["seed"]))
        if candidates is None:
            continue
        doc = docs[t["params_file"]]
        match = None
        if doc is None:
            match = candidates.iloc[0] if len(candidates) == 1 else None
        else:
            searched = list(doc.get("searched") or doc["params"])
            cfg = _config(t)
            for _, d in candidates.iterrows():
                try:
                    back = run_id(override(cfg, {k: d[k] for k in searched if not _missing(d[k])}))
                except BenchError:
                    continue
                if back == d["run_id"]:
                    match = d
                    break
        if match is None:
            continue
        row = {**{k: t[k] for k in GROUP + ["seed", "params_file"]}, "run_id": t["run_id"],
               "run_id_default": match["run_id"]}
        for col in METRICS.values():
            row[f"{col}_tuned"], row[f"{col}_default"] = t[col], match[col]
        rows.append(row)
    return pd.DataFrame(rows)


def _comparison(paired: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per task and variant: default and tuned mean/std over the paired seeds, paired Δ, p, p BH, ranks."""
    cols = [f"{c}_{side}" for c in METRICS.values() for side in ("tuned", "default")]
    per_seed = paired.groupby(GROUP + ["seed"], sort=True)[cols].mean()
    out = []
    for key, grp in per_seed.groupby(level=GROUP, sort=True):
        rec = dict(zip(GROUP, key))
        for m, col in METRICS.items():
            both = grp[[f"{col}_tuned", f"{col}_default"]].dropna().to_numpy(float)
            for side, j in (("tuned", 0), ("default", 1)):
                rec[f"{m}_{side}_mean"] = both[:, j].mean() if len(both) else np.nan
                rec[f"{m}_{side}_std"] = both[:, j].std(ddof=1) if len(both) > 1 else np.nan
            res = engine.paired(both[:, 0], both[:, 1])
            rec.update({f"delta_{m}_{k}": v for k, v in res.items()})
        out.append(rec)
    table = pd.DataFrame(out)
    p = np.concatenate([table[f"delta_{m}_p"].to_numpy(float) for m in METRICS])
    adjusted = engine.bh(p)
    for i, m in enumerate(METRICS):
        table[f"delta_{m}_p_bh"] = adjusted[i * len(table):(i + 1) * len(table)]
    for side in ("default", "tuned"):  # 1 = best; ties share the better rank
        table[f"rank_{side}"] = table.groupby(["task", "size"])[f"{metric}_{side}_mean"].rank(
            ascending=False, method="min").astype("Int64")
    return table


def _table(table: pd.DataFrame, metric: str) -> Table:
    rows = []
    for r in table.to_dict("records"):
        row = {"task · size": row_name(r["task"], r["size"]), "variant": r["label"], "seeds": str(r[f"delta_{metric}_n_pairs"])}
        for m, name in NAMES.items():
            n = r[f"delta_{m}_n_pairs"]
            row[f"default {name}"] = fmt_stat(r[f"{m}_default_mean"], r[f"{m}_default_std"], n)
            row[f"tuned {name}"] = fmt_stat(r[f"{m}_tuned_mean"], r[f"{m}_tuned_std"], n)
            row[f"Δ{name} [95% CI]"] = fmt_delta(r[f"delta_{m}_mean"], r[f"delta_{m}_ci_low"], r[f"delta_{m}_ci_high"])
            row[f"p BH ({name})"] = fmt_p(r[f"delta_{m}_p_bh"])
        ranks = [r["rank_default"], r["rank_tuned"]]
        row[f"rank by {NAMES[metric]}: default → tuned"] = " → ".join(MISSING if pd.isna(x) else str(x) for x in ranks)
        rows.append(row)
    return Table(f"Tuned vs default: test metrics over the paired seeds (rank by {NAMES[metric]}, 1 = best)",
                 pd.DataFrame(rows), note="seeds = seeds with an ok tuned and an ok default run.")


def _rankings(table: pd.DataFrame, metric: str) -> list[str]:
    """One line per task with two or more tuned variants: the order by default and by tuned metric."""
    lines = []
    for (task, size), grp in table.groupby(["task", "size"], sort=True):
        if len(grp) < 2:
            continue
        order = {side: " > ".join(grp.sort_values(f"{metric}_{side}_mean", ascending=False, kind="stable")["label"])
                 for side in ("default", "tuned")}
        verdict = "unchanged" if order["default"] == order["tuned"] else "changed"
        lines.append(f"{row_name(task, size)}: ranking by test {NAMES[metric]} {verdict} by tuning: default "
                     f"{order['default']}; tuned {order['tuned']}.")
    return lines


def _budgets(docs: dict, used: set) -> Table:
    """The search budget behind each tuned file (trials done / asked for, seeds per trial), so unequal budgets
    between the variants of a task show."""
    rows = []
    for path in sorted(used):
        doc = docs.get(path)
        if doc is None:
            rows.append({"task": MISSING, "variant": MISSING, "trials": MISSING, "seeds per trial": MISSING,
                         "best val objective": MISSING, "file": f"{path} (not readable)"})
            continue
        rows.append({"task": str(doc.get("task")), "variant": str(doc.get("variant")),
                     "trials": f"{doc.get('n_trials')}/{doc.get('budget', doc.get('n_trials'))}",
                     "seeds per trial": str(len(doc.get("seeds") or [None])),
                     "best val objective": f"{doc['best_value']:.4f}" if doc.get("best_value") is not None else MISSING,
                     "file": str(path)})
    df = pd.DataFrame(rows)
    known = df[df["task"] != MISSING]
    unequal = [t for t, g in known.groupby("task") if g[["trials", "seeds per trial"]].drop_duplicates().shape[0] > 1]
    note = (f"Unequal search budgets between the variants of {', '.join(unequal)}: their comparison is not fair."
            if unequal else "Every variant of a task had the same search budget.")
    return Table("Search budget of each tuned file", df, note=note)
