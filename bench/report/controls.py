"""Paired comparisons of a per-run measure between arms: each R-LLM arm against the baseline and its controls.

R-LLM arms are the labels with booster.variant = rllm and pretrained weights (frozen, fine-tuned, any layer).
Their controls: the baseline (no booster), the no-LLM boosters (mlp, adapters) and the R-LLM labels with random
weights (booster.init = random); each control other than the baseline is also compared with the baseline. Two
runs pair when they share data.*, vit.*, train.* settings and seed (`bench.report.collect.pair_keys`), as the
report pairs every variant with its baseline; the Δ over seeds is `bench.report.stats.paired_test`.
"""

from __future__ import annotations

import pandas as pd

from bench.report.collect import pair_keys
from bench.report.stats import ROW, paired_test

COLUMNS = ROW + ["arm", "control", "measure", "n_pairs", "mean", "ci_low", "ci_high", "p"]


def role(ok: pd.DataFrame) -> pd.Series:
    """Per run: 'rllm' (a pretrained R-LLM arm), 'baseline', or 'control' (no-LLM booster, random-weight layer)."""
    variant = ok["booster.variant"].astype(str)
    init = ok["booster.init"].astype(str) if "booster.init" in ok.columns else pd.Series("", index=ok.index)
    out = pd.Series("control", index=ok.index)
    out[variant == "baseline"] = "baseline"
    out[(variant == "rllm") & (init != "random")] = "rllm"
    return out


def comparisons(ok: pd.DataFrame) -> list[tuple[str, str]]:
    """(arm label, control label) pairs among the labels of `ok`, in label order."""
    r = role(ok)
    labels = list(dict.fromkeys(ok["label"]))
    kind = {lab: r[ok["label"] == lab].iloc[0] for lab in labels}
    controls = [lab for lab in labels if kind[lab] == "baseline"] + [lab for lab in labels if kind[lab] == "control"]
    out = [(arm, c) for arm in labels if kind[arm] == "rllm" for c in controls]
    return out + [(c, b) for c in controls if kind[c] == "control" for b in controls if kind[b] == "baseline"]


def control_deltas(values: pd.DataFrame, ok: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """Paired Δ (arm − control) over seeds of each column of `values` (indexed by run_id) in `measures`."""
    keys = pair_keys(ok.columns)
    cols = ROW + ["label", "booster.variant"] + [c for c in ("booster.init",) if c in ok.columns] + keys
    runs = ok.set_index("run_id")[list(dict.fromkeys(cols))].join(values[measures], how="inner")
    rows = []
    for arm, control in comparisons(runs.reset_index()):
        a, c = runs[runs["label"] == arm], runs[runs["label"] == control]
        both = a.merge(c[keys + measures], on=keys, suffixes=("", "_c"))
        for row, grp in both.groupby(ROW, sort=True):
            for m in measures:
                g = grp.dropna(subset=[m, f"{m}_c"]).groupby("seed")[[m, f"{m}_c"]].mean()
                res = paired_test(g[m].to_numpy(float), g[f"{m}_c"].to_numpy(float))
                rows.append({**dict(zip(ROW, row)), "arm": arm, "control": control, "measure": m, **res})
    return pd.DataFrame(rows, columns=COLUMNS)


def level_table(title: str, runs: pd.DataFrame, values: pd.DataFrame, measures: dict[str, str]):
    """Per task row and variant: each measure averaged per seed, then mean ± sd over seeds."""
    from bench.report.tables import Table, fmt_stat, label_order, row_name

    joined = runs[["task", "size", "setting", "label", "seed"]].join(values)
    labels = label_order(joined["label"])
    lines = []
    for (task, size, setting), grp in joined.groupby(["task", "size", "setting"], sort=True):
        for lab in [x for x in labels if x in set(grp["label"])]:
            seeds = grp[grp["label"] == lab].groupby("seed")[list(measures)].mean()
            lines.append({"task": row_name(task, size, setting), "variant": lab,
                          **{name: fmt_stat(seeds[m].mean(), seeds[m].std(), seeds[m].count())
                             for m, name in measures.items()}})
    return Table(title, pd.DataFrame(lines))
