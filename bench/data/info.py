"""What medmnist says about each task (type, channels, labels, sizes, file names, URLs, MD5s).

Everything comes from `medmnist.INFO`, so a medmnist release that adds a task or re-uploads a file
needs no change here. INFO is read from medmnist's own `info` module without importing the medmnist
package, whose `__init__` imports torch: checking a grid's tasks costs milliseconds, not seconds.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError


@functools.cache
def _medmnist_info():
    if "medmnist.info" in sys.modules:
        return sys.modules["medmnist.info"]
    package = importlib.util.find_spec("medmnist")
    if package is None or not package.submodule_search_locations:
        raise BenchError("the medmnist package is missing; pip install medmnist")
    path = Path(list(package.submodule_search_locations)[0]) / "info.py"
    spec = importlib.util.spec_from_file_location("_bench_medmnist_info", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def info() -> dict:
    return _medmnist_info().INFO


def default_root() -> str | None:
    """medmnist's default data folder (~/.medmnist), None if it could not be created."""
    return _medmnist_info().DEFAULT_ROOT


def tasks() -> list[str]:
    return list(info())




@dataclass(frozen=True)
class TaskSpec:
    """One task at one image size, as `medmnist.INFO` describes it."""

    task: str
    size: int
    task_type: str  # multi-class | binary-class | ordinal-regression | multi-label, binary-class
    n_channels: int
    n_classes: int  # number of model outputs: classes, or labels for multi-label
    is_3d: bool
    n_samples: dict = field(hash=False)  # {"train": ..., "val": ..., "test": ...}

    @property
    def multilabel(self) -> bool:
        return self.task_type.startswith("multi-label")


def available_sizes(task: str) -> list[int]:
    """28 (the `url`/`MD5` keys) plus every size INFO has a `url_<size>` for."""
    return [28] + sorted(int(k[len("url_") :]) for k in info()[task] if k.startswith("url_"))


@functools.cache
def task_spec(task: str, size: int) -> TaskSpec:
    if task not in info():
        near = difflib.get_close_matches(task, tasks(), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise BenchError(f"unknown task '{task}': {hint}valid tasks: {', '.join(tasks())}")
    sizes = available_sizes(task)
    if size not in sizes:
        raise BenchError(f"size {size} is not available for {task}: use one of {', '.join(map(str, sizes))}")
    entry = info()[task]
    return TaskSpec(
        task=task,
        size=size,
        task_type=entry["task"],
        n_channels=entry["n_channels"],
        n_classes=len(entry["label"]),
        is_3d=entry["python_class"].endswith("3D"),
        n_samples=dict(entry["n_samples"]),
    )


def _size_flag(size: int) -> str:
    """medmnist's suffix for file names and INFO keys: '' at 28, '_64' etc. otherwise."""
    return "" if size == 28 else f"_{size}"


def file_name(spec: TaskSpec) -> str:
    return f"{spec.task}{_size_flag(spec.size)}.npz"


def file_url(spec: TaskSpec) -> str:
    return info()[spec.task][f"url{_size_flag(spec.size)}"]


def official_md5(spec: TaskSpec) -> str:
    return info()[spec.task][f"MD5{_size_flag(spec.size)}"]


