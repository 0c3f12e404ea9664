"""Paired effects: every arm against its baseline and every R-LLM arm against its controls.

An arm is one variant configuration: the label plus the booster settings (LLM, layer, knobs) that vary
among the runs of that label, so a label crossing LLMs and layers gives one arm per combination and
nothing is averaged over LLMs or layers. A contrast pairs an arm's seed-s run with the comparator run of
seed s that shares every other setting (`contrast_pairs`): the baseline (every arm), the capacity control
(the same FE/FD without the layer), the same layer with random weights, and the frozen layer (for a
fine-tuned arm). Per contrast and metric: the primary interval, which counts both sources of variance,
the seeds and the test images (`primary`); the seed-only paired-t interval; p (Benjamini–Hochberg within
the contrast's family, per metric); the minimum detectable effect; and the finding in words (`finding`).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from bench.config import all_keys
from bench.report import bootstrap
from bench.report.collect import _text, pair_keys
from bench.report.stats import CELL, METRICS, ROW, pairs

ARM = CELL + ["arm"]
ALPHA, POWER = 0.05, 0.8
BOOTSTRAP_ROWS_PER_JOB = 8  # fewer bootstrap rows per worker process than this: not worth starting the processes
# contrast -> its family's name; each is one Benjamini–Hochberg family per metric
CONTRASTS = {"vs baseline": "every arm − the baseline",
             "vs capacity control": "R-LLM arm − the same FE/FD without the layer (mlp for residual in/none, "
                                    "adapters for residual out/hybrid)",
             "vs random weights": "pretrained layer − the same layer with random weights (booster.init=random)",
             "fine-tuned vs frozen": "fine-tuned layer (booster.freeze=finetune) − the same layer frozen"}
INDEX = ["contrast"] + ARM + ["comparator"]
FE_FD = ["booster.source", "booster.revision", "booster.bias", "booster.adapter_init"]  # what a capacity control shares


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


def _keyed(runs: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """`cols` as text that does not depend on how a value was stored (None/NaN -> '', 1 == 1.0)."""
    return pd.DataFrame({f"k{i}": runs[c].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                                                else _text(v)) for i, c in enumerate(cols)}, index=runs.index)


def _match(ok: pd.DataFrame, treated: pd.Series, comparator: pd.Series, same: list[str], contrast: str) -> pd.DataFrame:
    """Each treated run next to each comparator run that equals it on `same` (which includes the seed)."""
    cols = [c for c in dict.fromkeys(same) if c in ok.columns]
    keep = CELL + ["arm", "seed", "run_id", *METRICS.values()]
    t = pd.concat([ok.loc[treated, keep], _keyed(ok[treated], cols)], axis=1)
    c = pd.concat([ok.loc[comparator, ["label", "arm", "run_id", *METRICS.values()]], _keyed(ok[comparator], cols)],
                  axis=1)
    m = t.merge(c, on=[f"k{i}" for i in range(len(cols))], suffixes=("", "_cmp"))
    m["comparator"] = m["label_cmp"].where(m["arm_cmp"] == "", m["label_cmp"] + " · " + m["arm_cmp"])
    return m.assign(contrast=contrast)


def contrast_pairs(ok: pd.DataFrame) -> pd.DataFrame:
    """Per contrast: the treated arm's run of each seed beside its comparator's run of the same seed.

    Columns: contrast, ARM, comparator (label · arm), seed, run_id, run_id_cmp and `<metric>` / `<metric>_cmp`.
    vs baseline: `stats.pairs` (same data/vit/train settings and seed). The controls of an rllm arm share
    those and more: the capacity control (mlp for residual in/none, adapters for out/hybrid) the LLM whose
    width it takes and the FE/FD settings; the random-init and the frozen comparator every booster field
    but booster.init, respectively booster.freeze (and its lr_mult).
    """
    cols = ["contrast", *ARM, "comparator", "seed", "run_id", "run_id_cmp",
            *[c for m in METRICS.values() for c in (m, f"{m}_cmp")]]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    base = pairs(ok).rename(columns=lambda c: c.replace("_base", "_cmp")).assign(contrast="vs baseline",
                                                                                 comparator="baseline")
    keys = pair_keys(ok.columns)
    booster = [k for k in all_keys() if k.startswith("booster.") and k in ok.columns and k != "booster.variant"]
    v = ok["booster.variant"].astype(str)
    knob = {k: ok.get(f"booster.{k}", pd.Series("", index=ok.index)).astype(str)
            for k in ("residual", "init", "freeze")}
    rllm = v == "rllm"
    parts = [base,
             _match(ok, rllm & knob["residual"].isin(["in", "none"]), v == "mlp", keys + FE_FD, "vs capacity control"),
             _match(ok, rllm & knob["residual"].isin(["out", "hybrid"]), v == "adapters", keys + FE_FD,
                    "vs capacity control"),
             _match(ok, rllm & (knob["init"] == "pretrained"), rllm & (knob["init"] == "random"),
                    keys + [k for k in booster if k != "booster.init"], "vs random weights"),
             _match(ok, rllm & (knob["freeze"] == "finetune"), rllm & (knob["freeze"] == "frozen"),
                    keys + [k for k in booster if k not in ("booster.freeze", "booster.lr_mult")], "fine-tuned vs frozen")]
    return pd.concat([p[cols] for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else pd.DataFrame(columns=cols)


@functools.cache
def noncentrality(df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The noncentrality at which a two-sided t-test with `df` degrees of freedom (inf: z-test) has `power`."""
    if np.isinf(df):
        crit = stats.norm.ppf(1 - alpha / 2)

        def short(nc):
            return stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc) - power
    else:
        crit = stats.t.ppf(1 - alpha / 2, df)

        def short(nc):  # power at noncentrality nc, minus the target
            lower = np.nan_to_num(stats.nct.cdf(-crit, df, nc))  # ~0 for large nc, where scipy can give NaN
            return stats.nct.sf(crit, df, nc) + lower - power

    high = 1.0
    while short(high) < 0:  # power grows with the effect: double until it reaches the target
        high *= 2
    return optimize.brentq(short, 0.0, high, xtol=1e-12)


