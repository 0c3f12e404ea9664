"""Report plots (PNG for the page, SVG for papers), drawn with seaborn on the Agg backend.

Each function returns a `Plot` when it wrote files, or a one-line `Skipped` reason when its data
does not vary enough to say anything, so the page can state why a plot is absent.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bench.report.stats import METRICS, ROW, first_layer, layer_position  # noqa: E402
from bench.report.tables import NAMES, label_order, row_name  # noqa: E402


@contextmanager
def style():
    """Seaborn's theme for the report's plots only; rcParams (which optuna also changes) are restored."""
    with plt.rc_context():
        sns.set_theme(style="whitegrid", context="notebook")
        plt.rcParams["svg.fonttype"] = "none"  # SVG text stays text: editable in a paper, and fast to write
        plt.rcParams["svg.hashsalt"] = "bench-report"  # SVG ids from a fixed salt, not a random one: renders repeat
        yield


@dataclass
class Plot:
    title: str
    stem: str  # files <stem>.png and <stem>.svg in the report folder
    caption: str = ""

    @property
    def files(self) -> list[str]:
        return [f"{self.stem}.png", f"{self.stem}.svg"]


class Skipped(str):
    """Why a plot was not drawn; shown on the page in its place."""


def _save(fig, out: Path, stem: str) -> None:
    fig.savefig(out / f"{stem}.png", dpi=110, bbox_inches="tight")
    fig.savefig(out / f"{stem}.svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)


def _rows(df: pd.DataFrame) -> pd.Series:
    return pd.Series([row_name(*r) for r in df[ROW].itertuples(index=False)], index=df.index)


def delta_bars(effects: pd.DataFrame, metric: str, labels: list[str], out: Path) -> Plot | Skipped:
    """Bars of the paired Δ vs baseline per task, one panel per arm, with the primary 95% interval (the one the
    words use) as error bars."""
    title = f"Δ test {NAMES[metric]} vs baseline"
    e = effects.reset_index() if len(effects) else pd.DataFrame(columns=["contrast"])
    d = e[(e["contrast"] == "vs baseline")]
    d = d[d[f"{metric}_mean"].notna()] if len(d) else d
    if d.empty:
        return Skipped(f"{title}: skipped, no variant run has an ok baseline to pair with.")
    d = d.assign(row=_rows(d), panel=d["label"].where(d["arm"] == "", d["label"] + " · " + d["arm"]))
    rows = list(dict.fromkeys(d["row"]))
    order = {lab: i for i, lab in enumerate(labels)}
    panels = sorted(dict.fromkeys(d["panel"]), key=lambda p: (order.get(p.split(" · ")[0], len(order)), p))
    ncol = min(len(panels), 3 if len(rows) <= 6 else 2)
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, sharey=True, squeeze=False,
                             figsize=(ncol * max(4.0, 0.4 * len(rows) + 1.5), nrow * 3.8))
    colors = arm_colors(labels)
    for ax, panel in zip(axes.flat, panels):
        color = colors.get(panel.split(" · ")[0], "grey")
        sub = d[d["panel"] == panel]
        x = np.array([rows.index(r) for r in sub["row"]])
        mean = sub[f"{metric}_mean"].to_numpy(float)
        lo, hi = sub[f"{metric}_low"].to_numpy(float), sub[f"{metric}_high"].to_numpy(float)
        has = ~np.isnan(lo)
        ax.bar(x, mean, 0.7, color=color)
        ax.errorbar(x[has], mean[has], yerr=[mean[has] - lo[has], hi[has] - mean[has]], fmt="none",
                    ecolor="black", capsize=3, lw=1)
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(axis="x", visible=False)
        ax.set_xticks(range(len(rows)), rows, rotation=45, ha="right", fontsize=9)
        ax.set_title(panel)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"Δ test {NAMES[metric]}")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{title} (arm − baseline)")
    fig.tight_layout()
    _save(fig, out, f"delta_{metric}")
    return Plot(title, f"delta_{metric}", "Mean paired difference over seeds, one panel per arm; whiskers: the "
                "primary 95% interval (seeds and test images), the one the words use (none when fewer than 2 pairs).")


def heatmap(summary: pd.DataFrame, metric: str, labels: list[str], out: Path) -> Plot | Skipped:
    title = f"Test {NAMES[metric]}: variants × tasks"
    s = summary.assign(row=_rows(summary))
    grid = s.pivot_table(index="label", columns="row", values=f"{metric}_mean", aggfunc="first", dropna=False)
    grid = grid.reindex(index=labels, columns=list(dict.fromkeys(s["row"])))
    if grid.notna().sum().sum() < 2:
        return Skipped(f"{title}: skipped, fewer than two cells have an ok run.")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * grid.shape[1] + 2), max(2.5, 0.5 * grid.shape[0] + 1.5)))
    ax.set_facecolor("#eeeeee")
    ax.grid(False)
    sns.heatmap(grid, annot=True, fmt=".3f", cmap="viridis", mask=grid.isna(), ax=ax,
                cbar_kws={"label": f"mean test {NAMES[metric]}"})
    for i, j in zip(*np.where(grid.isna().to_numpy())):
        ax.text(j + 0.5, i + 0.5, "—", ha="center", va="center", color="dimgrey", fontsize=14)
    ax.set_xlabel("")
    ax.set_ylabel("variant")
    ax.set_title(title)
    _save(fig, out, f"heatmap_{metric}")
    return Plot(title, f"heatmap_{metric}", "Mean over ok seeds; — = no ok run.")


def _mean_sd(data: pd.DataFrame, by: list[str], y: str) -> pd.DataFrame:
    """Mean and sample sd of `y` per group, in first-seen order: the points and whiskers of a curve
    (aggregated once here, not by seaborn per facet: a full grid has thousands of runs)."""
    return data.groupby(by, sort=False)[y].agg(["mean", "std"]).reset_index()


def _palette(n: int) -> list:
    """Distinct colours for n lines: seaborn's 'deep' has 10, beyond that evenly spaced hues."""
    return sns.color_palette("deep" if n <= 10 else "husl", n)


