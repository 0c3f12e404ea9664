"""The report's "Robustness (MedMNIST-C)" section, from what `bench analyze robustness` stored; only when present.

Per run, from its rows (corruption c, severity s; the clean test set is severity 0) and MedMNIST-C's definitions
(Di Salvo et al. 2024, the package's `Evaluator.populate_summary`), with E the balanced error (1 - balanced
accuracy) and AlexNet's reference errors E^A stored beside each row:
    BE_c  = mean_s E_{c,s} / E^A_c                                  mBE = mean_c BE_c    (lower is better)
    rBE_c = (mean_s E_{c,s} - E_clean) / (E^A_c - E^A_clean)         rBE = mean_c rBE_c  (lower: less degradation)
and the mean test ACC/AUC over every corruption and severity. Cells are mean ± sd over seeds; Δs pair runs by seed
(`bench.report.controls`: the report's own contrasts).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.report.controls import control_deltas, level_table
from bench.report.plots import Plot, _save, arm_colors, plt
from bench.report.tables import MISSING, Section, Table, fmt_delta, fmt_p, label_order, row_name
from bench.store import read_analysis

KIND = "robustness"
MEASURES = {"auc_corrupted": "AUC corrupted", "acc_corrupted": "ACC corrupted", "mbe": "mBE", "rbe": "rBE",
            "auc_clean": "AUC clean", "acc_clean": "ACC clean"}


def per_run(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run (index run_id): clean and mean corrupted ACC/AUC, mBE and rBE."""
    out = {}
    for rid, r in rows.groupby("run_id", sort=True):
        clean = r[r["severity"] == 0].iloc[0]
        bad = r[r["severity"] > 0]
        by_c = bad.groupby("corruption")[["error", "alexnet_error"]].mean()
        out[rid] = {"auc_clean": clean["auc"], "acc_clean": clean["acc"], "auc_corrupted": bad["auc"].mean(),
                    "acc_corrupted": bad["acc"].mean(),
                    "mbe": (by_c["error"] / by_c["alexnet_error"]).mean(),
                    "rbe": ((by_c["error"] - clean["error"]) / (by_c["alexnet_error"] - clean["alexnet_error"])).mean()}
    return pd.DataFrame.from_dict(out, orient="index")


def robustness_section(results: Path, ok: pd.DataFrame, folder: Path) -> Section | None:
    rows = read_analysis(results, KIND, ok["run_id"])
    if rows.empty:
        return None
    meta = rows.attrs["meta"]
    runs = ok.set_index("run_id").loc[sorted(meta)]
    values = per_run(rows)
    settings = sorted({(m.get("images"), m.get("n_images"), m.get("corruptions"), m.get("seed"), m.get("package"))
                       for m in meta.values()})
    how = "; ".join(f"{n} test images ({'all' if i == 'all' else 'evenly spaced'}), corruptions {c}, seed {s}, {p}"
                    for i, n, c, s, p in settings)
    blocks = [
        f"{len(meta)} saved runs tested again on MedMNIST-C's corruptions (Di Salvo et al. 2024; the medmnistc "
        f"package's definitions, severities 1-5) of their test images, with the input pipeline they were tested with: "
        f"{how}. The corruptions were calibrated on 224-px images and are applied here at the run's own size. "
        "mBE: mean over corruptions of the mean balanced error (1 - balanced accuracy, threshold 0.5) over the five "
        "severities, divided by AlexNet's (MedMNIST-C's reference); rBE: the same increase over the clean error, "
        "relative to AlexNet's increase; both lower is better. Written by `bench analyze robustness`.",
        level_table("Clean and corrupted test metrics, mBE and rBE (mean ± sd over seeds)", runs, values,
                    MEASURES),
        _curves(rows.merge(runs[["task", "size", "setting", "label", "seed"]], left_on="run_id", right_index=True),
                folder, arm_colors(ok["label"])),
    ]
    deltas = control_deltas(values, ok, list(MEASURES)[:4])
    if not deltas.empty:
        blocks.append(delta_table("Paired Δ on corrupted data (arm − control)", deltas, MEASURES))
    return Section("Robustness (MedMNIST-C)", blocks)



def delta_table(title: str, deltas: pd.DataFrame, names: dict) -> Table:
    lines = []
    keys = ["task", "size", "setting", "contrast", "arm", "control"]
    for (task, size, setting, contrast, arm, control), grp in deltas.groupby(keys, sort=True):
        by = grp.set_index("measure")
        line = {"task": row_name(task, size, setting), "contrast": contrast, "arm": arm, "vs": control,
                "n": int(by["n_pairs"].max())}
        for m in by.index:
            line[f"Δ {names[m]}"] = fmt_delta(by.at[m, "mean"], by.at[m, "ci_low"], by.at[m, "ci_high"])
            line[f"p BH {names[m]}"] = fmt_p(by.at[m, "p_bh"])
        lines.append(line)
    return Table(title, pd.DataFrame(lines).fillna(MISSING),
                 note="Mean over paired seeds with the seed-only paired-t 95% CI; p BH within each contrast's family "
                      "per measure (the report's contrasts and pairing); n = paired seeds.")


def _curves(rows: pd.DataFrame, folder: Path, colors: dict) -> Plot:
    """ACC and AUC vs severity (0 = clean; mean over corruptions), per task, one line per variant, in the report's
    colour of each arm; one legend for every line of every panel."""
    tasks = list(dict.fromkeys(rows[["task", "size", "setting"]].itertuples(index=False)))
    labels = label_order(rows["label"])
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.6), squeeze=False)
    for j, key in enumerate(tasks):
        sub = rows[(rows[["task", "size", "setting"]].apply(tuple, axis=1)) == tuple(key)]
        for i, metric in enumerate(("auc", "acc")):
            ax = axes[i, j]
            per_seed = sub.groupby(["label", "seed", "severity"])[metric].mean().reset_index()
            for lab in [x for x in labels if x in set(per_seed["label"])]:
                g = per_seed[per_seed["label"] == lab].groupby("severity")[metric].agg(["mean", "std"])
                ax.plot(g.index, g["mean"], marker="o", ms=3, color=colors[lab], label=lab)
                ax.fill_between(g.index, g["mean"] - g["std"].fillna(0), g["mean"] + g["std"].fillna(0),
                                color=colors[lab], alpha=0.12, lw=0)
            ax.set_xticks(range(6), ["clean", 1, 2, 3, 4, 5])
            ax.set_xlabel("severity")
            ax.set_ylabel(f"test {metric.upper()}")
            if i == 0:
                ax.set_title(row_name(*key), fontsize=10)
    legend = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.tight_layout()
    fig.legend(legend.values(), legend.keys(), title="variant", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, folder, "robustness_curves")
    return Plot("Test ACC and AUC vs corruption severity", "robustness_curves",
                "Mean over the corruptions at each severity (0: the clean test set), then mean ± sd over seeds "
                "(band) per variant.")