def mde_factor(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """δ/sd that a two-sided paired t-test with n pairs detects with `power`; NaN for n < 2."""
    return noncentrality(float(n - 1), alpha, power) / np.sqrt(n) if n >= 2 else np.nan


def paired_summary(d: pd.DataFrame, keys: list[str], col: str) -> pd.DataFrame:
    """n, mean, sd, the seed-only paired-t 95% CI (ci_low, ci_high) and p of the per-seed differences `col`,
    grouped by `keys`, with `spread` (False: identical differences). Vectorised closed forms of
    scipy.stats.ttest_rel; CI and p missing for n < 2 or identical differences."""
    g = d.groupby(keys, sort=True)[col]
    out = pd.DataFrame({"n": g.count(), "mean": g.mean(), "sd": g.std(ddof=1)})
    out.loc[out["n"] == 0, "mean"] = np.nan
    out["spread"] = (g.max() - g.min()) > 1e-12
    se = out["sd"] / np.sqrt(out["n"])
    df = (out["n"] - 1).clip(lower=1)
    half = stats.t.ppf(0.975, df) * se
    usable = (out["n"] >= 2) & out["spread"]
    out["ci_low"] = (out["mean"] - half).where(usable)
    out["ci_high"] = (out["mean"] + half).where(usable)
    out["p_t"] = pd.Series(2 * stats.t.sf(np.abs(out["mean"] / se), df), index=out.index).where(usable)
    out["mde_t"] = (out["n"].map(mde_factor) * out["sd"]).where(usable)
    return out


def primary(n, mean, sd, spread, image_var, level: float = 0.95) -> dict:
    """The primary interval of a mean paired Δ over n seeds: mean ± t_df · sqrt(sd²/n + image_var), never narrower
    than the seed-only paired t interval mean ± t_(n−1) · sd/√n.

    sd²/n is the seed part (variance of the per-seed differences over n), image_var the image-sampling variance
    of the mean Δ (the shared image resample; NaN: not estimated, seeds only). df is Welch–Satterthwaite's
    (the image part, estimated from the N test images, counts as known): (n−1)(1 + image_var/(sd²/n))². A small
    image part raises df quickly while adding little variance, and part of it (the seed × image noise) is in sd
    already: so the interval is the union of that one and the seed-only t, and p the larger of their two p (the
    coverage simulation, benchmarks/interval_coverage.py, shows why: 0.93 with 3 seeds without the union).
    Returns low, high, p, df, se, mde (α = 0.05 two-sided, power 0.8, unadjusted: the larger of the two tests')
    and why the MDE is missing.
    """
    out = dict(low=np.nan, high=np.nan, p=np.nan, df=np.nan, se=np.nan, mde=np.nan, mde_note="")
    if n < 2 or pd.isna(sd):
        out["mde_note"] = "n < 2"
        return out
    seed = sd ** 2 / n if spread else 0.0
    img = 0.0 if pd.isna(image_var) else float(image_var)
    total = seed + img
    if not spread:
        out["mde_note"] = "no spread"
    if total <= 0:
        return out
    df = (n - 1) * (total / seed) ** 2 if seed > 0 else np.inf
    se = np.sqrt(total)
    if np.isfinite(df):
        half, p = stats.t.ppf(0.5 + level / 2, df) * se, 2 * stats.t.sf(abs(mean) / se, df)
    else:
        half, p = stats.norm.ppf(0.5 + level / 2) * se, 2 * stats.norm.sf(abs(mean) / se)
    if seed > 0:  # the union with the seed-only paired t
        half = max(half, stats.t.ppf(0.5 + level / 2, n - 1) * np.sqrt(seed))
        p = max(p, 2 * stats.t.sf(abs(mean) / np.sqrt(seed), n - 1))
    out.update(low=mean - half, high=mean + half, p=p, df=df, se=se)
    if spread:
        ws = noncentrality(round(float(df), 6) if np.isfinite(df) else np.inf)
        out["mde"] = max(ws * se, noncentrality(float(n - 1)) * np.sqrt(seed))
    return out


def finding(mean, p_bh, mde, mde_note, n) -> str:
    """The first screen's words: 'helps' / 'hurts' when BH p < α, else 'no detectable effect (MDE x)'."""
    if pd.isna(mean) or n < 2:
        return "not tested (n < 2)"
    if pd.notna(p_bh) and p_bh < ALPHA:
        return "helps" if mean > 0 else "hurts"
    if pd.isna(mde):
        return f"no detectable effect (MDE — : {mde_note or 'no interval'})"
    return f"no detectable effect (|Δ| {'below' if abs(mean) < mde else 'not above'} MDE {mde:.3f})"


def cell_effects(ok: pd.DataFrame, results: Path | None = None, replicates: int = bootstrap.REPLICATES) -> pd.DataFrame:
    """One row per contrast (index INDEX) and, for each metric m: m_n, m_mean, m_sd, the primary interval
    m_low, m_high with m_p, m_p_bh (BH per metric within the contrast's family), m_df, m_mde (and m_mde_note
    when it is undefined), m_finding; the image-sampling sd of the mean Δ m_image_sd and of one run's Δ
    m_image_sd1 (from `replicates` shared image resamples of the stored predictions, with `results`); the
    seed-only paired t: m_ci_low, m_ci_high, m_p_t; and `seeds`, the paired seeds."""
    paired = contrast_pairs(ok)
    parts = []
    for m, col in METRICS.items():
        both = paired.dropna(subset=[col, f"{col}_cmp"])
        if both.empty:
            continue
        per_seed = both.groupby(INDEX + ["seed"], sort=True)[[col, f"{col}_cmp"]].mean()
        per_seed["d"] = per_seed[col] - per_seed[f"{col}_cmp"]
        parts.append(paired_summary(per_seed.reset_index(), INDEX, "d").add_prefix(f"{m}_"))
    columns = [f"{m}_{k}" for m in METRICS for k in ("n", "mean", "sd", "spread", "ci_low", "ci_high", "p_t", "mde_t")]
    out = pd.concat(parts, axis=1).reindex(columns=columns) if parts else pd.DataFrame(
        index=pd.MultiIndex.from_tuples([], names=INDEX), columns=columns)
    for m in METRICS:
        out[f"{m}_n"] = out[f"{m}_n"].fillna(0).astype(int)
        out[f"{m}_spread"] = out[f"{m}_spread"].fillna(False).astype(bool)
    out["seeds"] = paired.groupby(INDEX, sort=True)["seed"].agg(lambda s: tuple(sorted(set(int(x) for x in s))))
    kinds = ok.assign(**{c: ok.get(c, pd.Series("", index=ok.index)).astype(str) for c in
                         ("booster.variant", "booster.init", "booster.freeze")}).groupby(ARM, sort=False)[
        ["booster.variant", "booster.init", "booster.freeze"]].first()
    at = out.index.droplevel(["contrast", "comparator"])
    kinds = kinds.reindex(at)
    out["arm_variant"] = kinds["booster.variant"].to_numpy()
    out["is_control"] = ((kinds["booster.init"] == "random") | (kinds["booster.freeze"] == "finetune")).to_numpy()
    image = _bootstrap(results, paired, out, replicates) if results is not None and len(out) else None
    for m in METRICS:
        for k in ("image_sd", "image_sd1"):
            out[f"{m}_{k}"] = image[f"{m}_{k}"] if image is not None else np.nan
        prim = pd.DataFrame([primary(r[f"{m}_n"], r[f"{m}_mean"], r[f"{m}_sd"], r[f"{m}_spread"],
                                     r[f"{m}_image_sd"] ** 2) for _, r in out.iterrows()],
                            index=out.index, columns=["low", "high", "p", "df", "se", "mde", "mde_note"])
        out = out.join(prim.add_prefix(f"{m}_"))
        out[f"{m}_parts"] = np.where(out[f"{m}_image_sd"].notna(), "seeds+images", "seeds only")
        out[f"{m}_p_bh"] = _bh_by_family(out, f"{m}_p")
        out[f"{m}_finding"] = [finding(*a) for a in zip(out[f"{m}_mean"], out[f"{m}_p_bh"], out[f"{m}_mde"],
                                                         out[f"{m}_mde_note"], out[f"{m}_n"])]
    return out


def _bh_by_family(effects: pd.DataFrame, col: str) -> pd.Series:
    """Benjamini–Hochberg of `col` within each contrast family (the rows sharing `contrast`)."""
    adjusted = pd.Series(np.nan, index=effects.index)
    for _, p in effects[col].groupby(level="contrast"):
        p = p.dropna()
        if len(p):
            adjusted[p.index] = stats.false_discovery_control(p.to_numpy(float), method="bh")
    return adjusted


def _bootstrap(results: Path, paired: pd.DataFrame, effects: pd.DataFrame, replicates: int) -> pd.DataFrame:
    """m_image_sd (of the mean Δ over the contrast's seeds) and m_image_sd1 (of one seed's Δ, averaged over seeds)
    for every contrast, from `replicates` resamples of the test images shared by all runs of its row.

    Rows (task, size, setting) are independent: on a big store they spread over the CPU cores, each job reading
    its own runs' predictions (8,154 runs of `full`: about half the report's time on one core)."""
    from joblib import Parallel, delayed

    from bench.data.info import info

    cols = [f"{m}_{k}" for m in METRICS for k in ("image_sd", "image_sd1")]
    by_run = paired.drop_duplicates(INDEX + ["seed"]).set_index(INDEX + ["seed"])
    row_of = [k[1:1 + len(ROW)] for k in effects.index]
    jobs = []
    for row in dict.fromkeys(row_of):
        keys = [k for k, r in zip(effects.index, row_of) if r == row]
        task_type = info()[row[0]]["task"] if row[0] in info() else bootstrap.BINARY
        runs = {k: [(by_run.loc[(*k, s), "run_id"], by_run.loc[(*k, s), "run_id_cmp"]) for s in effects.at[k, "seeds"]]
                for k in keys}
        jobs.append(delayed(_row_bootstrap)(results, task_type, runs, "|".join(map(str, row)), replicates))
    n_jobs = min(os.cpu_count() or 1, len(jobs) // BOOTSTRAP_ROWS_PER_JOB) or 1
    found: dict = {}
    for part in Parallel(n_jobs=n_jobs)(jobs):
        found.update(part)
    return pd.DataFrame.from_dict(found, orient="index", columns=cols).reindex(effects.index)


def _row_bootstrap(results: Path, task_type: str, runs: dict, key: str, replicates: int) -> dict:
    """{contrast: [acc image sd, acc image sd1, auc image sd, auc image sd1]} for one row; contrasts with a run
    without usable predictions (or a test set of another size) get none."""
    from bench.store import read_predictions

    def scorer(run_id: str):
        try:
            p = read_predictions(results, run_id)
            return bootstrap.Scorer.of(task_type, p["y_true"], p["y_score"])
        except (OSError, KeyError, ValueError, IndexError):  # no usable predictions (or not of this task)
            return None

    ids = {r for pairs_ in runs.values() for pair in pairs_ for r in pair}
    scorers = {r: s for r in sorted(ids) if (s := scorer(r)) is not None}
    sizes = {len(s.correct) for s in scorers.values()}
    if not scorers or len(sizes) != 1:
        return {}
    reps = bootstrap.image_replicates(scorers, bootstrap.rng_for(key), replicates)
    out = {}
    for k, pairs_ in runs.items():
        if len(pairs_) < 2 or not all(a in scorers and b in scorers for a, b in pairs_):
            continue
        row = []
        for j in range(len(METRICS)):
            d = np.stack([reps[a][j] - reps[b][j] for a, b in pairs_], axis=1)  # (B, seeds)
            with warnings.catch_warnings():  # a replicate without both classes has no AUC
                warnings.simplefilter("ignore", RuntimeWarning)
                row += [float(np.sqrt(np.nanvar(np.nanmean(d, axis=1), ddof=1))),
                        float(np.sqrt(np.nanmean(np.nanvar(d, axis=0, ddof=1))))]
        out[k] = row
    return out


def axis_deltas(runs: pd.DataFrame, ok: pd.DataFrame, axis: str, metric: str) -> pd.DataFrame:
    """Paired Δ (run − its baseline) per task row (and LLM for the layer axis) and value of `axis`."""
    col = METRICS[metric]
    paired = pairs(ok[ok["run_id"].isin(runs["run_id"]) | (ok["booster.variant"] == "baseline")])
    paired = paired.merge(runs[["run_id", axis] + (["llm"] if axis == "llm.layers" else [])], on="run_id")
    paired["d"] = paired[col] - paired[f"{col}_base"]
    group = ROW + (["llm"] if axis == "llm.layers" else []) + [axis]
    per_seed = paired.dropna(subset=["d"]).groupby(group + ["seed"], sort=True)["d"].mean().reset_index()
    return paired_summary(per_seed, group, "d").reset_index().rename(columns={axis: "value"})
