"""Display tables built from the statistics, and their Markdown, LaTeX and HTML renderings.

A `Table` holds display strings plus an optional mask of cells to embolden (the best per task), so
the three formats show exactly the same content. Missing values are shown as MISSING, never as 0.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

from bench.models.registry import baselines
from bench.report.stats import AXES, METRICS, ROW, layer_position

MISSING = "—"
NAMES = {"acc": "ACC", "auc": "AUC"}


@dataclass
class Table:
    title: str
    df: pd.DataFrame  # display strings; the index is not rendered
    bold: pd.DataFrame | None = None  # same shape as df, True where the cell is emboldened
    note: str = ""
    collapse: bool = False  # long lists: folded on the HTML page


class Callout(str):
    """A paragraph the page highlights (the run counts)."""


@dataclass
class Section:
    """A titled part of the report; blocks are paragraphs (str), Tables, Plots or Skipped notes, in order."""

    title: str
    blocks: list = field(default_factory=list)


# ----------------------------------------------------------------------------- formatting
def _ok(x) -> bool:
    return x is not None and not pd.isna(x)


def fmt_stat(mean, std, n, ok=None, planned=None) -> str:
    """'0.912 ± 0.010 (n=3)' with n seeds; the std is omitted for one seed; '; 2/3 runs ok' when runs
    of the cell failed or are missing."""
    runs = f"{int(ok)}/{int(planned)} runs ok" if planned is not None and int(ok) != int(planned) else ""
    if not _ok(mean):
        return f"{MISSING} ({runs})" if runs else MISSING
    spread = f" ± {std:.3f}" if _ok(std) else ""
    return f"{mean:.3f}{spread} (n={int(n)}" + (f"; {runs})" if runs else ")")


def fmt_delta(mean, lo, hi) -> str:
    if not _ok(mean):
        return MISSING
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" if _ok(lo) else f"{mean:+.3f}"


def fmt_p(p) -> str:
    return f"{p:.3g}" if _ok(p) else MISSING


def row_name(task, size, setting="") -> str:
    return f"{task} · {size}" + (f" · {setting}" if setting else "")


def label_order(labels) -> list[str]:
    """Baseline first, then the labels in the order the grid lists them."""
    seen = list(dict.fromkeys(labels))
    return sorted(seen, key=lambda x: (x != "baseline", seen.index(x)))


# ----------------------------------------------------------------------------- builders
def metric_matrix(summary: pd.DataFrame, metric: str, labels: list[str]) -> Table:
    """Task rows × variant columns of test `metric`; blank where the grid has no such run."""
    s = summary.assign(row=[row_name(*r) for r in summary[ROW].itertuples(index=False)])
    rows = list(dict.fromkeys(s["row"]))
    df = pd.DataFrame("", index=rows, columns=labels)
    bold = pd.DataFrame(False, index=rows, columns=labels)
    for r in s.itertuples(index=False):
        rec = r._asdict()
        df.loc[rec["row"], rec["label"]] = fmt_stat(rec[f"{metric}_mean"], rec[f"{metric}_std"], rec[f"{metric}_n"],
                                                    rec["ok"], rec["planned"])
        bold.loc[rec["row"], rec["label"]] = bool(rec[f"best_{metric}"])
    df.insert(0, "task · size", rows)
    bold.insert(0, "task · size", False)
    return Table(f"Test {NAMES[metric]}: mean ± std over seeds (best per task in bold)", df, bold,
                 "n = seeds with an ok run; blank = not in the grid.")


def delta_table(summary: pd.DataFrame, labels: list[str]) -> Table:
    rows = []
    variants = summary[~summary["booster.variant"].isin(baselines())]
    variants = variants.assign(order=variants["label"].map(labels.index)).sort_values(ROW + ["order"])
    for r in variants.to_dict("records"):
        row = {"task · size": row_name(r["task"], r["size"], r["setting"]), "variant": r["label"],
               "pairs": str(r["delta_acc_n_pairs"])}
        for m, name in NAMES.items():
            row[f"Δ{name} [seed-only t 95% CI]"] = fmt_delta(r[f"delta_{m}_mean"], r[f"delta_{m}_ci_low"],
                                                            r[f"delta_{m}_ci_high"])
            row[f"p ({name})"] = fmt_p(r[f"delta_{m}_p"])
            row[f"p BH ({name})"] = fmt_p(r[f"delta_{m}_p_bh"])
        rows.append(row)
    return Table("Δ vs baseline per variant label: mean of paired per-seed differences (variant − baseline), paired t "
                 "over seeds only (the primary intervals, with the test images: Paired contrasts)", pd.DataFrame(rows))


def paper_table(ours: pd.DataFrame, published: pd.DataFrame, dims: str) -> Table:
    """Our cells that are one of Lai et al.'s variants, next to every published row for the same task.

    `ours`: ok runs with paper_variant/paper_model (bench.report.published), `dims` '2D' or '3D'.
    """
    keys = ROW + ["label", "arm", "paper_variant"]
    per_seed = ours.groupby(keys + ["seed"], sort=True)[["test_acc", "test_auc"]].mean()
    stats = per_seed.groupby(level=keys, sort=True).agg(["mean", "std", "count"])
    stats.columns = [f"{col}_{stat}" for col, stat in stats.columns]
    first = ours.groupby(keys, sort=True)[["vit.arch", "paper_model"]].first()  # first non-null of each
    cells = stats.join(first).reset_index()
    rows = []
    for task in sorted(set(cells["task"])):
        for key in cells[cells["task"] == task].to_dict("records"):
            model, label, arm, variant = key["paper_model"], key["label"], key["arm"], key["paper_variant"]
            rows.append({"task": task, "model": f"ours: vit.arch={key['vit.arch']}"
                         + (f" (= {model})" if pd.notna(model) else ""),
                         "variant": variant + (f" · {label}" if label != variant else "") + (f" · {arm}" if arm else ""),
                         **{name: fmt_stat(key[f"{m}_mean"], key[f"{m}_std"], key[f"{m}_count"])
                            for name, m in (("ACC", "test_acc"), ("AUC", "test_auc"))},
                         "source": f"this grid, size {key['size']}" + (f", {key['setting']}" if key["setting"] else "")})
        pub = published[published["task"] == task]
        for (table, model, variant), g in pub.groupby(["table", "model", "variant"], sort=False):
            vals = dict(zip(g["metric"], g["value"]))
            rows.append({"task": task, "model": model, "variant": variant,
                         "ACC": f"{vals['acc']:.4f}" if "acc" in vals else MISSING,
                         "AUC": f"{vals['auc']:.4f}" if "auc" in vals else MISSING,
                         "source": f"{g.iloc[0]['source'].split(',')[0]}, {table}"
                         + ("; " + "; ".join(n for n in g["note"] if n) if g["note"].any() else "")})
    return Table(f"{dims}: ours vs published (Lai et al. Tables {'1-2' if dims == '2D' else '3-6'}, MedMNIST v2)",
                 pd.DataFrame(rows, columns=["task", "model", "variant", "ACC", "AUC", "source"]), collapse=len(rows) > 60,
                 note="Published cells are single numbers as printed; ours are mean ± std over seeds (test at the "
                      "best-val epoch). Our rows are matched to the paper's by config: ViT-S = vit.arch small with "
                      "vit.paper_mode; ViT-3D = vit3d-m; ViViT-S/M = vivit-s/m; variants by booster settings.")


def fmt_effect(mean, lo, hi, p_bh, mde) -> str:
    """'+0.012 [-0.010, +0.034]', and '; MDE 0.041' when the Δ is not significant (BH p ≥ 0.05 or no p)."""
    text = fmt_delta(mean, lo, hi)
    if _ok(mean) and _ok(mde) and not (_ok(p_bh) and p_bh < 0.05):
        text += f" (MDE {mde:.3f})"
    return text


def fmt_mde(mde, note="") -> str:
    """'0.034', or '— (no spread)' / '— (n < 2)' where the MDE is undefined."""
    return f"{mde:.3f}" if _ok(mde) else (f"{MISSING} ({note})" if _ok(note) and note else MISSING)


def _ours(r: dict) -> str:
    return r["label"] + (f" · {r['arm']}" if r["arm"] else "")


FINDING_COLUMNS = {"vs baseline": "vs baseline", "vs capacity control": "vs capacity control",
                   "vs random weights": "vs random weights", "fine-tuned vs frozen": "fine-tuned − this (frozen)"}


def findings_table(effects: pd.DataFrame, labels: list[str]) -> Table | None:
    """The first screen: per task, R-LLM arm and metric, the finding against each control with Δ [primary 95% CI].

    Rows are the rllm arms that are not themselves a control (not random-init, not fine-tuned) with at least one
    contrast; a fine-tuned arm's contrast is shown on the row of the frozen arm it is compared with."""
    if effects.empty:
        return None
    e = effects.reset_index()
    e = e[e["has_layer"]] if "has_layer" in e else e.iloc[0:0]
    if e.empty:
        return None
    key = ROW + ["label", "arm"]
    rows: dict = {}
    for r in e.to_dict("records"):
        if r["contrast"] == "fine-tuned vs frozen":  # shown on the frozen comparator's row
            label, _, arm = r["comparator"].partition(" · ")
            k = (r["task"], r["size"], r["setting"], label, arm)
        elif r["is_control"]:
            continue
        else:
            k = tuple(r[c] for c in key)
        for m, name in NAMES.items():
            cell = (f"{r[f'{m}_finding']}: " + fmt_delta(r[f"{m}_mean"], r[f"{m}_low"], r[f"{m}_high"])
                    + f" (n={r[f'{m}_n']}, BH family of {r[f'{m}_family']}"
                    + (f", vs {r['comparator']})" if r["contrast"] != "vs baseline" else ")"))
            if r.get(f"{m}_claim"):
                cell += f"; {r[f'{m}_claim']}"
            if r["contrast"] == "fine-tuned vs frozen":
                cell += f" [{_ours(r)}]"
            rows.setdefault((*k, name), {})[r["contrast"]] = cell
    if not rows:
        return None
    order = {lab: i for i, lab in enumerate(labels)}
    out = []
    for k in sorted(rows, key=lambda k: (k[0], k[1], k[2], order.get(k[3], len(order)), k[4], k[5])):
        out.append({"task · size": row_name(k[0], k[1], k[2]), "R-LLM arm": k[3] + (f" · {k[4]}" if k[4] else ""),
                    "metric": k[5], **{col: rows[k].get(c, MISSING) for c, col in FINDING_COLUMNS.items()}})
    return Table("Does the pretrained layer help? Each R-LLM arm against its controls (paired by seed)",
                 pd.DataFrame(out), collapse=len(out) > 60)


