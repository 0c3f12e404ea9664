"""Lai et al.'s claims against our runs: the protocol audit and a reproduction verdict per claim.

A claim is the paper's Δ of a variant over its baseline (Tables 1, 3, 5, 6: same table, task, model and
metric). The paper kept the best epoch *on test*, for ACC and AUC separately, so the verdict compares its Δ
with ours under that protocol: each run's max over epochs of test ACC (and of test AUC) from the history
of a `train.audit_test=true` run, paired by seed with its baseline's. Our honest Δ (test at the best-val
epoch) is shown beside it, and the audit table shows the selection bias of the published protocol as the gap
between the two measurements of the same runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.effects import ARM, paired_summary
from bench.report.published import CLAIM_TABLES, LAI, paper_model, paper_variant
from bench.report.stats import METRICS, pair_keys

RULES = (
    "Verdict rules (per claim and metric; 'interval' = our paired-t 95% CI over seeds of Δ under the paper's "
    "protocol, max over epochs of test ACC or AUC, variant − baseline with the same seed): "
    "contradicted = the interval excludes the paper's Δ; "
    "consistent = the interval contains the paper's Δ and excludes 0 on the side the paper claims "
    "(a claimed Δ of exactly 0 can never be consistent, only not contradicted); "
    "inconclusive = neither (the interval holds both the paper's Δ and 0), or fewer than 2 paired seeds; "
    "MDE = the smallest |Δ| our two-sided paired t-test (α = 0.05) detects with power 0.8 at the observed "
    "spread of the paired differences. No verdict without protocol-audit history (train.audit_test=false)."
)


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
    info = merged.groupby(ARM)[["paper_variant", "paper_model", "vit.arch"]].first().reset_index()
    parts = []
    for m in METRICS:
        merged[f"d_{m}"] = merged[f"audit_{m}"] - merged[f"audit_{m}_base"]
        audit = paired_summary(merged.dropna(subset=[f"d_{m}"]), ARM, f"d_{m}") if merged[f"d_{m}"].notna().any() \
            else pd.DataFrame(columns=["n", "mean", "ci_low", "ci_high", "mde"])
        levels = merged.groupby(ARM)[[f"audit_{m}", f"audit_{m}_base", f"test_{m}", f"test_{m}_base"]].mean()
        # each arm against its task's claims for its variant: those on its own backbone if the paper has any, else all
        mine = info.reset_index(names="arm_order").merge(
            c[c["metric"] == m].reset_index(names="claim_order"), left_on=["task", "paper_variant"],
            right_on=["task", "variant"], suffixes=("", "_claim"))
        own = mine["model"] == mine["paper_model"]
        has_own = own.groupby([mine[k] for k in ARM]).transform("any")
        mine = mine[own | ~has_own].sort_values(["arm_order", "claim_order"])
        at = pd.MultiIndex.from_frame(mine[ARM])
        honest = effects.reindex(at) if len(effects) else pd.DataFrame(index=at)
        audit = audit.reindex(at)
        lv = levels.reindex(at)
        parts.append(pd.DataFrame({
            **{k: mine[k].to_numpy() for k in ARM}, "metric": m, "tables": mine["tables"].to_numpy(),
            "paper_model": mine["model"].to_numpy(),
            "backbone": np.where(has_own[mine.index], "the paper's", "other (vit.arch=" + mine["vit.arch"].astype(str)
                                 + ")"),
            "variant": mine["variant"].to_numpy(), "paper_base": mine["paper_base"].to_numpy(),
            "paper_value": mine["paper_value"].to_numpy(), "paper_delta": mine["paper_delta"].to_numpy(),
            "audit_value": lv[f"audit_{m}"].to_numpy(), "audit_base": lv[f"audit_{m}_base"].to_numpy(),
            "honest_value": lv[f"test_{m}"].to_numpy(), "honest_base": lv[f"test_{m}_base"].to_numpy(),
            **{f"audit_{k}": audit[k].to_numpy(dtype=float) for k in ("n", "mean", "ci_low", "ci_high", "mde")},
            **{f"honest_{k}": (honest[f"{m}_{k}"].to_numpy(dtype=float) if f"{m}_{k}" in honest else np.nan)
               for k in ("n", "mean", "ci_low", "ci_high", "mde")},
        }))
    out = pd.concat(parts, ignore_index=True)
    out["verdict"] = [classify(r.paper_delta, r.audit_ci_low, r.audit_ci_high, r.audit_n)
                      for r in out.itertuples(index=False)]
    return out


def classify(claim: float, low: float, high: float, n) -> str:
    """The rule of RULES for one claim: 'consistent', 'contradicted', 'inconclusive' or 'no audit'."""
    if pd.isna(n) or n == 0:
        return "no audit"
    if pd.isna(low) or pd.isna(high):
        return "inconclusive"
    if claim < low or claim > high:
        return "contradicted"
    if (claim > 0 and low > 0) or (claim < 0 and high < 0):
        return "consistent"
    return "inconclusive"
