"""What every probe of stored models needs: the grid's ok 2D runs with saved weights, each rebuilt with the input
pipeline and precision its training evaluated with, and the task's test split it was tested on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data import task_spec
from bench.errors import BenchError
from bench.report.collect import collect
from bench.store import layout, read_run


def progress(line: str) -> None:
    """A progress line, flushed: the analyses take minutes, also when their output goes to a file."""
    print(line, flush=True)


def saved_runs(results: Path, expected: pd.DataFrame | None, command: str, tasks: list[str] | tuple = ()
               ) -> pd.DataFrame:
    """The ok runs of 2D tasks (of `tasks`, when given) whose weights are saved, sorted by task, label and seed; an
    error when none is."""
    grid = collect(Path(results), expected)
    ok = grid[grid["status"] == "ok"]
    if tasks:
        unknown = sorted(set(tasks) - set(grid["task"]))
        if unknown:
            raise BenchError(f"--task {', '.join(unknown)}: not a task of this grid "
                             f"({', '.join(sorted(set(grid['task'])))})")
        ok = ok[ok["task"].isin(tasks)]
    ok = ok[[not task_spec(t, int(s)).is_3d for t, s in zip(ok["task"], ok["size"])]]
    if ok.empty:
        raise BenchError(f"bench analyze {command}: no ok run of a 2D task under {results}; run the grid first "
                         "(3D tasks are not analysed)")
    saved = ok[ok["run_id"].map(lambda r: layout.weights_path(results, r).is_file())]
    if saved.empty:
        raise BenchError(f"bench analyze {command}: none of the {len(ok)} ok 2D runs under {results} has saved "
                         "weights; rerun them with `bench run ... --set save_weights=true --force`")
    return saved.sort_values(["task", "size", "setting", "label", "seed", "run_id"]).reset_index(drop=True)


@dataclass
class Probe:
    """A stored run's model, ready to evaluate as its training did."""

    row: dict
    model: object  # RLLMViT, eval mode, on the device
    spec: object  # TaskSpec
    pipeline: object  # its eval transform (bench.data.augment.Pipeline)
    autocast: object  # the run's precision (its row), as in training
    device: object

    def logits(self, images, batch_size: int = 256):
        """The task's logits of uint8 images (N, C, H, W) (torch), as the run's test pass computed them."""
        import torch

        from bench.train import predict

        return predict(self.model, self.pipeline, torch.as_tensor(images).to(self.device), batch_size,
                       self.autocast, self.spec.n_classes)


def load_probe(results: Path, run_id: str, device) -> Probe:
    from bench.data.augment import Pipeline
    from bench.models.restore import load_run_model
    from bench.train import autocast, model_io, precision

    row = read_run(results, run_id)
    model, cfg, spec = load_run_model(row, layout.weights_path(results, run_id), device)
    dtype = row.get("precision") or precision(device)  # as its training evaluated
    return Probe(row, model, spec, Pipeline(cfg, spec, *model_io(model, spec)), autocast(device, dtype), device)


def test_split(spec, root: Path, runs: pd.DataFrame):
    """The task's test split, checked to be the file every run in `runs` was tested on."""
    from bench.data.loading import load_splits

    splits = load_splits(spec, root, download=False, splits=("test",))
    for rid, md5 in zip(runs["run_id"], runs["data.md5"]):
        if md5 != splits.md5:
            raise BenchError(f"the {spec.task} file under {root} (md5 {splits.md5}) is not the one run {rid} was "
                             f"tested on (md5 {md5}): pass the --data-root it ran with")
    return splits.test


def sample(n: int, images: int | None) -> np.ndarray:
    """`images` indices spread evenly over n test images (all of them for None or images >= n)."""
    if images is None or images >= n:
        return np.arange(n)
    if images < 1:
        raise BenchError(f"--images {images}: give the number of test images to use, at least 1")
    return np.unique(np.linspace(0, n - 1, images).round().astype(int))


def analysed(results: Path, kind: str, run_id: str, meta: dict[str, str], arrays: bool = False) -> bool:
    """Whether the store holds analysis `kind` of this run made with `meta` (the training it probed and its inputs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = layout.analysis_path(results, kind, run_id)
    if not path.is_file() or (arrays and not layout.analysis_path(results, kind, run_id, ".npz").is_file()):
        return False
    try:
        stored = {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()}
    except (OSError, pa.ArrowException):
        return False
    return all(stored.get(k) == v for k, v in meta.items())