def effects_table(effects: pd.DataFrame, labels: list[str]) -> Table:
    """Every contrast: Δ with its primary interval, BH p (within the contrast's family), MDE and the seed-only t CI."""
    rows = []
    e = effects.reset_index()
    e = e.assign(order=e["label"].map(lambda x: labels.index(x) if x in labels else len(labels)),
                 corder=e["contrast"].map(list(FINDING_COLUMNS).index))
    for r in e.sort_values(ROW + ["corder", "order", "arm", "comparator"]).to_dict("records"):
        row = {"task · size": row_name(r["task"], r["size"], r["setting"]), "contrast": r["contrast"],
               "arm": _ours(r), "comparator": r["comparator"], "pairs": str(r["auc_n"])}
        for m, name in NAMES.items():
            row[f"Δ{name} [95% CI]"] = fmt_delta(r[f"{m}_mean"], r[f"{m}_low"], r[f"{m}_high"]) + (
                " (seeds only)" if r[f"{m}_parts"] == "seeds only" and _ok(r[f"{m}_low"]) else "")
            row[f"p BH ({name})"] = fmt_p(r[f"{m}_p_bh"])
            row[f"MDE α=0.05 ({name})"] = fmt_mde(r[f"{m}_mde"], r[f"{m}_mde_note"])
            row[f"ruled out, one-sided 95% ({name})"] = (f"Δ < {r[f'{m}_lower1']:+.3f}, Δ > {r[f'{m}_upper1']:+.3f}"
                                                       if _ok(r.get(f"{m}_lower1")) else MISSING)
            row[f"{name} paired t, seeds only"] = fmt_delta(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"])
        rows.append(row)
    return Table("Paired contrasts: every arm vs its baseline, every R-LLM arm vs its controls (arm − comparator, "
                 "per seed)", pd.DataFrame(rows), collapse=len(rows) > 40,
                 note="95% CI: the primary interval (seeds and test images); p BH within the contrast's family, per "
                      "metric; MDE at α = 0.05 unadjusted, power 0.8; ruled out: the largest loss and gain the data "
                      "exclude (the primary test's one-sided 95% bounds, TOST); the last columns: the paired t interval "
                      "over seeds only, which leaves out the test-image sampling (the words follow the primary).")


def verdict_table(v: pd.DataFrame) -> Table:
    rows = []
    for r in v.sort_values(["scope", "task", "variant", "paper_model", "label", "arm", "metric"],
                           ascending=[False, True, True, True, True, True, True]).to_dict("records"):
        rows.append({
            "task · size": row_name(r["task"], r["size"], r["setting"]),
            "claim": f"{r['variant']} ({r['tables']}, {r['paper_model']})", "ours": _ours(r),
            "setting": r["scope"], "metric": NAMES[r["metric"]], "paper Δ (one run)": f"{r['paper_delta']:+.4f}",
            "our Δ, paper protocol (mean)": f"{r['audit_mean']:+.4f}" if _ok(r["audit_mean"]) else MISSING,
            "95% PI for one run": f"[{r['pi_low']:+.4f}, {r['pi_high']:+.4f}]" if _ok(r["pi_low"]) else MISSING,
            "n": str(int(r["audit_n"])) if _ok(r["audit_n"]) else "0",
            "verdict": r["verdict"],
            "our Δ, honest [95% CI]": fmt_delta(r["honest_mean"], r["honest_low"], r["honest_high"]),
            "deviations from the paper's setting": r["deviations"] or "none"})
    return Table("Reproduction verdicts: Lai et al.'s single-run Δ vs our prediction interval for one run under the "
                 "paper's protocol", pd.DataFrame(rows), collapse=len(rows) > 40)


def audit_table(v: pd.DataFrame) -> Table:
    """Published value, ours under the paper's protocol, ours honest, and the gap (selection bias)."""
    rows = []
    keys = ["task", "size", "setting", "metric", "paper_model", "backbone"]
    for r in v.sort_values(keys + ["variant", "label", "arm"]).to_dict("records"):
        for variant, ours, pub, audit, honest in (
                ("baseline", "baseline", r["paper_base"], r["audit_base"], r["honest_base"]),
                (r["variant"], r["label"] + (f" · {r['arm']}" if r["arm"] else ""), r["paper_value"],
                 r["audit_value"], r["honest_value"])):
            rows.append({"task · size": row_name(r["task"], r["size"], r["setting"]), "metric": NAMES[r["metric"]],
                         "paper model": r["paper_model"], "backbone": r["backbone"], "variant": variant, "ours": ours,
                         "published": f"{pub:.4f}", "ours, paper protocol": f"{audit:.4f}" if _ok(audit) else MISSING,
                         "ours, honest": f"{honest:.4f}" if _ok(honest) else MISSING,
                         "selection bias": f"{audit - honest:+.4f}" if _ok(audit) and _ok(honest) else MISSING})
    df = pd.DataFrame(rows).drop_duplicates()
    return Table("Protocol audit: published vs ours under the paper's protocol vs ours honest", df,
                 collapse=len(df) > 40,
                 note="Ours are means over seeds. Paper protocol = max over epochs of test ACC and, separately, of "
                      "test AUC (the paper's selection on test); honest = test at the best-val epoch. Selection bias = "
                      "paper protocol − honest, measured on the same runs.")


def ablation_table(data: pd.DataFrame, axis: str, metric: str, summary: pd.DataFrame) -> Table:
    """Rows = task (and LLM for the layer axis); columns = baseline level, then the paired Δ of each axis value."""
    keys = ROW + (["llm"] if axis == "llm.layers" else [])
    order = data.drop_duplicates("value")
    if axis == "llm.layers":
        order = order.assign(x=layer_position(order["value"])).sort_values("x")
    values = [str(v) for v in order["value"]]
    base = summary[summary["booster.variant"].isin(baselines())].drop_duplicates(ROW).set_index(ROW)
    rows = []
    for key, grp in data.groupby(keys, sort=True):
        row = {"task · size": row_name(*key[:3])}
        if axis == "llm.layers":
            row["LLM"] = key[3]
        b = base.loc[key[:3]] if key[:3] in base.index else None
        row["baseline"] = fmt_stat(b[f"{metric}_mean"], b[f"{metric}_std"], b[f"{metric}_n"]) if b is not None else ""
        for v in values:
            hit = grp[grp["value"].astype(str) == v]
            if len(hit):
                h = hit.iloc[0]
                row[v] = fmt_effect(h["mean"], h["ci_low"], h["ci_high"], h["p_t"], h["mde_t"]) + f" (n={int(h['n'])})"
            else:
                row[v] = ""
        rows.append(row)
    return Table(f"Ablation: {AXES[axis]} ({axis}) — paired Δ test {NAMES[metric]} vs the matching baseline",
                 pd.DataFrame(rows), note="Each value: mean over seeds of (run − baseline of the same seed) [paired-t 95% "
                 "CI] (n pairs); MDE next to Δs whose unadjusted p ≥ 0.05. The baseline column is its level.")


def runs_table(title: str, runs: pd.DataFrame, with_error: bool = False, collapse: bool = False) -> Table:
    cols = ["run_id", "label", "task", "size", "seed"] + (["error"] if with_error else [])
    df = runs[cols].astype(object).where(runs[cols].notna(), "").astype(str)
    return Table(title, df.reset_index(drop=True), collapse=collapse)


def sources_table(published: pd.DataFrame) -> Table:
    src = published.groupby(["source", "table", "url", "read_via"], sort=False).size().reset_index(name="values")
    src["values"] = src["values"].astype(str)
    return Table("Sources of the published numbers (bench/report/published.csv)", src)


# ----------------------------------------------------------------------------- renderers
def _bold(t: Table, i: int, j: int) -> bool:
    return t.bold is not None and bool(t.bold.iat[i, j])


def to_markdown(t: Table) -> str:
    def cell(i, j):
        text = str(t.df.iat[i, j]).replace("|", "\\|").replace("\n", " ")
        return f"**{text}**" if text and _bold(t, i, j) else text

    head = "| " + " | ".join(str(c) for c in t.df.columns) + " |"
    sep = "|" + "|".join("---" for _ in t.df.columns) + "|"
    body = ["| " + " | ".join(cell(i, j) for j in range(t.df.shape[1])) + " |" for i in range(len(t.df))]
    parts = [f"### {t.title}", "", head, sep, *body]
    return "\n".join(parts + (["", f"_{t.note}_"] if t.note else []))


def to_html(t: Table) -> str:
    def cell(i, j):
        text = html.escape(str(t.df.iat[i, j]))
        return f"<td><strong>{text}</strong></td>" if text and _bold(t, i, j) else f"<td>{text}</td>"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.df.columns)
    body = "".join("<tr>" + "".join(cell(i, j) for j in range(t.df.shape[1])) + "</tr>" for i in range(len(t.df)))
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    table = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{note}'
    if t.collapse:
        return f"<details><summary><h3>{html.escape(t.title)}</h3></summary>{table}</details>"
    return f"<h3>{html.escape(t.title)}</h3>{table}"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_UNICODE = {"±": r"$\pm$", "—": "---", "–": "--", "Δ": r"$\Delta$", "·": r"$\cdot$", "−": "-",
                "×": r"$\times$", "…": r"\ldots{}", "≥": r"$\geq$", "≤": r"$\leq$", "α": r"$\alpha$"}


