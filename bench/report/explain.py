"""The report's "Explanations" section: the heatmaps `bench explain` (bench.analyze.explain) wrote into the report
folder, read back from their .json descriptions; nothing here builds a model."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report.plots import Plot
from bench.report.tables import Section

FOLDER = "explain"
INTRO = ("CAM heatmaps of the same test images under a baseline run and its paired R-LLM run (same data, ViT and "
         "training settings and seed), computed by grad-cam at the last ViT block's first norm (before the booster) "
         "for the image's true class, each scaled to [0, 1] per image. Written by `bench explain`.")


def explain_sections(folder: Path) -> list[Section]:
    """The report's "Explanations" section when `bench explain` wrote figures into `folder`, else nothing."""
    plots = []
    for meta_file in sorted((Path(folder) / FOLDER).glob("*.json")):
        if meta_file.with_suffix(".png").is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            plots.append(Plot(meta["title"], f"{FOLDER}/{meta_file.stem}", meta["caption"]))
    return [Section("Explanations", [INTRO, *plots])] if plots else []
