"""Paired effects per cell: every (task, size, setting, variant, LLM, layer, ...) against its own baseline.

An arm is one variant configuration: the label plus the booster settings (LLM, layer, knobs) that vary
among the runs of that label, so a label crossing LLMs and layers gives one arm per combination and
nothing is averaged over LLMs or layers. Each arm's run of seed s is paired with the baseline run of the
same data/vit/train settings and seed s. Per arm and metric: the paired-t interval over seeds, its p
(Benjamini–Hochberg within the metric's family), the minimum detectable effect, and the paired bootstrap
over seeds and test images (`bench.report.bootstrap`) from the stored predictions.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from bench.config import all_keys
from bench.report import bootstrap
from bench.report.stats import CELL, METRICS, ROW, bh_adjust_family, pairs

ARM = CELL + ["arm"]
ALPHA, POWER = 0.05, 0.8
BOOTSTRAP_ROWS_PER_JOB = 8  # fewer bootstrap rows per worker process than this: not worth starting the processes


def add_arms(ok: pd.DataFrame) -> pd.DataFrame:
    """`arm`: 'source=X, layer=last' from the booster fields that vary among a label's runs ('' if none)."""
    keys = [k for k in all_keys() if k.startswith("booster.") and k != "booster.variant" and k in ok.columns]
    if ok.empty:
        return ok.assign(arm="")
    shown = pd.DataFrame({k: ok[k].astype(object).where(ok[k].notna(), "").astype(str).map(_short) for k in keys})
    varies = shown.groupby([ok[c] for c in CELL], sort=False, dropna=False).transform("nunique") > 1
    arm = pd.Series("", index=ok.index)
    for k in keys:
        part = (f"{k.split('.', 1)[1]}=" + shown[k]).where(varies[k], "")
        arm = arm.where((arm == "") | (part == ""), arm + ", ") + part
    return ok.assign(arm=arm)


def _short(value: str) -> str:
    """A local folder as its name (tests' tiny LLMs live in long temp paths); hub ids stay whole."""
    return Path(value).name if value.startswith("/") else value


