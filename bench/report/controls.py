"""Paired comparisons of a per-run measure (robustness, token maps): the report's own contrasts, on another measure.

The pairs are `bench.report.effects.contrast_pairs`' (every arm vs the baseline, each R-LLM arm vs its capacity
control, random weights and, fine-tuned, the frozen layer), so a section never defines its own controls; the Δ
over seeds is `bench.report.engine`'s seed-only paired t (the measures have no image resamples), p BH within each
contrast's family per measure.
"""

from __future__ import annotations

import pandas as pd

from bench.report.effects import INDEX, add_arms, contrast_pairs
from bench.report.engine import bh, summarise
from bench.report.stats import ROW

COLUMNS = ROW + ["contrast", "arm", "control", "measure", "n_pairs", "mean", "ci_low", "ci_high", "p", "p_bh"]


def control_deltas(values: pd.DataFrame, ok: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """Paired Δ (arm − comparator) over seeds of each column of `values` (indexed by run_id) in `measures`, for the
    contrasts whose runs all have a value."""
    pairs_ = contrast_pairs(add_arms(ok) if "arm" not in ok.columns else ok)
    pairs_ = pairs_[pairs_["run_id"].isin(values.index) & pairs_["run_id_cmp"].isin(values.index)]
    rows = []
    for m in measures:
        d = pairs_.assign(d=values[m].reindex(pairs_["run_id"]).to_numpy()
                          - values[m].reindex(pairs_["run_id_cmp"]).to_numpy()).dropna(subset=["d"])
        if d.empty:
            continue
        per_seed = d.groupby(INDEX + ["seed"], sort=True)["d"].mean().reset_index()
        s = summarise(per_seed, INDEX, "d").reset_index()
        s["p_bh"] = s.groupby("contrast")["p_t"].transform(lambda p: bh(p.to_numpy(float)))
        s["arm"] = s["label"].where(s["arm"] == "", s["label"] + " · " + s["arm"])
        rows.append(s.rename(columns={"comparator": "control", "n": "n_pairs", "p_t": "p"}).assign(measure=m))
    return pd.concat(rows, ignore_index=True)[COLUMNS] if rows else pd.DataFrame(columns=COLUMNS)


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
