"""Before any training: everything the user can fix (tasks, sizes, data files, LLM sources) fails here,
as one line, before the results directory is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from bench.config import RunConfig
from bench.data import data_file, ensure_file, task_spec


def _is_hub_id(source: str) -> bool:
    from bench.models.llm import MINILM

    return source != MINILM and not Path(source).expanduser().exists()


def check_tasks(runs: Iterable[RunConfig]) -> None:
    """Every run's task and size exist (medmnist.INFO only: no files, no network)."""
    for task, size in sorted({(c.data.task, c.data.size) for c in runs}):
        task_spec(task, size)


def preflight(runs: Iterable[RunConfig], data_root: Path, download: bool = True) -> None:
    """Fail before any training on what the user can fix: tasks, sizes, data files, LLM sources.

    With `download=True` missing data files are fetched and hub configs read (network); with False
    nothing touches the network: tasks and sizes are checked, local LLM sources read, hub ids skipped,
    and a missing or corrupt data file is an error.
    """
    from bench.models.llm import block_key, check_block, llm_hidden_size

    runs = list(runs)
    for task, size in sorted({(c.data.task, c.data.size) for c in runs}):
        ensure_file(task_spec(task, size), data_root, download=download)
    for b in sorted({block_key(c.booster) for c in runs if c.booster.source}, key=str):
        if not download and _is_hub_id(b.source):
            continue
        if b.variant == "rllm":  # the layer range, model type and final norm, from the config alone
            check_block(b)
        else:
            llm_hidden_size(b.source, b.revision)


def check_offline(runs: Iterable[RunConfig], data_root: Path) -> list[str]:
    """For --dry-run and list: validate without network or hashing; returns notes about what is missing."""
    from bench.models.llm import llm_hidden_size

    runs = list(runs)
    notes = []
    for task, size in sorted({(c.data.task, c.data.size) for c in runs}):
        spec = task_spec(task, size)
        if not data_file(spec, data_root).exists():
            notes.append(f"{data_file(spec, data_root).name} is not in {data_root}/ yet (fetched when the grid runs)")
    for source, revision in sorted({(c.booster.source, c.booster.revision) for c in runs if c.booster.source}, key=str):
        if _is_hub_id(source):
            notes.append(f"hub model {source} is checked and fetched when the grid runs")
        else:
            llm_hidden_size(source, revision)
    return notes
