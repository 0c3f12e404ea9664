"""`make_report`: tables, paired statistics, plots and one offline HTML page for a grid's runs.

Writes into <out>/<name>/: summary.md, summary.tex, summary.csv, index.html and the plots (PNG+SVG).
Only ok runs enter the statistics; failed and missing runs are counted and listed, never imputed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.report import bootstrap, plots
from bench.report.collect import collect, expected_runs
from bench.report.effects import add_arms, axis_deltas, cell_effects
from bench.report.explain import explain_sections
from bench.report.html import render_html, render_markdown
from bench.report.published import NOT_SHIPPED, load_published, paper_model, paper_variant
from bench.report.robustness import robustness_section
from bench.report.stats import AXES, METRICS, ROW, ablation_runs, pairs, summary
from bench.report.tables import (NAMES, Callout, Section, Table, ablation_table, audit_table, delta_table,
                                 effects_table, label_order, metric_matrix, paper_table, runs_table, sources_table,
                                 summary_csv, to_latex, verdict_table)
from bench.report.tokens import tokens_section
from bench.report.tuned import tuned_section
from bench.report.verdict import RULES, verdicts
from bench.store import read_history

__all__ = ["make_report", "expected_runs"]

PAIRING = (
    "Pairing rule: a variant run's baseline is the baseline run (booster.variant = baseline) with the same "
    "data.*, vit.* and train.* settings and the same seed; only pairs where both runs are ok count. "
    "Δ is the mean of the per-seed differences (variant − baseline) over the n paired seeds shown, with a paired-t "
    "95% confidence interval; p is the paired t-test. With fewer than two pairs, or identical differences, CI and p "
    "are left missing. Benjamini–Hochberg families (p BH), each kept per metric (ACC and AUC are separate "
    "families): (1) the Summary's Δ table, every variant label × task row; (2) the per-arm table, every arm × "
    "task row. Ablation tables show unadjusted intervals."
)
MDE = ("MDE: the smallest |Δ| a two-sided paired t-test (α = 0.05) detects with power 0.8 given n pairs and the "
       "observed sd of the paired differences (noncentral t).")


def bootstrap_text(replicates: int) -> str:
    if not replicates:
        return f"Bootstrap: off (bench report --replicates 0): no bootstrap intervals. {MDE}"
    return (f"Bootstrap: {replicates} replicates per arm with ≥ 2 paired seeds; each replicate resamples the "
            "seeds, then the test images within each drawn seed (the same images for the variant run and its "
            "baseline), and takes the mean over drawn seeds of the paired metric difference; the interval is the "
            f"2.5–97.5 percentile. Random stream: numpy default_rng([{bootstrap.SEED}, "
            f"crc32('task|size|setting|seeds')]), shared by the arms of a row. {MDE}")
STATS = ("Cells are mean ± sample std (ddof = 1) of the test metric over seeds (n = seeds), from ok runs only; "
         "when a variant label spans several runs per seed (e.g. several LLMs or layers), each seed's value is "
         "first their mean, so seeds are the replicates. — marks a missing cell (no ok run), never a zero.")


def make_report(results: Path, out: Path, name: str = "all", metric: str = "auc",
                expected: pd.DataFrame | None = None, replicates: int = bootstrap.REPLICATES) -> Path:
    """Write the report for the runs of `expected` (None: every stored run) and return its folder; `replicates`
    of the seeds × images bootstrap per arm (0: none; its time grows with test-set size × arms)."""
    if metric not in METRICS:
        raise BenchError(f"metric '{metric}' is not one of {', '.join(METRICS)}")
    if replicates != 0 and replicates < 100:
        raise BenchError(f"--replicates {replicates}: give 0 (no bootstrap) or at least 100 (default "
                         f"{bootstrap.REPLICATES}); fewer cannot place a 95% interval's 2.5 and 97.5 percentiles")
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise BenchError(f"report name '{name}' must be a plain folder name, e.g. 'smoke'")
    grid = collect(Path(results), expected)
    folder = Path(out) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".write-check").touch()
        (folder / ".write-check").unlink()
    except OSError as e:
        raise BenchError(f"cannot write the report into {folder} ({e.strerror or type(e).__name__}): pass --out a "
                         "folder you can write to") from None

    table = summary(grid)
    ok = add_arms(grid[grid["status"] == "ok"])
    with plots.style():
        sections = _sections(Path(results), grid, ok, table, metric, folder, replicates)
    title = f"R-LLM bench report: {name}"
    intro = [_counts(grid, expected is not None),
             f"Store: {Path(results).resolve()}. Best, Δ plots and curves use test {NAMES[metric]}. "
             f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC."]
    (folder / "summary.md").write_text(render_markdown(title, intro, sections), encoding="utf-8")
    (folder / "index.html").write_text(render_html(title, intro, sections), encoding="utf-8")
    tables = [b for s in sections for b in s.blocks if isinstance(b, Table)]
    tex = [f"% {title}: {intro[0]}", f"% {PAIRING}", f"% {bootstrap_text(replicates)}", "% needs \\usepackage{booktabs}", *(to_latex(t) for t in tables)]
    (folder / "summary.tex").write_text("\n\n".join(tex) + "\n", encoding="utf-8")
    summary_csv(table).to_csv(folder / "summary.csv", index=False, na_rep="NaN")
    return folder


def _write_numbers(folder: Path, effects: pd.DataFrame, v: pd.DataFrame) -> None:
    """effects.csv (every arm vs its baseline) and verdicts.csv: the numbers behind the tables, unrounded."""
    effects.assign(seeds=effects["seeds"].map(lambda s: " ".join(map(str, s)))).reset_index().to_csv(
        folder / "effects.csv", index=False, na_rep="NaN")
    v.to_csv(folder / "verdicts.csv", index=False, na_rep="NaN")


def _sections(results: Path, grid: pd.DataFrame, ok: pd.DataFrame, table: pd.DataFrame, metric: str,
              folder: Path, replicates: int) -> list[Section]:
    labels = label_order(grid["label"])
    published = load_published()
    other = next(m for m in METRICS if m != metric)
    effects = cell_effects(ok, results if replicates else None, replicates)
    v = verdicts(results, ok, effects, published)
    _write_numbers(folder, effects, v)
    sections = [
        _verdict_section(v),
        _runs_section(grid, ok),
        Section("Summary", [metric_matrix(table, metric, labels), metric_matrix(table, other, labels),
                            delta_table(table, labels), plots.delta_bars(table, metric, labels, folder),
                            plots.heatmap(table, metric, labels, folder)]),
        Section("Paired effects per arm", [PAIRING, bootstrap_text(replicates), effects_table(effects, labels)]),
        _published_section(ok, published),
        _ablation_section(ok, table, metric, folder),
        Section("Training curves", [plots.val_curves(_curve_history(results, ok), ok, metric, folder)]),
    ]
    sections[3:3] = [s for s in [tuned_section(results, grid, metric)] if s]  # after Summary, with tuned runs
    studies = plots.optuna_plots(results, folder)
    if studies:
        sections.append(Section("Optuna studies", studies))
    sections += [s for s in (robustness_section(results, ok, folder), tokens_section(results, ok, folder)) if s]
    sections += explain_sections(folder)  # the heatmaps `bench explain` wrote into this folder
    return sections


def _verdict_section(v: pd.DataFrame) -> Section:
    """First screen: each of Lai et al.'s claims (Tables 1, 3, 5, 6) against our interval, and the protocol audit."""
    title = "Reproduction of Lai et al. (CVPRW 2024)"
    if v.empty:
        return Section(title, ["No ok run of this report is one of Lai et al.'s variants (baseline, R-LLM, +MLP, "
                               "fine-tuned, residual out/hybrid) with its baseline on one of their tasks: no claim to check.",
                               RULES])
    counts = v["verdict"].value_counts()
    on_own = v[v["backbone"] == "the paper's"]
    own = on_own["verdict"].value_counts()
    summary_line = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("consistent", "contradicted", "inconclusive", "no audit"))
    return Section(title, [
        Callout(f"{len(v)} claim checks: {summary_line} ({len(on_own)} on the paper's own "
                f"backbone: " + ", ".join(f"{own.get(k, 0)} {k}" for k in ("consistent", "contradicted", "inconclusive",
                                                                          "no audit")) + ")."),
        RULES, verdict_table(v), audit_table(v)])


