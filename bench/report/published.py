"""Published reference numbers, kept as data (published.csv) with the source of every value.

Each row is one number as printed in a paper: source, table, url, task, model, variant, metric (acc|auc),
value, copies, read_via, note. `variant` names what a row measures in our terms (baseline | rllm | mlp |
finetune | residual-out | residual-hybrid; `other` for methods we do not run), and `MODELS` says which of
our backbone configs a published model is, so our runs are matched to the paper's rows by config, never
by a grid's labels. `note` flags a value that looks wrong (it is kept as printed, never silently fixed).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

COLUMNS = ["source", "table", "url", "task", "model", "variant", "metric", "value", "copies", "read_via", "note"]
LAI = "Lai et al."
VARIANTS = ("baseline", "rllm", "mlp", "finetune", "residual-out", "residual-hybrid", "other")
# Lai et al.'s backbones as our config: (vit.arch, vit.paper_mode); None = any paper_mode (3D has none).
MODELS = {"ViT-S": ("small", True), "ViT-3D": ("vit3d-m", None), "ViT3D-M": ("vit3d-m", None),
          "ViViT-S": ("vivit-s", None), "ViViT-M": ("vivit-m", None)}
CLAIM_TABLES = ("Table 1", "Table 3", "Table 5", "Table 6")  # variant vs baseline, same model and task

NOT_SHIPPED = [
    "MedMNIST v2 Table 4 (3D ResNet rows): not included; no copy with the exact values was found "
    "(Lai et al.'s Table 4 repeats some of them to 3 decimals).",
    "MedMNIST v2 Table 3: only the cells listed here were found; the other tasks/models are left out.",
]


def load_published() -> pd.DataFrame:
    """The shipped table, checked so a bad edit of the CSV fails loudly instead of skewing a report."""
    with resources.files(__package__).joinpath("published.csv").open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, keep_default_na=False, na_values={"value": [""]})
    if list(df.columns) != COLUMNS:
        raise ValueError(f"published.csv columns {list(df.columns)} != {COLUMNS}")
    if not df["metric"].isin(["acc", "auc"]).all() or not df["value"].between(0, 1).all():
        raise ValueError("published.csv: metric must be acc|auc and value in [0, 1]")
    if not df["variant"].isin(VARIANTS).all():
        raise ValueError(f"published.csv: variant must be one of {VARIANTS}")
    if df.duplicated(["source", "table", "task", "model", "variant", "metric"]).any():
        raise ValueError("published.csv: a (source, table, task, model, variant, metric) appears twice")
    return df


def paper_variant(runs: pd.DataFrame) -> pd.Series:
    """Which of Lai et al.'s variants each run is, from its config; None when it is none of them.

    baseline and mlp by booster.variant; an rllm run is 'rllm' with every LLM knob at the R-LLM defaults
    (residual in, frozen, ...), 'finetune' / 'residual-out' / 'residual-hybrid' when exactly that knob differs.
    """
    from bench.config import RLLM_DEFAULTS
    from bench.models.registry import baselines, capacity_control, layer_variants

    changes = {"freeze": {"finetune": "finetune"}, "residual": {"out": "residual-out", "hybrid": "residual-hybrid"}}
    off = pd.DataFrame({k: runs.get(f"booster.{k}", pd.Series(index=runs.index, dtype=object)).astype(str) != str(v)
                        for k, v in RLLM_DEFAULTS.items()}, index=runs.index)
    out = pd.Series(None, index=runs.index, dtype=object)
    variant = runs["booster.variant"].astype(str)
    out[variant.isin(baselines())] = "baseline"
    out[variant == capacity_control(str(RLLM_DEFAULTS["residual"]))] = "mlp"  # the paper's +MLP: its wiring's control
    rllm = variant.isin(layer_variants())
    out[rllm & ~off.any(axis=1)] = "rllm"
    for knob, names in changes.items():
        only = rllm & off[knob] & (off.sum(axis=1) == 1)
        for value, name in names.items():
            out[only & (runs[f"booster.{knob}"].astype(str) == value)] = name
    return out


def paper_model(runs: pd.DataFrame) -> pd.Series:
    """Lai et al.'s name for each run's backbone ('ViT-S', 'ViViT-M', ...), None when it is none of theirs."""
    out = pd.Series(None, index=runs.index, dtype=object)
    paper_mode = runs.get("vit.paper_mode", pd.Series(False, index=runs.index)).astype(str).str.lower() == "true"
    for model, (arch, mode) in MODELS.items():
        if model == "ViT3D-M":  # Table 4's name for Table 3's ViT-3D
            continue
        hit = runs["vit.arch"].astype(str) == arch
        if mode is not None:
            hit &= paper_mode == mode
        out[hit] = model
    return out
