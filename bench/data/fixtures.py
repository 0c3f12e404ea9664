"""Small synthetic MedMNIST files in the official npz format, for tests and dry runs without the data.

Each class (label, for multi-label) owns a coarse random pattern, symmetric under the flips that
`prepare_batch` applies and coarse enough to survive its shifts, so a tiny model trained with the
default augmentation still beats chance. The file's MD5 goes into the root's fixture registry: the
loader accepts it, but only ever as "verified (fixture)", never as real data.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from bench.crashsafe import write_atomic
from bench.data.files import (
    FIXTURE_REGISTRY,
    VERIFIED,
    _cache_store,
    _hash,
    _write_json,
    data_file,
    file_status,
    registered_fixtures,
)
from bench.data.info import task_spec
from bench.errors import BenchError

SPLITS = ("train", "val", "test")
GRID = 4  # pattern cells per spatial axis: 7 px at size 28, wider than the largest shift (4 px)


def _patterns(rng: np.random.Generator, n_classes: int, spatial: tuple[int, ...], channels: tuple[int, ...],
              flip_axes: tuple[int, ...]) -> np.ndarray:
    """float32 (n_classes, *spatial, *channels) blocky fields in [0, 1], symmetric along `flip_axes`."""
    coarse = rng.random((n_classes, *(GRID,) * len(spatial), *channels), dtype=np.float32)
    for ax in flip_axes:
        coarse = (coarse + np.flip(coarse, axis=1 + ax)) / 2
    for ax, side in enumerate(spatial):
        coarse = np.take(coarse, np.arange(side) * GRID // side, axis=1 + ax)
    return coarse


def _labels(rng: np.random.Generator, n: int, n_classes: int, multilabel: bool) -> np.ndarray:
    """uint8 (n, 1) with every class present, or (n, n_classes) with every label both on and off."""
    if multilabel:
        y = rng.random((n, n_classes)) < 0.3
        cols = np.arange(n_classes)
        y[cols % n, cols] = True
        y[(cols + n // 2) % n, cols] = False
        return y.astype(np.uint8)
    return rng.permutation(np.arange(n) % n_classes).astype(np.uint8)[:, None]


def write_fixture(root: str | Path, task: str, size: int = 28, n: tuple[int, int, int] = (64, 32, 32),
                  seed: int = 0) -> Path:
    """Write `{root}/{official file name}` with n train/val/test samples and register its MD5."""
    spec = task_spec(task, size)
    root = Path(root)
    path = data_file(spec, root)
    if min(n) < (2 if spec.multilabel else spec.n_classes):
        raise ValueError(f"{task} has {spec.n_classes} classes: every split needs at least that many samples, got {n}")
    if path.exists() and file_status(spec, root) == VERIFIED:
        raise BenchError(f"{path} is the real {task} file: write fixtures into another directory")

    rng = np.random.default_rng(seed)
    spatial = (size,) * (3 if spec.is_3d else 2)
    channels = (3,) if spec.n_channels == 3 else ()  # the npz keeps RGB channels last, grey unsqueezed
    flip_axes = (0, 1, 2) if spec.is_3d else (1,)  # prepare_batch flips every 3D axis, only 2D width
    patterns = _patterns(rng, spec.n_classes, spatial, channels, flip_axes)
    arrays = {}
    for split, count in zip(SPLITS, n):
        y = _labels(rng, count, spec.n_classes, spec.multilabel)
        if spec.multilabel:
            signal = np.tensordot(y.astype(np.float32), patterns - 0.5, axes=1) / 2 + 0.5
        else:
            signal = patterns[y[:, 0]]
        noise = rng.standard_normal((count, *spatial, *channels), dtype=np.float32) * 0.08
        arrays[f"{split}_images"] = np.clip(255 * (0.1 + 0.8 * signal + noise), 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = y

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(path, buf.getvalue())
    md5 = _hash(path)
    _cache_store(path.resolve(), md5)
    _write_json(root / FIXTURE_REGISTRY, {**registered_fixtures(root), path.name: md5})
    return path