def arm_colors(labels) -> dict:
    """One colour per arm, the same in every figure: the report's label order (baseline first) over `_palette`."""
    order = label_order(labels)
    return dict(zip(order, _palette(len(order))))


def _line(ax, points: pd.DataFrame, x: str, color, label: str) -> None:
    ax.errorbar(points[x], points["mean"], yerr=points["std"].fillna(0), color=color, marker="o", ms=4,
                capsize=2, lw=1.2, label=label)


def layer_curve(runs: pd.DataFrame | None, metric: str, out: Path) -> Plot | Skipped:
    title = f"Test {NAMES[metric]} vs LLM layer index"
    if runs is None:
        return Skipped(f"{title}: skipped, no LLM was run at more than one layer index.")
    layer = first_layer(runs["llm.layers"])
    named = layer.isna().any()  # named positions (first, middle, last): categorical, in depth order
    position = layer_position(runs["llm.layers"]) if named else layer
    data = runs.assign(row=_rows(runs), layer=runs["llm.layers"].astype(str) if named else layer, position=position)
    points = _mean_sd(data.sort_values("position", kind="stable"), ["row", "llm", "position", "layer"],
                      METRICS[metric])
    rows, llms = list(dict.fromkeys(data["row"])), list(dict.fromkeys(data["llm"]))
    colors = dict(zip(llms, _palette(len(llms))))
    ncol = min(3, len(rows))
    nrow = -(-len(rows) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    ticks = points.drop_duplicates("position").sort_values("position")
    for ax, row in zip(axes.flat, rows):
        for llm, line in points[points["row"] == row].groupby("llm", sort=False):
            _line(ax, line, "position", colors[llm], str(llm))
        if named:
            ax.set_xticks(ticks["position"], ticks["layer"])
        ax.set_title(row, fontsize=9)
        ax.set_xlabel("first layer of the LLM block")
        ax.set_ylabel(f"test {NAMES[metric]}")
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, title="llm", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out, f"layer_{metric}")
    return Plot(title, f"layer_{metric}", "Mean ± sd over seeds; other LLM knobs at the R-LLM defaults.")


