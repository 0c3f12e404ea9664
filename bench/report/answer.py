"""What the data rule out, per contrast and across tasks: the first screen's sentences, the paper's Δ (or a user
margin) against the one-sided 95% bounds, and the pooled estimate with its forest plot.

Every number comes from `bench.report.engine` through `effects.cell_effects`' columns: the words of a cell read
the primary interval printed beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.engine import claim_words, pooled
from bench.report.plots import Plot, Skipped, _save, plt
from bench.report.stats import METRICS, ROW
from bench.report.tables import MISSING, NAMES, Table, fmt_delta, fmt_p, row_name

WHO = {"vs baseline": "the baseline", "vs capacity control": "its capacity control",
       "vs random weights": "random weights", "fine-tuned vs frozen": "the frozen layer"}


def paper_claims(v: pd.DataFrame) -> pd.DataFrame:
    """(task, size, setting, label, arm, metric) -> paper_delta, tables: the paper's Δ over the baseline for the arms
    that are one of its variants (the verdicts' matching; the first claim where it has several)."""
    keys = ROW + ["label", "arm", "metric"]
    if v.empty:
        return pd.DataFrame(columns=["paper_delta", "source"], index=pd.MultiIndex.from_tuples([], names=keys))
    first = v.drop_duplicates(keys).set_index(keys)
    return pd.DataFrame({"paper_delta": first["paper_delta"], "source": first["tables"] + ", " + first["paper_model"]})


def add_claims(effects: pd.DataFrame, v: pd.DataFrame, margin: float | None) -> pd.DataFrame:
    """m_claim: where the paper's Δ for that task and arm stands ('vs baseline' rows with a claim), and with
    `margin` also where ±margin stands (both ruled out: equivalent within ±margin, TOST at 5%). None for an ACC
    that is not interpretable (runs that predict one class)."""
    effects = effects.copy()
    claims = paper_claims(v)
    for m in METRICS:
        words = []
        for k, r in zip(effects.index, effects.to_dict("records")):
            key = (*k[1:4], k[4], k[5], m)  # task, size, setting, label, arm
            parts = []
            readable = not r[f"{m}_finding"].startswith("not interpretable")
            if k[0] == "vs baseline" and key in claims.index and readable:
                c = claims.loc[key]
                parts.append(claim_words(c["paper_delta"], r[f"{m}_lower1"], r[f"{m}_upper1"], r[f"{m}_mde"],
                                         "the paper's Δ", c["source"]))
            if margin and pd.notna(r[f"{m}_lower1"]) and readable:
                up = claim_words(margin, r[f"{m}_lower1"], r[f"{m}_upper1"], r[f"{m}_mde"], "a gain")
                down = claim_words(-margin, r[f"{m}_lower1"], r[f"{m}_upper1"], r[f"{m}_mde"], "a loss")
                both = up.endswith("ruled out") and down.endswith("ruled out")
                parts.append(f"equivalent within ±{margin:g} (TOST, 5%)" if both else f"{up}; {down}")
            words.append("; ".join(p for p in parts if p))
        effects[f"{m}_claim"] = words
    return effects


def _main_arms(effects: pd.DataFrame) -> pd.DataFrame:
    """The rows the first screen answers: layer arms that are not themselves a control, plus fine-tuned − frozen."""
    e = effects.reset_index()
    return e[e["has_layer"] & (~e["is_control"] | (e["contrast"] == "fine-tuned vs frozen"))]


def _phrase(finding: str, who: str) -> str:
    """A finding as a clause about the comparator `who`."""
    if finding.startswith(("helps", "hurts")):
        return f"{'higher' if finding.startswith('helps') else 'lower'} than {who} (BH p < 0.05)"
    if finding.startswith(("higher", "lower")):
        return f"{finding.split(' ', 1)[0]} than {who} at 95% unadjusted, not after BH"
    if finding.startswith("no detectable"):
        return f"not detectably different from {who}"
    return f"{finding.split(' (', 1)[0]} against {who}" + (f" ({finding.split(' (', 1)[1]}" if " (" in finding else "")


def sentences(effects: pd.DataFrame, metric: str, labels: list[str]) -> list[str]:
    """One plain sentence per task row: what each R-LLM arm's test `metric` does against each comparator, with the
    Δ and its primary interval (the words' interval), and where the paper's Δ stands."""
    e = _main_arms(effects)
    e = e[e["contrast"] != "fine-tuned vs frozen"]
    order = {lab: i for i, lab in enumerate(labels)}
    out = []
    for row, grp in e.groupby(ROW, sort=True):
        clauses = []
        arms = sorted(grp.groupby(["label", "arm"], sort=False), key=lambda x: (order.get(x[0][0], len(order)), x[0][1]))
        for (label, arm), g in arms:
            said, claims = [], []
            for r in sorted(g.to_dict("records"), key=lambda r: list(WHO).index(r["contrast"])):
                who = WHO[r["contrast"]] + ("" if r["contrast"] == "vs baseline" else f" ({r['comparator']})")
                said.append(f"{_phrase(r[f'{metric}_finding'], who)}, "
                            f"{fmt_delta(r[f'{metric}_mean'], r[f'{metric}_low'], r[f'{metric}_high'])}")
                if r.get(f"{metric}_claim"):
                    claims.append(r[f"{metric}_claim"])
            clauses.append(f"{label}{' · ' + arm if arm else ''} is " + "; ".join(said)
                           + (f" ({'; '.join(claims)})" if claims else ""))
        out.append(f"{row_name(*row)}, test {NAMES[metric]}: " + ". ".join(clauses) + ".")
    return out


POOLED_NOTE = ("Per contrast, the per-task Δs pooled by inverse variance (each Δ's se: sqrt(s²/n + c), the "
               "primary test's): fixed effect (one "
               "true Δ shared by the tasks) and random effects (DerSimonian–Laird τ²: the tasks' true Δs differ), "
               "95% z interval and two-sided p; signs: tasks with Δ > 0 / < 0. Tasks are independent test sets; "
               "each contrast is one estimate per metric (no BH across them).")


def pooled_rows(effects: pd.DataFrame) -> pd.DataFrame:
    """Per (contrast, label, arm, comparator) present on two or more task rows and metric: the pooled estimates."""
    e = effects.reset_index()
    rows = []
    for key, g in e.groupby(["contrast", "label", "arm", "comparator"], sort=True):
        for m in METRICS:
            p = pooled(g[f"{m}_mean"], g[f"{m}_se"])
            if p["k"] >= 2:
                rows.append({"contrast": key[0], "label": key[1], "arm": key[2], "comparator": key[3], "metric": m,
                             **p})
    return pd.DataFrame(rows)


def pooled_table(p: pd.DataFrame) -> Table | None:
    if p.empty:
        return None
    lines = [{"contrast": r["contrast"], "arm": r["label"] + (f" · {r['arm']}" if r["arm"] else ""),
              "comparator": r["comparator"], "metric": NAMES[r["metric"]], "tasks": str(r["k"]),
              "signs (+/−)": f"{r['positive']}/{r['negative']}",
              "fixed effect [95% CI]": fmt_delta(r["fixed"], r["fixed_low"], r["fixed_high"]),
              "p (fixed)": fmt_p(r["fixed_p"]),
              "random effects [95% CI]": fmt_delta(r["random"], r["random_low"], r["random_high"]),
              "p (random)": fmt_p(r["random_p"]), "τ²": f"{r['tau2']:.2g}"} for r in p.to_dict("records")]
    return Table("Across tasks: pooled Δ per contrast (arm − comparator)", pd.DataFrame(lines), note=POOLED_NOTE,
                 collapse=len(lines) > 40)


def forest(effects: pd.DataFrame, p: pd.DataFrame, metric: str, folder: Path) -> Plot | Skipped:
    """Per contrast of an R-LLM arm pooled over tasks: each task's Δ with its primary interval, then the pooled ones."""
    title = f"Forest plot: Δ test {NAMES[metric]} per task and pooled"
    main = _main_arms(effects)
    keys = set(zip(main["contrast"], main["label"], main["arm"], main["comparator"]))
    if len(p):
        hit = np.array([k in keys for k in zip(p["contrast"], p["label"], p["arm"], p["comparator"])], dtype=bool)
        p = p[(p["metric"] == metric).to_numpy() & hit]
    if p.empty:
        return Skipped(f"{title}: skipped, no R-LLM contrast is on two or more tasks.")
    e = effects.reset_index()
    fig, axes = plt.subplots(len(p), 1, figsize=(7.5, sum(1.0 + 0.32 * (r["k"] + 2) for _, r in p.iterrows())),
                             squeeze=False)
    for ax, r in zip(axes[:, 0], p.to_dict("records")):
        g = e[(e["contrast"] == r["contrast"]) & (e["label"] == r["label"]) & (e["arm"] == r["arm"])
              & (e["comparator"] == r["comparator"])].dropna(subset=[f"{metric}_low"])
        names = [row_name(*x) for x in g[ROW].itertuples(index=False)] + ["pooled, fixed", "pooled, random"]
        mean = [*g[f"{metric}_mean"], r["fixed"], r["random"]]
        lo = [*g[f"{metric}_low"], r["fixed_low"], r["random_low"]]
        hi = [*g[f"{metric}_high"], r["fixed_high"], r["random_high"]]
        y = np.arange(len(names))[::-1]
        for i in range(len(names)):
            pooled_ = i >= len(g)
            ax.plot([lo[i], hi[i]], [y[i], y[i]], color="black" if pooled_ else "tab:blue", lw=2 if pooled_ else 1.2)
            ax.plot(mean[i], y[i], "D" if pooled_ else "s", color="black" if pooled_ else "tab:blue", ms=5)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_yticks(y, names, fontsize=8)
        ax.set_title(f"{r['label']}{' · ' + r['arm'] if r['arm'] else ''} {r['contrast']} ({r['comparator']})",
                     fontsize=9)
        ax.set_xlabel(f"Δ test {NAMES[metric]} [primary 95% CI]", fontsize=8)
    fig.tight_layout()
    stem = f"forest_{metric}"
    _save(fig, folder, stem)
    return Plot(title, stem, "Squares: each task's Δ with its primary 95% interval (the one the words use); "
                             "diamonds: the pooled fixed- and random-effects estimates. " + POOLED_NOTE)


def claims_table(effects: pd.DataFrame) -> Table | None:
    """Every contrast with a statement about the paper's Δ or the margin: the one-sided bounds and the words."""
    e = effects.reset_index()
    lines = []
    for r in e.to_dict("records"):
        for m in METRICS:
            if r.get(f"{m}_claim"):
                lines.append({"task · size": row_name(r["task"], r["size"], r["setting"]), "contrast": r["contrast"],
                              "arm": r["label"] + (f" · {r['arm']}" if r["arm"] else ""),
                              "comparator": r["comparator"], "metric": NAMES[m],
                              "Δ": f"{r[f'{m}_mean']:+.3f}",
                              "excluded (one-sided 95%)": (f"Δ < {r[f'{m}_lower1']:+.3f} and Δ > "
                                                           f"{r[f'{m}_upper1']:+.3f}")
                              if pd.notna(r[f"{m}_lower1"]) else MISSING,
                              "statement": r[f"{m}_claim"]})
    if not lines:
        return None
    return Table("What the data rule out: the paper's Δ (and the --margin) against the one-sided 95% bounds",
                 pd.DataFrame(lines), collapse=len(lines) > 40,
                 note="One-sided 95% bounds of the primary interval (each is one side of TOST at 5%): a true Δ below "
                      "the lower or above the upper bound is ruled out. 'Beyond this design's reach': inside the bounds "
                      "but smaller than the MDE (α = 0.05 unadjusted, power 0.8), so this design cannot tell it from 0.")
