"""MedMNIST data: task specs, verified files, in-memory splits, batch augmentation, synthetic fixtures.

Names are imported on first use, so code that only needs task metadata (`bench.data.info`) does not
pay for importing torch.
"""

import importlib

_WHERE = {
    "prepare_batch": "augment",
    "TaskSpec": "info", "available_sizes": "info", "file_url": "info", "task_spec": "info", "tasks": "info",
    "data_file": "files", "ensure_file": "files", "file_md5": "files", "file_status": "files",
    "resolve_root": "files",
    "write_fixture": "fixtures",
    "SplitData": "loading", "Splits": "loading", "load_splits": "loading",
}
__all__ = ["TASKS", *_WHERE]


def __getattr__(name: str):
    if name == "TASKS":
        return importlib.import_module("bench.data.info").tasks()
    if name in _WHERE:
        return getattr(importlib.import_module(f"bench.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bench.data' has no attribute {name!r}")