def llm_size_curve(runs: pd.DataFrame | None, metric: str, out: Path) -> Plot | Skipped:
    title = f"Test {NAMES[metric]} vs LLM size"
    known = None if runs is None else runs[runs["llm.params"].fillna(0) > 0]  # 0 or none: an unknown size
    if known is None or known["llm"].nunique() < 2:
        return Skipped(f"{title}: skipped, fewer than two LLMs with a known parameter count.")
    data = known.assign(row=_rows(known)).sort_values("llm.params", kind="stable")
    points = _mean_sd(data, ["row", "llm.params"], METRICS[metric])
    rows = list(dict.fromkeys(known.assign(row=_rows(known))["row"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, color in zip(rows, _palette(len(rows))):
        _line(ax, points[points["row"] == row], "llm.params", color, row)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # the LLMs' names mark the sizes
    for name, params in data.groupby("llm")["llm.params"].first().items():
        ax.annotate(str(name).split("/")[-1], (params, 1), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8, color="grey")
    ax.set_xlabel("LLM parameters (log)")
    ax.set_ylabel(f"test {NAMES[metric]}")
    ax.legend(title="task · size", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title(title)
    _save(fig, out, f"llm_size_{metric}")
    return Plot(title, f"llm_size_{metric}", "Mean ± sd over seeds, one line per task.")


def val_curves(history: pd.DataFrame, ok: pd.DataFrame, metric: str, out: Path) -> Plot | Skipped:
    """Validation metric per epoch for one task: the one with the most ok runs that have a history."""
    title = f"Validation {NAMES[metric]} per epoch"
    col = f"val_{metric}"
    if history.empty or col not in history.columns:
        return Skipped(f"{title}: skipped, no training history is stored for the ok runs.")
    data = history.merge(ok[["run_id", "label", *ROW]], on="run_id").dropna(subset=[col])
    if data.empty or data["epoch"].nunique() < 2:
        return Skipped(f"{title}: skipped, fewer than two epochs of history.")
    data = data.assign(row=_rows(data))
    task = data.groupby("row", sort=False)["run_id"].nunique().idxmax()
    data = data[data["row"] == task]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    sns.lineplot(data=data, x="epoch", y=col, hue="label", hue_order=label_order(data["label"]), errorbar="sd", ax=ax,
                 palette=arm_colors(ok["label"]))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"val {NAMES[metric]}")
    ax.legend(title="variant", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title(f"{title}: {task}")
    _save(fig, out, f"val_{metric}")
    return Plot(f"{title}: {task}", f"val_{metric}", "Mean ± sd over seeds of the ok runs; the task with the most "
                "ok runs that have a history.")


def optuna_plots(results: Path, out: Path) -> list[Plot | Skipped]:
    """History and parameter importances of every study in <results>/optuna/*.log (none: no output)."""
    logs = sorted((Path(results) / "optuna").glob("*.log"))
    if not logs:
        return []
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    made: list[Plot | Skipped] = []
    try:
        for log in logs:
            try:
                storage = JournalStorage(JournalFileBackend(str(log)))
                studies = [optuna.load_study(study_name=s.study_name, storage=storage)
                           for s in optuna.get_all_study_summaries(storage)]
            except Exception as e:  # a broken or half-written journal must not sink the whole report
                made.append(Skipped(f"Optuna journal {log.name}: skipped, could not be read ({e})."))
                continue
            for study in studies:
                made += _study_plots(study, log, out)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return made


def _study_plots(study, log: Path, out: Path) -> list[Plot | Skipped]:
    import optuna
    from optuna.visualization import matplotlib as ovm

    stem = "optuna_" + re.sub(r"[^A-Za-z0-9_-]+", "_", f"{log.stem}_{study.study_name}")
    title = f"Optuna study '{study.study_name}' ({log.name})"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(study.directions) > 1 or len(done) < 2:
        return [Skipped(f"{title}: skipped, needs a single-objective study with at least two complete trials.")]
    made: list[Plot | Skipped] = []
    for kind, plot in (("history", ovm.plot_optimization_history), ("importance", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = plot(study)
        except (ValueError, RuntimeError) as e:  # e.g. importances need a parameter that varies
            made.append(Skipped(f"{title} {kind}: skipped ({e})."))
            continue
        fig = (ax[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.set_size_inches(7, 4.2)
        _save(fig, out, f"{stem}_{kind}")
        made.append(Plot(f"{title}: {kind}", f"{stem}_{kind}", f"{len(done)} complete trials."))
    return made
