"""Display tables built from the statistics, and their Markdown, LaTeX and HTML renderings.

A `Table` holds display strings plus an optional mask of cells to embolden (the best per task), so
the three formats show exactly the same content. Missing values are shown as MISSING, never as 0.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

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
    variants = summary[summary["booster.variant"] != "baseline"]
    variants = variants.assign(order=variants["label"].map(labels.index)).sort_values(ROW + ["order"])
    for r in variants.to_dict("records"):
        row = {"task · size": row_name(r["task"], r["size"], r["setting"]), "variant": r["label"],
               "pairs": str(r["delta_acc_n_pairs"])}
        for m, name in NAMES.items():
            row[f"Δ{name} [95% CI]"] = fmt_delta(r[f"delta_{m}_mean"], r[f"delta_{m}_ci_low"], r[f"delta_{m}_ci_high"])
            row[f"p ({name})"] = fmt_p(r[f"delta_{m}_p"])
            row[f"p BH ({name})"] = fmt_p(r[f"delta_{m}_p_bh"])
        rows.append(row)
    return Table("Δ vs baseline: mean of paired per-seed differences (variant − baseline)", pd.DataFrame(rows))


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


def effects_table(effects: pd.DataFrame, labels: list[str]) -> Table:
    """Every arm against its own baseline: paired-t and bootstrap intervals, BH p and MDE per metric."""
    rows = []
    e = effects.reset_index()
    e = e.assign(order=e["label"].map(lambda x: labels.index(x) if x in labels else len(labels)))
    for r in e.sort_values(ROW + ["order", "arm"]).to_dict("records"):
        row = {"task · size": row_name(r["task"], r["size"], r["setting"]), "variant": r["label"],
               "arm": r["arm"] or MISSING, "pairs": str(r["auc_n"])}
        for m, name in NAMES.items():
            row[f"Δ{name} [t 95% CI]"] = fmt_effect(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"],
                                                   r[f"{m}_p_bh"], r[f"{m}_mde"])
            lo, hi = r.get(f"{m}_boot_low"), r.get(f"{m}_boot_high")
            row[f"{name} bootstrap 95%"] = f"[{lo:+.3f}, {hi:+.3f}]" if _ok(lo) else MISSING
            row[f"p BH ({name})"] = fmt_p(r[f"{m}_p_bh"])
        rows.append(row)
    return Table("Paired effect of every arm vs its own baseline (variant − baseline, per seed)", pd.DataFrame(rows),
                 collapse=len(rows) > 40,
                 note="An arm is a variant with one LLM, layer and knob setting; its seed-s run is paired with the "
                      "seed-s baseline of the same data/vit/train settings. t CI over seeds; bootstrap over seeds "
                      "and test images (predictions); MDE shown next to every non-significant Δ.")


def verdict_table(v: pd.DataFrame) -> Table:
    rows = []
    for r in v.sort_values(["task", "variant", "paper_model", "label", "arm", "metric"]).to_dict("records"):
        rows.append({
            "task · size": row_name(r["task"], r["size"], r["setting"]), "claim": f"{r['variant']} ({r['tables']}, "
            f"{r['paper_model']})", "ours": r["label"] + (f" · {r['arm']}" if r["arm"] else ""),
            "backbone": r["backbone"], "metric": NAMES[r["metric"]], "paper Δ": f"{r['paper_delta']:+.4f}",
            "our Δ, paper protocol [95% CI]": fmt_delta(r["audit_mean"], r["audit_ci_low"], r["audit_ci_high"]),
            "n": str(int(r["audit_n"])) if _ok(r["audit_n"]) else "0",
            "MDE": f"{r['audit_mde']:.3f}" if _ok(r["audit_mde"]) else MISSING,
            "our Δ, honest [95% CI]": fmt_delta(r["honest_mean"], r["honest_ci_low"], r["honest_ci_high"]),
            "verdict": r["verdict"]})
    return Table("Reproduction verdicts: Lai et al.'s claimed Δ vs our paired interval under the paper's protocol",
                 pd.DataFrame(rows), collapse=len(rows) > 40)


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
    base = summary[summary["booster.variant"] == "baseline"].drop_duplicates(ROW).set_index(ROW)
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
                row[v] = fmt_effect(h["mean"], h["ci_low"], h["ci_high"], h["p"], h["mde"]) + f" (n={int(h['n'])})"
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
