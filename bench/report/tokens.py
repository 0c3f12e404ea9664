"""The report's "Token activations" section, from what `bench analyze tokens` stored; only when present.

Per run: the mean over its sample images of the concentration (share of the token-norm map in its top 10% of
tokens) before and after the booster, and of the overlap of the activation's top tokens with the Grad-CAM's
(bench.analyze.tokens). Cells are mean ± sd over seeds; Δs pair runs by seed (`bench.report.controls`): does the
pretrained layer concentrate activation more than random weights, the adapters alone or no layer? Maps: one seed's
runs side by side on the same images.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.controls import control_deltas, level_table
from bench.report.plots import Plot, _save, plt
from bench.report.robustness import delta_table
from bench.report.tables import Section, label_order, row_name
from bench.store import read_analysis, read_analysis_arrays

KIND = "tokens"
MEASURES = {"conc_after": "concentration after", "overlap_after": "CAM overlap after",
            "conc_before": "concentration before", "overlap_before": "CAM overlap before"}
SHOWN = 4  # images per figure


def tokens_section(results: Path, ok: pd.DataFrame, folder: Path) -> Section | None:
    rows = read_analysis(results, KIND, ok["run_id"])
    if rows.empty:
        return None
    values = rows.groupby("run_id")[list(MEASURES)].mean()  # NaN overlaps (a CAM zero everywhere) left out
    runs = ok.set_index("run_id").loc[values.index]
    images = sorted({m.get("images") for m in rows.attrs["meta"].values()})
    blocks = [
        f"{len(values)} saved runs probed on {', '.join(images)} test images each (evenly spaced over the test split). "
        "Activation = the L2 norm of each patch token's feature, before the booster (the last ViT block's output) "
        "and after it (what the final norm sees); runs without a booster have the same map at both places. "
        "Concentration: the share of an image's map in its top 10% of tokens (1/number of tokens for a flat map). "
        "CAM overlap: the share of those top tokens that are also among the top 10% of the run's Grad-CAM (last "
        "ViT block, true class). Written by `bench analyze tokens`.",
        level_table("Activation concentration and CAM overlap (mean over images, then mean ± sd over seeds)", runs,
                    values, MEASURES),
    ]
    deltas = control_deltas(values, ok, ["conc_after", "overlap_after"])
    if not deltas.empty:
        blocks.append(delta_table("Paired Δ of the activation after the booster (arm − control)", deltas, MEASURES))
    blocks += _maps(results, runs, folder)
    return Section("Token activations", blocks)



def _maps(results: Path, runs: pd.DataFrame, folder: Path) -> list[Plot]:
    """Per task: the lowest seed's runs, each variant's map after the booster over the same images."""
    plots = []
    for (task, size, setting), grp in runs.reset_index().groupby(["task", "size", "setting"], sort=True):
        seed = grp["seed"].min()
        chosen = grp[grp["seed"] == seed].drop_duplicates("label").set_index("label")
        labels = label_order(chosen.index)
        arrays = {lab: read_analysis_arrays(results, KIND, chosen.at[lab, "run_id"]) for lab in labels}
        first = arrays[labels[0]]
        n = min(SHOWN, len(first["index"]))
        fig, axes = plt.subplots(n, len(labels) + 1, figsize=(1.9 * (len(labels) + 1), 2.0 * n), squeeze=False)
        for i in range(n):
            img = first["images"][i]
            rgb = np.repeat(img, 3 // img.shape[0], axis=0).transpose(1, 2, 0)
            axes[i, 0].imshow(rgb, interpolation="nearest")
            axes[i, 0].set_title(f"test #{first['index'][i]}", fontsize=8)
            for j, lab in enumerate(labels, start=1):
                a = arrays[lab]
                axes[i, j].imshow(a["after"][i], cmap="magma", interpolation="nearest")
                share = np.sort(a["after"][i].ravel())[::-1]
                k = max(1, int(np.ceil(0.1 * share.size - 1e-9)))
                axes[i, j].set_title(f"{lab}: {share[:k].sum() / share.sum():.2f}", fontsize=8)
        for ax in axes.flat:
            ax.set_axis_off()
        fig.tight_layout()
        stem = f"tokens_{task}{size}" + (f"_{zlib.crc32(setting.encode()):08x}" if setting else "")
        _save(fig, folder, stem)
        plots.append(Plot(f"Token activation after the booster: {row_name(task, size, setting)}", stem,
                          f"Seed {seed}; each map is the L2 norm of the patch tokens (own colour scale per map); "
                          "the title gives its concentration (share in the top 10% of tokens)."))
    return plots
