"""`bench explain`: CAM heatmaps of the same test images under a baseline run and its paired R-LLM run.

Where the models look, as the paper's heatmap figure shows it: grad-cam (`pytorch_grad_cam`) on the last ViT
block's norm1, before the booster, so both models are explained at the same place; its tokens, without the
class token, folded back to the patch grid. Each CAM explains the image's true class (multi-label tasks: the
first label present). The runs are paired as the report pairs them (same data/vit/train settings and seed,
`bench.report.stats.pairs`) and rebuilt from their saved weights (`bench.models.restore`).

Writes into <report folder>/explain/: <stem>.png and .svg (one row per image: the image, the baseline's CAM,
the R-LLM's CAM), <stem>.npz (the CAMs and image indices, for analysis) and <stem>.json (what the figure
shows), which `bench.report.explain.explain_sections` puts into the report. torch is imported only when heatmaps
are computed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data import task_spec
from bench.errors import BenchError
from bench.models.registry import layer_variants
from bench.report.collect import collect
from bench.report.explain import FOLDER
from bench.report.stats import CELL, pairs
from bench.store import layout, read_run

METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
           "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM"}  # pytorch_grad_cam's


def explain(results: Path, folder: Path, *, tasks: list[str] | tuple = (), images: int = 8, method: str = "gradcam",
            expected: pd.DataFrame | None = None, data_root: str | Path | None = None,
            device: str = "auto") -> list[Path]:
    """Render the heatmaps of each R-LLM label of `tasks` (default: every task with saved pairs) at its lowest
    seed with saved weights, for `images` test images spread evenly over the test split; returns the PNGs."""
    if images < 1:
        raise BenchError(f"--images {images}: give the number of test images to show, at least 1")
    if method not in METHODS:
        raise BenchError(f"--method {method} is not one of {', '.join(METHODS)}")
    chosen = _choose(Path(results), collect(Path(results), expected), list(dict.fromkeys(tasks)))

    from bench.data import resolve_root
    from bench.train import pick_device

    root, dev = resolve_root(data_root), pick_device(device)
    folder = Path(folder) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return [_render(Path(results), pair, folder, images, method, root, dev) for pair in chosen]


def _choose(results: Path, grid: pd.DataFrame, tasks: list[str]) -> list[pd.Series]:
    """Per task and R-LLM cell, the paired runs of the lowest seed whose weights are both saved."""
    ok = grid[grid["status"] == "ok"]
    paired = pairs(ok)
    paired = paired[paired["run_id"].isin(ok.loc[ok["booster.variant"].isin(layer_variants()), "run_id"])]
    for task in tasks:
        if task_spec(task, 28).is_3d:  # every task has 28-px files; an unknown task is an error here too
            raise BenchError(f"bench explain: {task} is a 3D task, and CAM heatmaps of 3D volumes are not supported "
                             "(2D ViTs only)")
    wanted = tasks or sorted(t for t in set(paired["task"]) if not task_spec(t, 28).is_3d)
    if not wanted:
        raise BenchError(f"no ok R-LLM run of a 2D task has an ok baseline run to pair with under {results}: run a "
                         "grid with variants baseline and rllm (booster.variant) and --set save_weights=true")
    chosen = []
    for task in wanted:
        sub = paired[paired["task"] == task]
        if sub.empty:
            raise BenchError(f"no ok R-LLM run of {task} has an ok baseline run to pair with under {results} (tasks "
                             f"with pairs: {', '.join(sorted(set(paired['task']))) or 'none'})")
        saved = sub["run_id"].map(lambda r: layout.weights_path(results, r).is_file()) & \
            sub["run_id_base"].map(lambda r: layout.weights_path(results, r).is_file())
        if not saved.any():
            first = sub.iloc[0]
            raise BenchError(f"the paired runs of {task} have no saved weights (e.g. baseline {first['run_id_base']}, "
                             f"R-LLM {first['run_id']}): rerun them with `bench run ... --set save_weights=true --force`")
        for _, cell in sub[saved].sort_values(CELL + ["seed"]).groupby(CELL, sort=True):
            chosen.append(cell.iloc[0])
    return chosen


def target_classes(multilabel: bool, labels) -> np.ndarray:
    """The class each CAM explains: the true one; for multi-label, the first label present (else label 0)."""
    labels = np.asarray(labels)
    return labels.argmax(1) if multilabel else labels[:, 0]


def cam_layer(model):
    """The last ViT block's norm1: the last of the backbone's blocks that is not the booster."""
    from bench.models.booster import Booster

    return [b for b in model.backbone.blocks if not isinstance(b, Booster)][-1].norm1


def compute_cams(model, x, classes: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) CAMs in [0, 1] at the input's size, and the model's logits, for input batch `x`."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    vit = model.backbone
    grid, prefix = tuple(vit.patch_embed.grid_size), vit.num_prefix_tokens

    def to_grid(tokens):  # (B, prefix + gh * gw, C) -> (B, C, gh, gw), as a CNN's feature map
        return tokens[:, prefix:, :].reshape(tokens.shape[0], *grid, tokens.shape[-1]).permute(0, 3, 1, 2)

    cam_cls = getattr(pytorch_grad_cam, METHODS[method])
    with cam_cls(model=model, target_layers=[cam_layer(model)], reshape_transform=to_grid) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
        return heat, cam.outputs.detach().float().cpu()


def _render(results: Path, pair: pd.Series, folder: Path, images: int, method: str, root: Path, dev) -> Path:
    from bench.data.loading import load_splits
    from bench.data.augment import Pipeline
    from bench.metrics import scores_from_logits
    from bench.models.backbones import task_logits
    from bench.models.restore import load_run_model
    from bench.train import model_io

    rows = {"baseline": read_run(results, pair["run_id_base"]), "rllm": read_run(results, pair["run_id"])}
    models, pipelines = {}, {}
    for name, row in rows.items():
        models[name], cfg, spec = load_run_model(row, layout.weights_path(results, row["run_id"]), dev)
        pipelines[name] = Pipeline(cfg, spec, *model_io(models[name], spec))  # the inputs its training evaluated
    splits = load_splits(spec, root, download=False, splits=("test",))
    for row in rows.values():
        if row["data.md5"] != splits.md5:
            raise BenchError(f"the {spec.task} file under {root} (md5 {splits.md5}) is not the one run {row['run_id']} "
                             f"was tested on (md5 {row['data.md5']}): pass the --data-root it ran with")
    n = len(splits.test)
    index = np.unique(np.linspace(0, n - 1, min(images, n)).round().astype(int))
    classes = target_classes(spec.multilabel, splits.test.labels[index].numpy())
    cams, probs = {}, {}
    for name, model in models.items():
        x = pipelines[name].eval(splits.test.images[index].to(dev))
        cams[name], logits = compute_cams(model, x, classes, method)
        cams[name] = to_side(cams[name], splits.test.images.shape[-1])
        scores = scores_from_logits(spec.task_type, task_logits(logits, spec.n_classes))
        probs[name] = scores[np.arange(len(index)), classes]

    label = str(pair["label"])
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{spec.task}{spec.size}_{label}_{pair['run_id']}_{method}")
    np.savez(folder / f"{stem}.npz", index=index, target=classes, baseline=cams["baseline"], rllm=cams["rllm"],
             p_baseline=probs["baseline"], p_rllm=probs["rllm"])
    _draw(splits.test.images[index].numpy(), index, classes, cams, probs, label, folder / stem)
    setting = f", {pair['setting']}" if pair["setting"] else ""
    meta = {"title": f"{method} heatmaps: {spec.task} @{spec.size}, baseline vs {label}",
            "caption": f"Seed {pair['seed']}{setting}; baseline run {pair['run_id_base']}, {label} run {pair['run_id']}; "
                       f"test images {', '.join(map(str, index))}; p = the model's probability of the explained class.",
            "baseline": pair["run_id_base"], "rllm": pair["run_id"], "method": method, "index": index.tolist()}
    (folder / f"{stem}.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return folder / f"{stem}.png"


def to_side(cams: np.ndarray, side: int) -> np.ndarray:
    """CAMs at the model's input size (224 in paper mode) resized to the stored image's side, to overlay it."""
    if cams.shape[-1] == side:
        return cams
    import cv2

    return np.stack([cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA) for c in cams])


def _draw(images: np.ndarray, index: np.ndarray, classes: np.ndarray, cams: dict, probs: dict, label: str,
          stem: Path) -> None:
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    fig, axes = plt.subplots(len(index), 3, figsize=(6.6, 2.3 * len(index)), squeeze=False)
    for i, row in enumerate(axes):
        rgb = np.repeat(images[i], 3 // images[i].shape[0], axis=0).transpose(1, 2, 0).astype(np.float32) / 255
        row[0].imshow(rgb, interpolation="nearest")
        row[0].set_title(f"test #{index[i]}, class {classes[i]}", fontsize=9)
        for ax, name, title in ((row[1], "baseline", "baseline"), (row[2], "rllm", label)):
            ax.imshow(show_cam_on_image(rgb, cams[name][i], use_rgb=True), interpolation="nearest")
            flat = " (CAM 0 everywhere)" if not cams[name][i].any() else ""  # no positive evidence at this layer
            ax.set_title(f"{title}: p = {probs[name][i]:.2f}{flat}", fontsize=9)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    fig.savefig(stem.with_suffix(".svg"), metadata={"Date": None})
    plt.close(fig)
