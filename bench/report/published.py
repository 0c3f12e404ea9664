"""Published reference numbers, kept as data (published.csv) with the source of every value.

Each row is one number as printed in a paper: source, table, url, task, model, metric (acc|auc), value.
`copies` says how many independent public copies of the table showed that value and `read_via` how it
was read, because the numbers here were transcribed from public copies of the tables, not from the
paper PDFs. Only numbers that were actually read are shipped; what could not be found is listed in
NOT_SHIPPED and shown in the report, never filled in.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

COLUMNS = ["source", "table", "url", "task", "model", "metric", "value", "copies", "read_via"]

NOT_SHIPPED = [
    "Lai et al., 'Residual-based Language Models are Free Boosters for Biomedical Imaging', CVPRW 2024 "
    "(arXiv:2403.17343): Table 1 (2D, ViT-S vs ViT-S + R-LLM) and Table 3 (3D) are not included; no readable "
    "copy of those tables was found (the authors' repository ZhixinLai/LLMBoostMedical has no results table).",
    "MedMNIST v2 Table 4 (3D ResNet rows): not included; no copy with the exact values was found.",
    "MedMNIST v2 Table 3: only the cells listed here were found; the other tasks/models are left out.",
]


def load_published() -> pd.DataFrame:
    """The shipped table, checked so a bad edit of the CSV fails loudly instead of skewing a report."""
    with resources.files(__package__).joinpath("published.csv").open("r", encoding="utf-8") as f:
        df = pd.read_csv(f)
    if list(df.columns) != COLUMNS:
        raise ValueError(f"published.csv columns {list(df.columns)} != {COLUMNS}")
    if not df["metric"].isin(["acc", "auc"]).all() or not df["value"].between(0, 1).all():
        raise ValueError("published.csv: metric must be acc|auc and value in [0, 1]")
    if df.duplicated(["source", "task", "model", "metric"]).any():
        raise ValueError("published.csv: a (source, task, model, metric) appears twice")
    return df
