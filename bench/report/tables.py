"""Display tables built from the statistics, and their Markdown, LaTeX and HTML renderings.

A `Table` holds display strings plus an optional mask of cells to embolden (the best per task), so
the three formats show exactly the same content. Missing values are shown as MISSING, never as 0.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

from bench.report.stats import AXES, METRICS, ROW, first_layer

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


def paper_table(summary: pd.DataFrame, published: pd.DataFrame) -> Table:
    """Our baseline and R-LLM next to the published rows for the same task."""
    rows = []
    for key, grp in summary.groupby(ROW, sort=True):
        name = row_name(*key)
        ours = [("ours: baseline", grp[grp["booster.variant"] == "baseline"]),
                ("ours: rllm", grp[grp["label"] == "rllm"])]
        for method, cell in ours:
            for r in cell.to_dict("records"):
                named = method if r["label"] in ("baseline", "rllm") else f"{method} ({r['label']})"
                rows.append({"task · size": name, "method": named,
                             "ACC": fmt_stat(r["acc_mean"], r["acc_std"], r["acc_n"]),
                             "AUC": fmt_stat(r["auc_mean"], r["auc_std"], r["auc_n"]), "source": "this grid"})
        pub = published[published["task"] == key[0]]
        for model, g in pub.groupby("model", sort=True):
            vals = dict(zip(g["metric"], g["value"]))
            src = g.iloc[0]
            rows.append({"task · size": name, "method": model,
                         "ACC": f"{vals['acc']:.3f}" if "acc" in vals else MISSING,
                         "AUC": f"{vals['auc']:.3f}" if "auc" in vals else MISSING,
                         "source": f"{src['source']}, {src['table']}"})
    return Table("Ours vs published: test ACC and AUC", pd.DataFrame(rows),
                 note="Published cells are single numbers as printed; ours are mean ± std over seeds.")


def ablation_table(data: pd.DataFrame, axis: str, metric: str, summary: pd.DataFrame) -> Table:
    """Rows = task (and LLM for the layer axis); columns = baseline, then each value of the axis."""
    keys = ROW + (["llm"] if axis == "llm.layers" else [])
    order = data.drop_duplicates("value")
    if axis == "llm.layers":
        order = order.assign(x=first_layer(order["value"])).sort_values("x")
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
            row[v] = fmt_stat(*hit.iloc[0][["mean", "std", "n"]]) if len(hit) else ""
        rows.append(row)
    return Table(f"Ablation: {AXES[axis]} ({axis}) — test {NAMES[metric]} mean ± std", pd.DataFrame(rows))


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
                "×": r"$\times$", "…": r"\ldots{}"}


def tex_escape(text: str) -> str:
    out = "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))
    return "".join(_TEX_UNICODE.get(ch, ch) for ch in out)


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
