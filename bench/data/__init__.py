"""MedMNIST data: task specs, verified files, in-memory splits, batch augmentation, synthetic fixtures."""

from bench.data.augment import prepare_batch
from bench.data.files import (
    TASKS,
    TaskSpec,
    available_sizes,
    data_file,
    ensure_file,
    file_md5,
    file_status,
    file_url,
    resolve_root,
    task_spec,
)
from bench.data.fixtures import write_fixture
from bench.data.loading import SplitData, Splits, load_splits

__all__ = [
    "TASKS",
    "SplitData",
    "Splits",
    "TaskSpec",
    "available_sizes",
    "data_file",
    "ensure_file",
    "file_md5",
    "file_status",
    "file_url",
    "load_splits",
    "prepare_batch",
    "resolve_root",
    "task_spec",
    "write_fixture",
]
