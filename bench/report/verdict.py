"""Lai et al.'s claims against our runs: the protocol audit and a reproduction verdict per claim.

A claim is the paper's Δ of a variant over its baseline (Tables 1, 3, 5, 6: same table, task, model and
metric), measured on ONE run whose epoch was picked on test (ACC and AUC separately). So the verdict asks
whether that single number is a plausible single run of ours under the same protocol: each of our runs'
max over epochs of test ACC (and AUC) from the history of a `train.audit_test=true` run, paired by seed with
its baseline's, gives n per-seed Δs; the 95% prediction interval for one more run's Δ is
mean ± t · sqrt(sd² (1 + 1/n) + v), v the image-sampling variance of one run's Δ (from the shared image
resamples of the honest predictions). Every field in which our arm differs from the paper's own setting
(the `paper` grid's run of that task, backbone and variant) is named per row; only rows without any
count as a reproduction.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.report.collect import _text
from bench.report.effects import ARM
from bench.report.engine import ALPHA, summarise
from bench.report.published import CLAIM_TABLES, LAI, paper_model, paper_variant
from bench.report.stats import METRICS, pair_keys

RULES = (
    "Verdict rules (per claim and metric). The paper's Δ is one run whose epoch was chosen on test; ours, under "
    "the same protocol (max over epochs of test ACC or AUC, variant − baseline with the same seed), gives n paired "
    "Δs with mean m and sd s. Prediction interval (PI) for one run of ours: m ± t(0.975, df) · sqrt(s²(1 + 1/n) + v), "
    "v the test-image sampling variance of one run's Δ (shared image resamples of our predictions at the "
    "best-val epoch; 0 when not estimated), df by Welch–Satterthwaite. "
    "contradicted = the PI excludes the paper's Δ; consistent = the PI contains it (a run like the paper's is a "
    "plausible run of ours; whether the effect is real is the control contrasts' question); "
    "inconclusive = fewer than 2 paired seeds (no PI); no spread = our n paired Δs are all equal (s = 0: no "
    "seed variance to predict a run from); no audit = no protocol-audit history (train.audit_test=false). "
    "A row is a reproduction only when our arm has the paper's setting in every field (LLM, layer, image size, "
    "backbone, weights, recipe: compared with the paper grid's run); otherwise it is an analogous setting and "
    "its deviations are named."
)
# paper-grid fields compared per group; train fields that change no result are left out
DEVIATION_GROUPS = {
    "LLM": ["booster.source", "booster.revision"], "layer": ["booster.layer", "booster.num_layers"],
    "size": ["data.size"], "backbone": ["vit.arch", "vit.depth", "vit.patch", "vit.paper_mode", "vit.head",
                                        "vit.drop_path"],
    "weights": ["vit.pretrained", "vit.weights", "booster.init"],
}
NOT_RECIPE = {"train.audit_test", "train.eval_batch_size", "train.compile"}


def claims(published: pd.DataFrame) -> pd.DataFrame:
    """task, model, variant, metric, tables, paper_base, paper_value, paper_delta for each of Lai et al.'s claims."""
    lai = published[published["source"].str.startswith(LAI) & published["table"].isin(CLAIM_TABLES)]
    base = lai[lai["variant"] == "baseline"].drop_duplicates(["table", "task", "model", "metric"])
    var = lai[~lai["variant"].isin(["baseline", "other"])]
    c = var.merge(base[["table", "task", "model", "metric", "value"]], on=["table", "task", "model", "metric"],
                  suffixes=("", "_base"))
    c = c.assign(paper_delta=c["value"] - c["value_base"])
    keys = ["task", "model", "variant", "metric"]  # Tables 5 and 6 repeat Table 3's ViViT-M rows
    tables = c.groupby(keys)["table"].agg(lambda t: ", ".join(dict.fromkeys(t)))
    c = c.drop_duplicates(keys).set_index(keys).assign(tables=tables).reset_index()
    return c.rename(columns={"value": "paper_value", "value_base": "paper_base"})[
        keys + ["tables", "paper_base", "paper_value", "paper_delta"]]


def audit_values(results: Path, ok: pd.DataFrame) -> pd.DataFrame:
    """run_id -> audit_acc, audit_auc (max over epochs of test ACC / AUC) for the ok runs with an audit history."""
    from bench.store import read_history

    audited = ok.loc[ok.get("train.audit_test", pd.Series(False, index=ok.index)).fillna(False).astype(bool), "run_id"]
    if audited.empty:
        return pd.DataFrame(columns=["audit_acc", "audit_auc"], index=pd.Index([], name="run_id"))
    hist = read_history(results, list(audited))
    cols = [f"test_{m}" for m in METRICS if f"test_{m}" in hist.columns]
    if hist.empty or not cols:
        return pd.DataFrame(columns=["audit_acc", "audit_auc"], index=pd.Index([], name="run_id"))
    best = hist.groupby("run_id")[cols].max()
    return best.rename(columns=lambda c: c.replace("test_", "audit_")).reindex(columns=["audit_acc", "audit_auc"])


