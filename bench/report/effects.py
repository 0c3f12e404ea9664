"""Paired effects: every arm against its baseline and every R-LLM arm against its controls.

An arm is one variant configuration: the label plus the booster settings (LLM, layer, knobs) that vary
among the runs of that label, so a label crossing LLMs and layers gives one arm per combination and
nothing is averaged over LLMs or layers. A contrast pairs an arm's seed-s run with the comparator run of
seed s that shares every other setting (`contrast_pairs`): the baseline (every arm), the capacity control
(the same FE/FD without the layer), the same layer with random weights, and the frozen layer (for a
fine-tuned arm). Per contrast and metric: the primary interval, which counts both sources of variance,
the seeds and the test images (`bench.report.engine.primary`); the seed-only paired-t interval; p (Benjamini–Hochberg within
the contrast's family, per metric); the minimum detectable effect; and the finding in words (`finding`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import all_keys
from bench.models.registry import VARIANTS, baselines, capacity_control, layer_variants
from bench.report import bootstrap
from bench.report.collect import _text, pair_keys
from bench.report.engine import ALPHA, bh, primary, shared_image_var, summarise
from bench.report.stats import CELL, METRICS, ROW, pairs

ARM = CELL + ["arm"]
BOOTSTRAP_ROWS_PER_JOB = 8  # fewer bootstrap rows per worker process than this: not worth starting the processes
# contrast -> its family's name; each is one Benjamini–Hochberg family per metric
CONTRASTS = {"vs baseline": "every arm − the baseline",
             "vs capacity control": "R-LLM arm − the same FE/FD without the layer (the variant wired as the arm's "
                                    "residual is when FL is the identity: bench.models.registry.capacity_control)",
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
    vs baseline: `stats.pairs` (same data/vit/train settings and seed). The controls of a layer arm share
    those and more: the capacity control (`registry.capacity_control` of its residual) the LLM whose
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
    layer = v.isin(layer_variants())
    control = knob["residual"].map(capacity_control).where(layer)  # each layer run's capacity control variant
    parts = [base,
             *[_match(ok, control == c, v == c, keys + FE_FD, "vs capacity control")
               for c in dict.fromkeys(control.dropna())],
             _match(ok, layer & (knob["init"] == "pretrained"), layer & (knob["init"] == "random"),
                    keys + [k for k in booster if k != "booster.init"], "vs random weights"),
             _match(ok, layer & (knob["freeze"] == "finetune"), layer & (knob["freeze"] == "frozen"),
                    keys + [k for k in booster if k not in ("booster.freeze", "booster.lr_mult")], "fine-tuned vs frozen")]
    return pd.concat([p[cols] for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else pd.DataFrame(columns=cols)


def finding(mean, low, high, p_bh, mde, mde_note, n, single: str = "") -> str:
    """The first screen's words, read off the primary interval beside them: 'helps' / 'hurts' when BH p < α in its
    family; 'higher' / 'lower (95% CI excludes 0, not after BH)' when only the unadjusted interval excludes 0;
    else 'no detectable effect (MDE x at α = 0.05 unadjusted)'. `single`: the ACC of runs that predict one class
    is their majority rate, not something learned: 'not interpretable (k of n runs predict one class)'."""
    if single:
        return f"not interpretable ({single})"
    if pd.isna(mean) or n < 2:
        return "not tested (n < 2)"
    if pd.notna(p_bh) and p_bh < ALPHA:
        return "helps" if mean > 0 else "hurts"
    if pd.notna(low) and (low > 0 or high < 0):
        return ("higher" if mean > 0 else "lower") + " (95% CI excludes 0; not after BH)"
    if pd.isna(mde):
        return f"no detectable effect (MDE — : {mde_note or 'no interval'})"
    return f"no detectable effect (|Δ| {'below' if abs(mean) < mde else 'not above'} MDE {mde:.3f})"


def cell_effects(ok: pd.DataFrame, results: Path | None = None, replicates: int = bootstrap.REPLICATES) -> pd.DataFrame:
    """One row per contrast (index INDEX) and, for each metric m: m_n, m_mean, m_sd, the primary interval
    m_low, m_high with m_p, m_p_bh (BH per metric within the contrast's family of m_family tests), m_df, m_se,
    m_mde (and m_mde_note when it is undefined), the one-sided 95% bounds m_lower1, m_upper1, m_finding; from
    `replicates` shared image resamples of the stored predictions (with `results`): the image sd of the mean Δ
    m_image_sd, of one run's Δ m_image_sd1 and the part shared by the seeds m_image_shared_sd (what the primary
    interval adds to s²/n); the seed-only paired t: m_ci_low, m_ci_high, m_p_t; `seeds`, the paired seeds; and
    `single`, 'k of n runs predict one class' where any paired run does (ACC is then not interpretable)."""
    paired = contrast_pairs(ok)
    parts = []
    for m, col in METRICS.items():
        both = paired.dropna(subset=[col, f"{col}_cmp"])
        if both.empty:
            continue
        per_seed = both.groupby(INDEX + ["seed"], sort=True)[[col, f"{col}_cmp"]].mean()
        per_seed["d"] = per_seed[col] - per_seed[f"{col}_cmp"]
        parts.append(summarise(per_seed.reset_index(), INDEX, "d").add_prefix(f"{m}_"))
    columns = [f"{m}_{k}" for m in METRICS for k in ("n", "mean", "sd", "spread", "ci_low", "ci_high", "p_t", "mde_t")]
    out = pd.concat(parts, axis=1).reindex(columns=columns) if parts else pd.DataFrame(
        index=pd.MultiIndex.from_tuples([], names=INDEX), columns=columns)
    for m in METRICS:
        out[f"{m}_n"] = out[f"{m}_n"].fillna(0).astype(int)
        out[f"{m}_spread"] = out[f"{m}_spread"].fillna(False).astype(bool)
    out["seeds"] = paired.groupby(INDEX, sort=True)["seed"].agg(lambda s: tuple(sorted(set(int(x) for x in s))))
    out["single"] = _single(ok, paired).reindex(out.index).fillna("")
    kinds = ok.assign(**{c: ok.get(c, pd.Series("", index=ok.index)).astype(str) for c in
                         ("booster.variant", "booster.init", "booster.freeze")}).groupby(ARM, sort=False)[
        ["booster.variant", "booster.init", "booster.freeze"]].first()
    at = out.index.droplevel(["contrast", "comparator"])
    kinds = kinds.reindex(at)
    out["arm_variant"] = kinds["booster.variant"].to_numpy()
    out["has_layer"] = kinds["booster.variant"].map(lambda x: x in VARIANTS and VARIANTS[x].has_layer).to_numpy(bool)
    out["is_control"] = ((kinds["booster.init"] == "random") | (kinds["booster.freeze"] == "finetune")).to_numpy()
    image = _bootstrap(results, paired, out, replicates) if results is not None and len(out) else None
    for m in METRICS:
        for k in ("image_sd", "image_sd1"):
            out[f"{m}_{k}"] = image[f"{m}_{k}"] if image is not None else np.nan
        shared = [shared_image_var(a ** 2, b ** 2, n) for a, b, n in
                  zip(out[f"{m}_image_sd"], out[f"{m}_image_sd1"], out[f"{m}_n"])]
        out[f"{m}_image_shared_sd"] = np.sqrt(np.asarray(shared, dtype=float))
        prim = pd.DataFrame([primary(r[f"{m}_n"], r[f"{m}_mean"], r[f"{m}_sd"], r[f"{m}_spread"],
                                     r[f"{m}_image_shared_sd"] ** 2) for _, r in out.iterrows()],
                            index=out.index, columns=["low", "high", "lower1", "upper1", "p", "df", "se", "mde",
                                                      "mde_note"])
        out = out.join(prim.add_prefix(f"{m}_"))
        out[f"{m}_parts"] = np.where(out[f"{m}_image_shared_sd"].notna(), "seeds+images", "seeds only")
        out[f"{m}_p_bh"], out[f"{m}_family"] = _bh_by_family(out, f"{m}_p")
        single = out["single"] if m == "acc" else pd.Series("", index=out.index)
        out[f"{m}_finding"] = [finding(*a) for a in zip(
            out[f"{m}_mean"], out[f"{m}_low"], out[f"{m}_high"], out[f"{m}_p_bh"], out[f"{m}_mde"],
            out[f"{m}_mde_note"], out[f"{m}_n"], single)]
    return out


def _single(ok: pd.DataFrame, paired: pd.DataFrame) -> pd.Series:
    """Per contrast: 'k of n runs predict one class' over its paired runs (both sides), '' when none does."""
    if "single_class" not in ok.columns or paired.empty:
        return pd.Series(dtype=object)
    flag = ok.set_index("run_id")["single_class"].fillna(False).astype(bool)
    runs = pd.concat([paired[INDEX + ["run_id"]],
                      paired[INDEX + ["run_id_cmp"]].rename(columns={"run_id_cmp": "run_id"})]).drop_duplicates()
    runs["single"] = runs["run_id"].map(flag).fillna(False).astype(bool)
    g = runs.groupby(INDEX, sort=True)["single"].agg(["sum", "count"])
    return pd.Series(np.where(g["sum"] > 0, g["sum"].astype(str) + " of " + g["count"].astype(str)
                              + " runs predict one class", ""), index=g.index)


def _bh_by_family(effects: pd.DataFrame, col: str) -> tuple[pd.Series, pd.Series]:
    """Benjamini–Hochberg of `col` within each contrast family (the rows sharing `contrast`), and the family's
    size (its tests with a p)."""
    adjusted, size = pd.Series(np.nan, index=effects.index), pd.Series(0, index=effects.index)
    for _, p in effects[col].groupby(level="contrast"):
        adjusted[p.index] = bh(p.to_numpy(float))
        size[p.index] = int(p.notna().sum())
    return adjusted, size


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
    return summarise(per_seed, group, "d").reset_index().rename(columns={axis: "value"})
