"""Load a verified MedMNIST file into memory once, as uint8 channels-first tensors.

Training indexes these tensors by batch (and `prepare_batch` turns a batch into floats), so there is
no per-sample PIL decode and no DataLoader worker: at MedMNIST sizes the whole split fits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data.files import _ensure
from bench.data.info import TaskSpec
from bench.errors import BenchError

SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    """One split. RGB images are a view of the npz's channels-last array (no copy), so `.view()` on
    them needs `.contiguous()` first; indexing a batch and every elementwise op work as usual."""

    images: torch.Tensor  # uint8, 2D (N, C, H, W), 3D (N, 1, D, H, W)
    labels: torch.Tensor  # int64 (N, L), L = 1, or the number of labels for multi-label

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    train: SplitData | None
    val: SplitData | None
    test: SplitData | None  # None when not asked for, e.g. while tuning
    md5: str
    fixture: bool  # synthetic data from write_fixture, not the official file


def _images(spec: TaskSpec, array: np.ndarray, path: Path) -> torch.Tensor:
    spatial = (spec.size,) * (3 if spec.is_3d else 2)
    expected = spatial + ((3,) if spec.n_channels == 3 else ())
    if array.dtype != np.uint8 or array.shape[1:] != expected:
        raise BenchError(
            f"{path} holds {array.dtype} images of shape {array.shape[1:]}, expected uint8 {expected} "
            f"for {spec.task} at size {spec.size}: delete it and fetch or write it again"
        )
    images = torch.from_numpy(array)
    return images.permute(0, 3, 1, 2) if spec.n_channels == 3 else images.unsqueeze(1)


def load_splits(spec: TaskSpec, root: str | Path, download: bool = True, splits=SPLITS) -> Splits:
    """The verified file's `splits` (others are None); a missing file is fetched when `download`."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {SPLITS}")
    path, md5, fixture = _ensure(spec, root, download)
    loaded = {}
    with np.load(path) as npz:
        for split in splits:
            labels = torch.from_numpy(npz[f"{split}_labels"].astype(np.int64))
            loaded[split] = SplitData(_images(spec, npz[f"{split}_images"], path), labels)
    return Splits(**{s: loaded.get(s) for s in SPLITS}, md5=md5, fixture=fixture)
