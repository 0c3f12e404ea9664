"""`bench analyze tokens`: where the patch tokens' activation sits just before and just after the booster.

LM4VisualEncoding (Pang et al., ICLR 2024) explains a frozen LLM layer's gain by "information filtering": the
layer amplifies the tokens that carry the class evidence, seen as feature-activation maps (the L2 norm of each
token's feature) that concentrate on the object. Here every saved 2D run of a grid is probed at the same place:
"before" is the output of the last ViT block (the booster's input), "after" the booster's output (FE -> FL -> FD
and its residual wiring), which the final norm sees. A run without a booster (the baseline) has the same map
before and after: at that place nothing happens. The maps are the norms of the patch tokens (the class token
left out) on the patch grid, for a fixed sample of test images spread evenly over the split.

Per image: the concentration (the share of the map's total in its top 10% of tokens, at least one), and the
overlap of those top tokens with the top 10% of the run's Grad-CAM (bench.analyze.explain: grad-cam at the last
ViT block's norm1, for the true class, averaged over each patch): the share of the activation's top tokens that
are also the CAM's (NaN where the CAM is zero everywhere). Stored beside the run: analyze/tokens/<run_id>.parquet
(one row per image) and .npz (the images, maps and CAMs), which the report pairs by seed across arms.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from bench.analyze.runs import analysed, load_probe, progress, sample, saved_runs, test_split
from bench.store import write_analysis

KIND = "tokens"
TOP = 0.10
COLUMNS = pa.schema([("index", pa.int64()), ("target", pa.int64()), ("conc_before", pa.float64()),
                     ("conc_after", pa.float64()), ("overlap_before", pa.float64()), ("overlap_after", pa.float64())])


def top_k(n_tokens: int, top: float = TOP) -> int:
    return max(1, math.ceil(top * n_tokens - 1e-9))


def concentration(maps: np.ndarray, top: float = TOP) -> np.ndarray:
    """Per map (N, ...): the share of its total held by its top `top` share of entries (at least one)."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    k = top_k(flat.shape[1], top)
    return np.sort(flat, axis=1)[:, -k:].sum(1) / flat.sum(1)


def top_overlap(a: np.ndarray, b: np.ndarray, top: float = TOP) -> np.ndarray:
    """Per pair of maps: the share of a's top-k entries that are among b's top-k (NaN where b is constant)."""
    fa, fb = (np.asarray(m, np.float64).reshape(len(m), -1) for m in (a, b))
    k = top_k(fa.shape[1], top)
    ia, ib = np.argsort(-fa, axis=1, kind="stable")[:, :k], np.argsort(-fb, axis=1, kind="stable")[:, :k]
    share = np.array([len(np.intersect1d(x, y)) / k for x, y in zip(ia, ib)])
    return np.where(np.ptp(fb, axis=1) > 0, share, np.nan)


def token_norms(model, x) -> tuple[np.ndarray, np.ndarray]:
    """(before, after): the L2 norm of each patch token (N, grid_h, grid_w) at the booster's input and output
    (the same map twice when the model has no booster)."""
    import torch

    from bench.models.booster import Booster

    vit = model.backbone
    site = getattr(vit, model.site)  # the module list the booster is appended to (its registry entry's)
    last_block = [b for b in site if not isinstance(b, Booster)][-1]
    seen: dict = {}
    hooks = [last_block.register_forward_hook(lambda m, i, o: seen.__setitem__("before", o))]
    if model.booster is not None:
        hooks.append(model.booster.register_forward_hook(lambda m, i, o: seen.__setitem__("after", o)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    grid, prefix = tuple(vit.patch_embed.grid_size), vit.num_prefix_tokens

    def norms(tokens):
        return tokens[:, prefix:].float().norm(dim=-1).reshape(len(tokens), *grid).cpu().numpy()

    before = norms(seen["before"])
    return before, norms(seen["after"]) if "after" in seen else before.copy()


def pool(cams: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """CAMs (N, S, S) at the model's input size averaged over each patch: (N, grid_h, grid_w)."""
    n, h, w = cams.shape
    return cams.reshape(n, grid[0], h // grid[0], grid[1], w // grid[1]).mean(axis=(2, 4))


def tokens(results: Path, expected: pd.DataFrame | None = None, *, tasks: list[str] | tuple = (), images: int = 16,
           data_root=None, device: str = "auto", force: bool = False, log=progress) -> list[str]:
    """Probe every saved ok 2D run of `expected` (None: the whole store); returns the run ids written."""
    from bench.analyze.explain import compute_cams, target_classes
    from bench.data import resolve_root, task_spec
    from bench.train import pick_device

    results = Path(results)
    runs = saved_runs(results, expected, KIND, tasks)
    sample(10, images)  # a bad --images is an error before any work
    root, dev = resolve_root(data_root), pick_device(device)
    written = []
    for (task, size), task_runs in runs.groupby(["task", "size"], sort=True):
        todo = [rid for rid in task_runs["run_id"]
                if force or not analysed(results, KIND, rid, _meta(results, rid, images), arrays=True)]
        log(f"{task}@{size}: {len(task_runs)} saved runs, {len(task_runs) - len(todo)} already analysed, "
            f"{len(todo)} to do")
        if not todo:
            continue
        spec = task_spec(task, int(size))
        test = test_split(spec, root, task_runs)
        index = sample(len(test), images)
        raw = test.images[index]
        classes = target_classes(spec.multilabel, test.labels[index].numpy())
        for rid in todo:
            t0 = time.perf_counter()
            probe = load_probe(results, rid, dev)
            x = probe.pipeline.eval(raw.to(dev))
            before, after = token_norms(probe.model, x)
            cams, _ = compute_cams(probe.model, x, classes, "gradcam")
            cam = pool(cams, before.shape[1:])
            table = pa.Table.from_pydict({
                "index": index, "target": classes.astype(np.int64),
                "conc_before": concentration(before), "conc_after": concentration(after),
                "overlap_before": top_overlap(before, cam), "overlap_after": top_overlap(after, cam)}, schema=COLUMNS)
            arrays = {"index": index, "images": raw.numpy(), "before": before, "after": after, "cam": cam}
            write_analysis(results, KIND, rid, table.replace_schema_metadata(_meta(results, rid, images)), arrays)
            written.append(rid)
            log(f"  {rid} ({probe.row['label']}, seed {probe.row['seed']}): {len(index)} images in "
                f"{time.perf_counter() - t0:.1f} s")
    return written


def _meta(results: Path, run_id: str, images: int) -> dict[str, str]:
    from bench.store import read_run

    row = read_run(results, run_id) or {}
    return {"started_at": str(row.get("started_at")), "images": str(images), "top": str(TOP)}