def _published_section(ok: pd.DataFrame, published: pd.DataFrame) -> Section:
    ours = ok.assign(paper_variant=paper_variant(ok), paper_model=paper_model(ok))
    ours = ours[ours["paper_variant"].notna()]
    blocks = ["Our runs use this grid's ViT, image size and schedule; rows on another backbone than the published "
              "one compare levels, not decimals."]
    for dims, is_3d in (("2D", False), ("3D", True)):
        tasks = sorted({t for t in ok["task"].dropna().unique() if str(t).endswith("3d") == is_3d})
        pub = published[published["task"].isin(tasks)]
        if len(pub):
            blocks.append(paper_table(ours[ours["task"].isin(tasks)], pub, dims))
    return Section("Comparison with published numbers", [
        *blocks, sources_table(published), *[f"Not shipped: {n}" for n in NOT_SHIPPED]])


def _curve_history(results: Path, ok: pd.DataFrame) -> pd.DataFrame:
    """History of the runs the curves draw: the task row with the most ok runs (read for those runs only)."""
    if ok.empty:
        return pd.DataFrame()
    rows = ok.groupby(ROW, sort=True)["run_id"].transform("count")
    top = ok[rows == rows.max()]
    top = top[top[ROW].astype(str).apply("|".join, axis=1) == top[ROW].astype(str).apply("|".join, axis=1).iloc[0]]
    return read_history(results, list(top["run_id"]))


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
            blocks.append(ablation_table(axis_deltas(runs, ok, axis, metric), axis, metric, table))
    if flat:
        blocks.append(f"Axes without a table (no two ok rllm runs differ only in them): {', '.join(flat)}.")
    blocks.insert(0, "Each table compares ok rllm runs that differ only in that axis: the other LLM knobs are at "
                     "the R-LLM defaults and the LLM, its layer and block length fixed at the setting where the axis "
                     "was swept (the layer table is per LLM). Cells are paired Δ vs the baseline run of the same seed; the "
                     "baseline column is the level of the ok baseline cell of the task.")
    blocks.append(plots.layer_curve(ablation_runs(ok, "llm.layers"), metric, folder))
    blocks.append(plots.llm_size_curve(ablation_runs(ok, "llm"), metric, folder))
    return Section("Ablations", blocks)
