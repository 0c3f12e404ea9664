"""`make_report`: tables, paired statistics, plots and one offline HTML page for a grid's runs.

Writes into <out>/<name>/: summary.md, summary.tex, summary.csv, index.html and the plots (PNG+SVG).
Only ok runs enter the statistics; failed and missing runs are counted and listed, never imputed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.models.registry import baselines
from bench.report import answer, bootstrap, plots
from bench.report.collect import collect, expected_runs
from bench.report.effects import CONTRASTS, add_arms, axis_deltas, cell_effects
from bench.report.explain import explain_sections
from bench.report.html import render_html, render_markdown
from bench.report.published import NOT_SHIPPED, load_published, paper_model, paper_variant
from bench.report.robustness import robustness_section
from bench.report.stats import AXES, METRICS, ROW, ablation_runs, pairs, summary
from bench.report.tables import (NAMES, Callout, Section, Table, ablation_table, audit_table, delta_table,
                                 effects_table, findings_table, label_order, metric_matrix, paper_table, runs_table, sources_table,
                                 summary_csv, to_latex, verdict_table)
from bench.report.tokens import tokens_section
from bench.report.tuned import tuned_section
from bench.report.verdict import RULES, verdicts
from bench.store import read_history

__all__ = ["make_report", "expected_runs"]

PAIRING = (
    "Pairing rule: a contrast pairs an arm's seed-s run with its comparator's seed-s run, everything else equal: "
    "the baseline (booster.variant = baseline) with the same data.*, vit.* and train.* settings; for an R-LLM arm "
    "also its capacity control (the FE/FD wired as the arm's residual is when the layer is the identity: mlp for "
    "residual in/none, adapters for residual out/hybrid; the same LLM width and FE/FD settings), the same layer with random weights (booster.init=random, every other booster field equal) "
    "and, for a fine-tuned arm, the same layer frozen. Only pairs where both runs are ok count. Δ is the mean of the "
    "per-seed differences (arm − comparator) over the n paired seeds. p is two-sided from the primary interval's t, "
    "Benjamini–Hochberg adjusted (p BH) within one family per contrast and metric: "
    + "; ".join(f"'{k}' ({v})" for k, v in CONTRASTS.items()) + ". The Summary's Δ table is its own family "
    "(every variant label × task row, per metric) and shows the seed-only paired t. Ablation tables show unadjusted "
    "seed-only intervals."
)
MDE = ("MDE: the smallest |Δ| the primary two-sided test detects with power 0.8 at α = 0.05 unadjusted, the α at "
       "which the words 'no detectable effect' are said (the interval, not BH, decides them), from the noncentral t: "
       "the larger of the MDEs of the two tests in the union; — where it is undefined: n < 2, or no spread (all paired "
       "differences equal). `bench power` gives the seeds a target MDE needs, BH-aware or not.")
FINDINGS = ("Rule for the words, per contrast and metric, read off the primary interval beside them: 'helps' / "
            "'hurts' = p BH < 0.05 within the contrast's family (the family's size is in each cell) with Δ > 0 / Δ < 0; "
            "'higher' / 'lower' = the 95% interval excludes 0 but p BH ≥ 0.05; otherwise 'no detectable effect' with "
            "the MDE at α = 0.05 unadjusted; 'not tested' = fewer than 2 paired seeds; ACC 'not interpretable (k of n "
            "runs predict one class)' where a paired run's test predictions are all one class (its ACC is the "
            "majority rate; AUC still ranks its scores). Where the seed-only interval (Paired contrasts) excludes 0 "
            "and the primary does not, the words follow the primary: it also counts the test images, which every "
            "seed shares. Cells: finding: Δ [primary 95% CI] (n paired seeds, BH family size, comparator); then "
            "where the paper's Δ for that task and arm (or ±--margin) stands against the one-sided 95% bounds. — = "
            "no such comparator in this store. Capacity control = the same FE/FD without the layer; random weights "
            "= the same layer, booster.init=random; the last column is the fine-tuned arm minus this frozen one.")


def interval_text(replicates: int) -> str:
    """The one sentence that says what the primary interval counts, and what the other intervals are."""
    image = (f"the image part the seeds share: the covariance between two seeds' Δs over {replicates} resamples of "
             "the test images, ONE resample per replicate shared by every seed's two runs (every seed is scored on "
             "the same test set), c = (n·v − v₁)/(n − 1) with v the resampled variance of the mean Δ and v₁ that of "
             "one seed's Δ (the seed × image rest is in s² already, so it is not counted again); random stream numpy "
             f"default_rng([{bootstrap.SEED}, crc32('task|size|setting')]), so a render is exactly reproducible"
             if replicates else
             "no image part (bench report --replicates 0: the intervals count the seeds only and say so)")
    return (f"Primary 95% interval (CI): Δ ± t(0.975, df) · sqrt(s²/n + c), with s²/n the seed variance of the mean "
            f"of the n paired differences and c {image}; df = (n − 1)(1 + c/(s²/n))² (Welch–Satterthwaite, the image "
            "part taken as known), and never narrower than the seed-only paired t (the union of the two; p the larger "
            "of their two p). Seed-only paired t: Δ ± t(0.975, n − 1) · s/√n, which leaves out the test-image "
            "sampling. One-sided 95% bounds (TOST at 5%): the same two tests at t(0.95). "
            f"{MDE}")


def make_report(results: Path, out: Path, name: str = "all", metric: str = "auc",
                expected: pd.DataFrame | None = None, replicates: int = bootstrap.REPLICATES,
                margin: float | None = None) -> Path:
    """Write the report for the runs of `expected` (None: every stored run) into `out`/`name` (or into `out` itself
    when it is already named after the report, e.g. reports/record) and return that folder; `replicates` of the
    seeds × images bootstrap per arm (0: none; its time grows with test-set size × arms); `margin`: also say, per
    contrast, whether a gain or a loss of that size is ruled out (equivalence, TOST)."""
    if metric not in METRICS:
        raise BenchError(f"metric '{metric}' is not one of {', '.join(METRICS)}")
    if margin is not None and not 0 < margin < 1:
        raise BenchError(f"--margin {margin}: give the smallest Δ that matters as a positive metric difference, "
                         "e.g. 0.01")
    if replicates != 0 and replicates < 100:
        raise BenchError(f"--replicates {replicates}: give 0 (no bootstrap) or at least 100 (default "
                         f"{bootstrap.REPLICATES}); fewer cannot place a 95% interval's 2.5 and 97.5 percentiles")
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise BenchError(f"report name '{name}' must be a plain folder name, e.g. 'smoke'")
    grid = collect(Path(results), expected)
    folder = Path(out) if Path(out).name == name else Path(out) / name
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
        sections = _sections(Path(results), grid, ok, table, metric, folder, replicates, margin)
    title = f"R-LLM bench report: {name}"
    intro = [_counts(grid, expected is not None),
             f"Store: {Path(results).name}/ (--results; no absolute path, so renders elsewhere match). Best, Δ plots and curves use test {NAMES[metric]}."]
    (folder / "summary.md").write_text(render_markdown(title, intro, sections), encoding="utf-8")
    (folder / "index.html").write_text(render_html(title, intro, sections), encoding="utf-8")
    tables = [b for s in sections for b in s.blocks if isinstance(b, Table)]
    tex = [f"% {title}: {intro[0]}", f"% {PAIRING}", f"% {interval_text(replicates)}", "% needs \\usepackage{booktabs}", *(to_latex(t) for t in tables)]
    (folder / "summary.tex").write_text("\n\n".join(tex) + "\n", encoding="utf-8")
    summary_csv(table).to_csv(folder / "summary.csv", index=False, na_rep="NaN")
    return folder


def _write_numbers(folder: Path, effects: pd.DataFrame, v: pd.DataFrame) -> None:
    """effects.csv (every contrast, `comparator` naming the run it is paired with) and verdicts.csv: the numbers
    behind the tables, unrounded, and nothing that changes between two renders of the same store."""
    effects.assign(seeds=effects["seeds"].map(lambda s: " ".join(map(str, s)))).reset_index().to_csv(
        folder / "effects.csv", index=False, na_rep="NaN")
    v.to_csv(folder / "verdicts.csv", index=False, na_rep="NaN")


def _sections(results: Path, grid: pd.DataFrame, ok: pd.DataFrame, table: pd.DataFrame, metric: str,
              folder: Path, replicates: int, margin: float | None) -> list[Section]:
    labels = label_order(grid["label"])
    published = load_published()
    other = next(m for m in METRICS if m != metric)
    effects = cell_effects(ok, results if replicates else None, replicates)
    v = verdicts(results, ok, effects, published)
    effects = answer.add_claims(effects, v, margin)
    _write_numbers(folder, effects, v)
    pooled = answer.pooled_rows(effects)
    sections = [
        _findings_section(effects, labels, replicates, metric),
        _verdict_section(v),
        _runs_section(grid, ok),
        Section("Summary", [metric_matrix(table, metric, labels), metric_matrix(table, other, labels),
                            delta_table(table, labels), plots.delta_bars(effects, metric, labels, folder),
                            plots.heatmap(table, metric, labels, folder)]),
        Section("Paired contrasts", [PAIRING, interval_text(replicates), effects_table(effects, labels),
                                     *[t for t in [answer.claims_table(effects)] if t]]),
        Section("Across tasks", [answer.pooled_table(pooled) or "No contrast is on two or more task rows: nothing "
                                 "to pool.", answer.forest(effects, pooled, metric, folder)]),
        _published_section(ok, published),
        _ablation_section(ok, table, metric, folder),
        Section("Training curves", [plots.val_curves(_curve_history(results, ok), ok, metric, folder)]),
    ]
    sections[4:4] = [s for s in [tuned_section(results, grid, metric)] if s]  # after Summary, with tuned runs
    studies = plots.optuna_plots(results, folder)
    if studies:
        sections.append(Section("Optuna studies", studies))
    sections += [s for s in (robustness_section(results, ok, folder), tokens_section(results, ok, folder)) if s]
    sections += explain_sections(folder)  # the heatmaps `bench explain` wrote into this folder
    return sections


def _findings_section(effects: pd.DataFrame, labels: list[str], replicates: int, metric: str) -> Section:
    """First screen: does each R-LLM arm help, against the baseline, its capacity control and random weights? The
    answer in one sentence per task, then the table, then the method."""
    title = "Does the pretrained layer help?"
    table = findings_table(effects, labels)
    if table is None:
        return Section(title, ["No ok R-LLM arm (a variant with an LLM layer) with a paired comparator in this "
                               "report: nothing to answer.", FINDINGS])
    return Section(title, [*answer.sentences(effects, metric, labels), table, FINDINGS, interval_text(replicates)])


def _verdict_section(v: pd.DataFrame) -> Section:
    """Each of Lai et al.'s claims (Tables 1, 3, 5, 6) against our prediction interval, and the protocol audit."""
    title = "Reproduction of Lai et al. (CVPRW 2024)"
    if v.empty:
        return Section(title, ["No ok run of this report is one of Lai et al.'s variants (baseline, R-LLM, +MLP, "
                               "fine-tuned, residual out/hybrid) with its baseline on one of their tasks: no claim to check.",
                               RULES])
    words = ("consistent", "contradicted", "inconclusive", "no spread", "no audit")
    repro, analog = v[v["scope"] == "reproduction"], v[v["scope"] != "reproduction"]

    def counts(part: pd.DataFrame) -> str:
        n = part["verdict"].value_counts()
        return ", ".join(f"{n.get(k, 0)} {k}" for k in words)

    checks = int(v["pi_low"].notna().sum())
    return Section(title, [
        Callout(f"Reproduction (the paper's own setting in every field): {len(repro)} claim checks: {counts(repro)}. "
                f"Analogous setting (named deviations, not counted as a reproduction): {len(analog)} checks: "
                f"{counts(analog)}."),
        (f"Multiplicity: each check's PI is at 95%, unadjusted; with {checks} checks, about {0.05 * checks:.1f} would "
         f"be contradicted by chance if every claim were exactly reproduced. At the family-wise level (Bonferroni, "
         f"PI at 1 − 0.05/{checks}): {int(repro['contradicted_familywise'].sum())} reproduction and "
         f"{int(analog['contradicted_familywise'].sum())} analogous checks contradicted." if checks else
         "Multiplicity: no check has a prediction interval here, so none can be contradicted."),
        RULES, *_verdict_rows(v), audit_table(v)])


def _verdict_rows(v: pd.DataFrame) -> list:
    """The verdict table of the checks that say something; the 'no audit' ones (no protocol-audit history, so no
    verdict) collapsed into one line that names their claims."""
    silent = v[v["verdict"] == "no audit"]
    blocks = [verdict_table(v[v["verdict"] != "no audit"])] if (v["verdict"] != "no audit").any() else []
    if len(silent):
        named = sorted({f"{t} {var} ({tab}, {m.upper()})" for t, var, tab, m in
                        zip(silent["task"], silent["variant"], silent["tables"], silent["metric"])})
        blocks.append(f"{len(silent)} claim checks have no verdict (no audit: their runs have no protocol-audit "
                      f"history, train.audit_test=false; the audit table below still compares levels): "
                      f"{'; '.join(named)}.")
        folded = verdict_table(silent)
        folded.title, folded.collapse = "Claims without a verdict (no audit), with their deviations", True
        blocks.append(folded)
    return blocks


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
    variants = ok[~ok["booster.variant"].isin(baselines())]
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