@functools.cache
def mde_factor(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """δ/sd that a two-sided paired t-test with n pairs detects with `power` (noncentral t); NaN for n < 2."""
    if n < 2:
        return np.nan
    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def short(d):  # power at standardised effect d, minus the target
        nc = d * np.sqrt(n)
        lower = np.nan_to_num(stats.nct.cdf(-crit, df, nc))  # ~0 for large nc, where scipy can give NaN
        return stats.nct.sf(crit, df, nc) + lower - power

    high = 1.0
    while short(high) < 0:  # power grows with the effect: double until it reaches the target
        high *= 2
    return optimize.brentq(short, 0.0, high, xtol=1e-12)


def paired_summary(d: pd.DataFrame, keys: list[str], col: str) -> pd.DataFrame:
    """n, mean, sd, paired-t 95% CI, p and MDE of the per-seed differences `col`, grouped by `keys`.

    Vectorised closed forms of scipy.stats.ttest_rel; CI and p missing for n < 2 or identical differences.
    """
    g = d.groupby(keys, sort=True)[col]
    out = pd.DataFrame({"n": g.count(), "mean": g.mean(), "sd": g.std(ddof=1)})
    out.loc[out["n"] == 0, "mean"] = np.nan
    spread = (g.max() - g.min()) > 1e-12
    se = out["sd"] / np.sqrt(out["n"])
    df = (out["n"] - 1).clip(lower=1)
    half = stats.t.ppf(0.975, df) * se
    usable = (out["n"] >= 2) & spread
    out["ci_low"] = (out["mean"] - half).where(usable)
    out["ci_high"] = (out["mean"] + half).where(usable)
    out["p"] = pd.Series(2 * stats.t.sf(np.abs(out["mean"] / se), df), index=out.index).where(usable)
    out["mde"] = (out["n"].map(mde_factor) * out["sd"]).where(out["n"] >= 2)
    return out


def cell_effects(ok: pd.DataFrame, results: Path | None = None, replicates: int = bootstrap.REPLICATES) -> pd.DataFrame:
    """One row per arm (index ARM): for each metric m, m_n, m_mean, m_sd, m_ci_low, m_ci_high, m_p, m_p_bh,
    m_mde, and with `results` the bootstrap interval m_boot_low, m_boot_high; `seeds`, the paired seeds."""
    paired = pairs(ok)
    parts = []
    for m, col in METRICS.items():
        both = paired.dropna(subset=[col, f"{col}_base"])
        per_seed = both.groupby(ARM + ["seed"], sort=True)[[col, f"{col}_base"]].mean()
        per_seed["d"] = per_seed[col] - per_seed[f"{col}_base"]
        parts.append(paired_summary(per_seed.reset_index(), ARM, "d").add_prefix(f"{m}_"))
    out = pd.concat(parts, axis=1)
    for m in METRICS:
        out[f"{m}_n"] = out[f"{m}_n"].fillna(0).astype(int)
    out = bh_adjust_family(out, "{m}_p", "{m}_p_bh")
    out["seeds"] = paired.groupby(ARM, sort=True)["seed"].agg(lambda s: tuple(sorted(set(int(x) for x in s))))
    if results is not None:
        out = out.join(_bootstrap(results, paired, out, replicates))
    return out


def _bootstrap(results: Path, paired: pd.DataFrame, effects: pd.DataFrame, replicates: int) -> pd.DataFrame:
    """The seeds × images paired bootstrap for every arm with ≥ 2 paired seeds; reads only their predictions.

    Rows (task, size, setting, seed set) are independent: on a big store they spread over the CPU cores, each
    job reading its own runs' predictions (8,154 runs of `full`: about half the report's time on one core)."""
    from joblib import Parallel, delayed

    from bench.data.info import info

    cols = [f"{m}_boot_{k}" for m in METRICS for k in ("low", "high")]
    todo = effects[effects["seeds"].map(len) >= 2]
    by_run = paired.drop_duplicates(ARM + ["seed"]).set_index(ARM + ["seed"])
    rows_of = pd.Series([k[:len(ROW)] for k in todo.index], index=todo.index)
    jobs = []
    for (row, seeds), grp in todo.groupby([rows_of, todo["seeds"]], sort=True):
        task_type = info()[row[0]]["task"] if row[0] in info() else bootstrap.BINARY
        base = [by_run.loc[(*grp.index[0], s), "run_id_base"] for s in seeds]
        arms = {key: [by_run.loc[(*key, s), "run_id"] for s in seeds] for key in grp.index}
        jobs.append(delayed(_row_bootstrap)(results, task_type, base, arms, "|".join(map(str, (*row, seeds))),
                                            replicates))
    n_jobs = min(os.cpu_count() or 1, len(jobs) // BOOTSTRAP_ROWS_PER_JOB) or 1
    found: dict = {}
    for part in Parallel(n_jobs=n_jobs)(jobs):
        found.update(part)
    return pd.DataFrame.from_dict(found, orient="index", columns=cols).reindex(effects.index)


def _row_bootstrap(results: Path, task_type: str, base_ids: list[str], arm_ids: dict, key: str,
                   replicates: int) -> dict:
    """{arm: [acc low, acc high, auc low, auc high]} for one row's arms; arms without usable predictions (or whose
    test set differs in size from their baseline's) get none, and so does every arm if a baseline has none."""
    from bench.store import read_predictions

    def scorer(run_id: str):
        try:
            p = read_predictions(results, run_id)
            return bootstrap.Scorer.of(task_type, p["y_true"], p["y_score"])
        except (OSError, KeyError, ValueError, IndexError):  # no usable predictions (or not of this task)
            return None

    base = [scorer(r) for r in base_ids]
    arms = {arm: [scorer(r) for r in ids] for arm, ids in arm_ids.items()}
    arms = {k: v for k, v in arms.items() if all(x is not None for x in v)}
    sizes = {len(x.correct) for v in [base, *arms.values()] for x in v if x is not None}
    if not arms or any(x is None for x in base) or len(sizes) != 1:
        return {}
    reps = bootstrap.paired_bootstrap(base, arms, bootstrap.rng_for(key), replicates)
    return {arm: [v for m in METRICS for v in bootstrap.interval(r[m])] for arm, r in reps.items()}


def axis_deltas(runs: pd.DataFrame, ok: pd.DataFrame, axis: str, metric: str) -> pd.DataFrame:
    """Paired Δ (run − its baseline) per task row (and LLM for the layer axis) and value of `axis`."""
    col = METRICS[metric]
    paired = pairs(ok[ok["run_id"].isin(runs["run_id"]) | (ok["booster.variant"] == "baseline")])
    paired = paired.merge(runs[["run_id", axis] + (["llm"] if axis == "llm.layers" else [])], on="run_id")
    paired["d"] = paired[col] - paired[f"{col}_base"]
    group = ROW + (["llm"] if axis == "llm.layers" else []) + [axis]
    per_seed = paired.dropna(subset=["d"]).groupby(group + ["seed"], sort=True)["d"].mean().reset_index()
    return paired_summary(per_seed, group, "d").reset_index().rename(columns={axis: "value"})