_TEX = str.maketrans({**_TEX_SPECIAL, **_TEX_UNICODE})  # one pass, as no special's replacement holds a Unicode key


def tex_escape(text: str) -> str:
    return str(text).translate(_TEX)


def to_latex(t: Table) -> str:
    def cell(i, j):
        text = tex_escape(t.df.iat[i, j])
        return f"\\textbf{{{text}}}" if text and _bold(t, i, j) else text

    lines = [r"\begin{table}[ht]", r"\centering", r"\small", f"\\caption{{{tex_escape(t.title)}}}",
             r"\begin{tabular}{" + "l" * t.df.shape[1] + "}", r"\toprule",
             " & ".join(tex_escape(c) for c in t.df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(i, j) for j in range(t.df.shape[1])) + r" \\" for i in range(len(t.df))]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if t.note:
        lines.append(f"\\par\\footnotesize {tex_escape(t.note)}")
    return "\n".join(lines + [r"\end{table}"])


def summary_csv(summary: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: numbers only (NaN where missing), one row per planned cell."""
    cols = ["task", "size", "setting", "label", "booster.variant", "planned", "ok", "failed", "missing"]
    for m in METRICS:
        cols += [f"{m}_n", f"{m}_mean", f"{m}_std", f"best_{m}"]
    for m in METRICS:
        cols += [f"delta_{m}_{k}" for k in ("n_pairs", "mean", "ci_low", "ci_high", "p", "p_bh")]
    return summary[cols]
