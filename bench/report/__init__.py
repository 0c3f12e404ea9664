"""`make_report`: tables, paired statistics, plots and one offline HTML page for a grid's runs.

Writes into <out>/<name>/: summary.md, summary.tex, summary.csv, index.html and the plots (PNG+SVG).
Only ok runs enter the statistics; failed and missing runs are counted and listed, never imputed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.report import plots
from bench.report.collect import collect, expected_runs
from bench.report.explain import explain_sections
from bench.report.html import render_html, render_markdown
from bench.report.published import NOT_SHIPPED, load_published
from bench.report.stats import AXES, METRICS, ablation, ablation_runs, pairs, summary
from bench.report.tables import (NAMES, Callout, Section, Table, ablation_table, delta_table, label_order,
                                 metric_matrix, paper_table, runs_table, sources_table, summary_csv, to_latex)
from bench.report.tuned import tuned_section
from bench.store import read_history

__all__ = ["make_report", "expected_runs"]

PAIRING = (
    "Pairing rule: a variant run's baseline is the baseline run (booster.variant = baseline) with the same "
    "data.*, vit.* and train.* settings and the same seed; only pairs where both runs are ok count. "
    "Δ is the mean of the per-seed differences (variant − baseline) over the n paired seeds shown, with a paired-t "
    "95% confidence interval; p is the paired t-test, and 'p BH' is adjusted with Benjamini–Hochberg across "
    "every comparison in this report (all tasks × variants × both metrics). With fewer than two pairs, or "
    "identical differences, CI and p are left missing."
)
STATS = ("Cells are mean ± sample std (ddof = 1) of the test metric over seeds (n = seeds), from ok runs only; "
         "when a variant label spans several runs per seed (e.g. several LLMs or layers), each seed's value is "
         "first their mean, so seeds are the replicates. — marks a missing cell (no ok run), never a zero.")


def make_report(results: Path, out: Path, name: str = "all", metric: str = "auc",
                expected: pd.DataFrame | None = None) -> Path:
    """Write the report for the runs of `expected` (None: every stored run) and return its folder."""
    if metric not in METRICS:
        raise BenchError(f"metric '{metric}' is not one of {', '.join(METRICS)}")
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise BenchError(f"report name '{name}' must be a plain folder name, e.g. 'smoke'")
    grid = collect(Path(results), expected)
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)

    table = summary(grid)
    ok = grid[grid["status"] == "ok"]
    with plots.style():
        sections = _sections(Path(results), grid, ok, table, metric, folder)
    title = f"R-LLM bench report: {name}"
    intro = [_counts(grid, expected is not None),
             f"Store: {Path(results).resolve()}. Best, Δ plots and curves use test {NAMES[metric]}. "
             f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", STATS, PAIRING]
    (folder / "summary.md").write_text(render_markdown(title, intro, sections), encoding="utf-8")
    (folder / "index.html").write_text(render_html(title, intro, sections), encoding="utf-8")
    tables = [b for s in sections for b in s.blocks if isinstance(b, Table)]
    tex = [f"% {title}: {intro[0]}", f"% {PAIRING}", "% needs \\usepackage{booktabs}", *(to_latex(t) for t in tables)]
    (folder / "summary.tex").write_text("\n\n".join(tex) + "\n", encoding="utf-8")
    summary_csv(table).to_csv(folder / "summary.csv", index=False, na_rep="NaN")
    return folder


def _sections(results: Path, grid: pd.DataFrame, ok: pd.DataFrame, table: pd.DataFrame, metric: str,
              folder: Path) -> list[Section]:
    labels = label_order(grid["label"])
    published = load_published()
    other = next(m for m in METRICS if m != metric)
    history = read_history(results, list(ok["run_id"]))
    sections = [
        _runs_section(grid, ok),
        Section("Summary", [metric_matrix(table, metric, labels), metric_matrix(table, other, labels),
                            delta_table(table, labels), plots.delta_bars(table, metric, labels, folder),
                            plots.heatmap(table, metric, labels, folder)]),
        Section("Comparison with published numbers", [
            "Our runs use this grid's ViT, image size and schedule, which differ from the published setups: "
            "compare levels, not decimals.", paper_table(table, published), sources_table(published),
            *[f"Not shipped: {n}" for n in NOT_SHIPPED]]),
        _ablation_section(ok, table, metric, folder),
        Section("Training curves", [plots.val_curves(history, ok, metric, folder)]),
    ]
    sections[2:2] = [s for s in [tuned_section(results, grid, metric)] if s]  # after Summary, with tuned runs
    studies = plots.optuna_plots(results, folder)
    if studies:
        sections.append(Section("Optuna studies", studies))
    sections += explain_sections(folder)  # the heatmaps `bench explain` wrote into this folder
    return sections


def _counts(grid: pd.DataFrame, planned: bool) -> Callout:
    n = grid["status"].value_counts()
    total = f"{len(grid)} planned" if planned else f"{len(grid)} stored (no grid given: every stored run)"
    return Callout(f"Runs of this report: {total}: {n.get('ok', 0)} ok, {n.get('failed', 0)} failed, "
                   f"{n.get('missing', 0)} missing. Only ok runs enter the statistics.")


def _runs_section(grid: pd.DataFrame, ok: pd.DataFrame) -> Section:
    blocks = []
    failed, missing = grid[grid["status"] == "failed"], grid[grid["status"] == "missing"]
    if len(failed):
        blocks.append(runs_table(f"Excluded: {len(failed)} failed runs", failed, with_error=True))
    if len(missing):
        blocks.append(runs_table(f"Excluded: {len(missing)} missing runs (planned, not stored)", missing,
                                 collapse=len(missing) > 20))
    variants = ok[ok["booster.variant"] != "baseline"]
    unpaired = variants[~variants["run_id"].isin(pairs(ok)["run_id"])]
    if len(unpaired):
        blocks.append(runs_table(f"{len(unpaired)} ok variant runs without an ok baseline (not in any Δ)", unpaired,
                                 collapse=len(unpaired) > 20))
    if not blocks:
        blocks.append("No run was excluded: every run of the grid is ok and paired.")
    versions = [c for c in ("git_sha", "torch_version", "timm_version", "transformers_version", "medmnist_version",
                            "device") if c in ok.columns and ok[c].notna().any()]
    if versions:
        blocks.append("Provenance of the ok runs: " + "; ".join(
            f"{c} = {', '.join(sorted(ok[c].dropna().astype(str).unique()))}" for c in versions) + ".")
    return Section("Runs", blocks)


def _ablation_section(ok: pd.DataFrame, table: pd.DataFrame, metric: str, folder: Path) -> Section:
    blocks, flat = [], []
    for axis in AXES:
        runs = ablation_runs(ok, axis)
        if runs is None:
            flat.append(axis)
        else:
            blocks.append(ablation_table(ablation(runs, axis, metric), axis, metric, table))
    if flat:
        blocks.append(f"Axes without a table (no two ok rllm runs differ only in them): {', '.join(flat)}.")
    blocks.insert(0, "Each table compares ok rllm runs that differ only in that axis: the other LLM knobs are at "
                     "the R-LLM defaults and the LLM, its layer and block length fixed at the setting where the axis "
                     "was swept (the layer table is per LLM). The baseline column is the ok baseline cell of the task.")
    blocks.append(plots.layer_curve(ablation_runs(ok, "llm.layers"), metric, folder))
    blocks.append(plots.llm_size_curve(ablation_runs(ok, "llm"), metric, folder))
    return Section("Ablations", blocks)