def verdicts(results: Path, ok: pd.DataFrame, effects: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per (our arm that is one of the paper's variants on one of its tasks, matching claim, metric)."""
    c = claims(published)
    runs = ok.assign(paper_variant=paper_variant(ok), paper_model=paper_model(ok))
    runs = runs[runs["paper_variant"].notna() & runs["task"].isin(c["task"])]
    if runs.empty or c.empty:
        return pd.DataFrame()
    runs = runs.join(audit_values(results, runs), on="run_id")
    keys = pair_keys(runs.columns)
    base = runs[runs["paper_variant"] == "baseline"].drop_duplicates(keys)
    var = runs[runs["paper_variant"] != "baseline"]
    cols = ["run_id", "test_acc", "test_auc", "audit_acc", "audit_auc"]
    merged = var[list(dict.fromkeys(ARM + keys + ["paper_variant", "paper_model", "vit.arch"] + cols))].merge(
        base[keys + cols], on=keys, suffixes=("", "_base"))
    info = merged.groupby(ARM)[["paper_variant", "paper_model", "vit.arch", "run_id"]].first().reset_index()
    honest_all = effects.xs("vs baseline", level="contrast").xs("baseline", level="comparator") \
        if len(effects) and "vs baseline" in effects.index.get_level_values("contrast") else pd.DataFrame()
    parts = []
    for m in METRICS:
        merged[f"d_{m}"] = merged[f"audit_{m}"] - merged[f"audit_{m}_base"]
        per_seed = merged.dropna(subset=[f"d_{m}"]).groupby(ARM + ["seed"])[f"d_{m}"].mean().reset_index()
        audit = summarise(per_seed, ARM, f"d_{m}") if len(per_seed) else \
            pd.DataFrame(columns=["n", "mean", "sd", "spread"])
        levels = merged.groupby(ARM)[[f"audit_{m}", f"audit_{m}_base", f"test_{m}", f"test_{m}_base"]].mean()
        # each arm against its task's claims for its variant: those on its own backbone if the paper has any, else all
        mine = info.reset_index(names="arm_order").merge(
            c[c["metric"] == m].reset_index(names="claim_order"), left_on=["task", "paper_variant"],
            right_on=["task", "variant"], suffixes=("", "_claim"))
        own = mine["model"] == mine["paper_model"]
        has_own = own.groupby([mine[k] for k in ARM]).transform("any")
        mine = mine[own | ~has_own].sort_values(["arm_order", "claim_order"])
        at = pd.MultiIndex.from_frame(mine[ARM])
        honest = honest_all.reindex(at) if len(honest_all) else pd.DataFrame(index=at)
        audit = audit.reindex(at)
        lv = levels.reindex(at)
        h = {k: (honest[f"{m}_{k}"].to_numpy(dtype=float) if f"{m}_{k}" in honest else np.full(len(at), np.nan))
             for k in ("n", "mean", "low", "high", "mde", "image_sd1")}
        parts.append(pd.DataFrame({
            **{k: mine[k].to_numpy() for k in ARM}, "metric": m, "tables": mine["tables"].to_numpy(),
            "paper_model": mine["model"].to_numpy(),
            "backbone": np.where(has_own[mine.index], "the paper's", "other (vit.arch=" + mine["vit.arch"].astype(str)
                                 + ")"),
            "deviations": [deviations(ok.loc[ok["run_id"] == r].iloc[0], t, model, v)
                           for r, t, model, v in zip(mine["run_id"], mine["task"], mine["model"], mine["variant"])],
            "variant": mine["variant"].to_numpy(), "paper_base": mine["paper_base"].to_numpy(),
            "paper_value": mine["paper_value"].to_numpy(), "paper_delta": mine["paper_delta"].to_numpy(),
            "audit_value": lv[f"audit_{m}"].to_numpy(), "audit_base": lv[f"audit_{m}_base"].to_numpy(),
            "honest_value": lv[f"test_{m}"].to_numpy(), "honest_base": lv[f"test_{m}_base"].to_numpy(),
            **{f"audit_{k}": audit[k].to_numpy(dtype=float) for k in ("n", "mean", "sd")},
            "audit_spread": audit["spread"].fillna(False).astype(bool).to_numpy(),
            "image_sd1": h["image_sd1"],
            **{f"honest_{k}": h[k] for k in ("n", "mean", "low", "high", "mde")},
        }))
    out = pd.concat(parts, ignore_index=True)
    out["scope"] = np.where(out["deviations"] == "", "reproduction", "analogous setting")
    pi = [prediction_interval(r.audit_n, r.audit_mean, r.audit_sd, r.audit_spread, r.image_sd1)
          for r in out.itertuples(index=False)]
    out["pi_low"], out["pi_high"] = [p[0] for p in pi], [p[1] for p in pi]
    out["verdict"] = [classify(r.paper_delta, r.pi_low, r.pi_high, r.audit_n, r.audit_spread)
                      for r in out.itertuples(index=False)]
    checks = int(out["pi_low"].notna().sum())  # the family of claim checks: family-wise level 0.05 / checks
    fw = [prediction_interval(r.audit_n, r.audit_mean, r.audit_sd, r.audit_spread, r.image_sd1,
                              1 - ALPHA / max(checks, 1)) for r in out.itertuples(index=False)]
    out["contradicted_familywise"] = [bool(lo == lo and not lo <= d <= hi)
                                      for (lo, hi), d in zip(fw, out["paper_delta"])]
    return out


def prediction_interval(n, mean, sd, spread, image_sd1, level: float = 0.95) -> tuple[float, float]:
    """mean ± t(df) · sqrt(sd²(1 + 1/n) + image_sd1²): where one more run's Δ falls (NaN: n < 2 or no spread)."""
    if pd.isna(n) or n < 2 or not spread:
        return np.nan, np.nan
    seed = sd ** 2 * (1 + 1 / n)
    img = 0.0 if pd.isna(image_sd1) else image_sd1 ** 2
    df = (n - 1) * ((seed + img) / seed) ** 2
    half = stats.t.ppf(0.5 + level / 2, df) * np.sqrt(seed + img)
    return float(mean - half), float(mean + half)


def classify(claim: float, low: float, high: float, n, spread: bool = True) -> str:
    """The rule of RULES for one claim: 'contradicted', 'consistent', 'inconclusive', 'no spread' or 'no audit'."""
    if pd.isna(n) or n == 0:
        return "no audit"
    if n < 2:
        return "inconclusive"
    if not spread:
        return "no spread"
    return "contradicted" if claim < low or claim > high else "consistent"


def _same(value) -> str:
    """A config value as comparable text: lists by their numbers, 'last' as -1, a local LLM folder by its name."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return "(" + ", ".join(_text(v) for v in value) + ")"
    text = _text(value)
    return {"last": "-1"}.get(text, Path(text).name if text.startswith("/") else text)


@functools.cache
def _paper_grid() -> pd.DataFrame:
    from bench.grid import load_grid
    from bench.report.collect import expected_runs

    runs = expected_runs(load_grid("paper", {}))
    return runs.assign(paper_variant=paper_variant(runs), paper_model=paper_model(runs))


def _paper_value(ref: pd.Series, key: str) -> str:
    """The paper grid's value as the paper used it: vit.patch 0 (auto) as the patch it resolves to."""
    from bench.models.registry import PAPER_PATCH, auto_patch

    if key == "vit.patch" and _same(ref[key]) == "0":
        paper_mode = str(ref.get("vit.paper_mode")).lower() == "true"
        return str(PAPER_PATCH if paper_mode else auto_patch(int(ref["data.size"])))
    return _same(ref[key])


def deviations(run: pd.Series, task: str, model: str, variant: str) -> str:
    """'LLM (booster.source=minilm-l6, paper huggyllama/llama-7b); size (...)': each group of fields in which `run`
    differs from the paper grid's run of `task`, `model` and `variant`; '' when none differs."""
    grid = _paper_grid()
    ref = grid[(grid["task"] == task) & (grid["paper_model"] == model) & (grid["paper_variant"] == variant)]
    if ref.empty:
        return "no paper-grid run of this task, backbone and variant to compare with"
    ref = ref.iloc[0]
    grouped = {**DEVIATION_GROUPS, "recipe": [k for k in ref.index if k.startswith(("train.", "data.", "booster."))
                                              and k not in NOT_RECIPE and k not in ("data.task", "booster.variant")
                                              and not any(k in g for g in DEVIATION_GROUPS.values())]}
    out = []
    for group, fields in grouped.items():
        diff = [f"{k}={_same(run.get(k))} (paper {_paper_value(ref, k)})" for k in fields
                if k in ref.index and _same(run.get(k)) != _same(ref[k])]
        if diff:
            out.append(f"{group}: " + ", ".join(diff[:3]) + (f" +{len(diff) - 3} more" if len(diff) > 3 else ""))
    quant = _same(run.get("llm.quant"))
    bits = re.match(r"I?Q(\d)", quant)
    if bits:  # a GGUF layer stored quantized; the paper's LLaMA-7B layer is fp16
        out.append(f"LLM weights: {bits.group(1)}-bit quantized weights ({quant}; paper fp16)")
    return "; ".join(out)
