"""MedMNIST data: task specs, verified files, synthetic fixtures (here, without torch); in-memory splits
(`bench.data.loading`) and batch augmentation (`bench.data.augment`) need torch and are imported from their
modules, so code that only needs task metadata does not pay for importing torch."""

from bench.data.files import data_file, ensure_file, file_md5, file_status, resolve_root
from bench.data.fixtures import write_fixture
from bench.data.info import TaskSpec, available_sizes, file_url, task_spec, tasks

__all__ = ["TaskSpec", "available_sizes", "data_file", "ensure_file", "file_md5", "file_status", "file_url",
           "resolve_root", "task_spec", "tasks", "write_fixture"]
