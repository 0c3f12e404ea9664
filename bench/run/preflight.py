"""Before any training: everything the user can fix (tasks, sizes, data files, ViT weights, LLM sources and their
weight files) fails here, as one line, before the results directory is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from bench.config import RunConfig
from bench.data import data_file, ensure_file, task_spec
from bench.errors import BenchError
from bench.models.registry import VARIANTS


def _is_hub_id(source: str) -> bool:
    from bench.models.gguf_file import PACKAGED
    from bench.models.llm import MINILM

    return source != MINILM and source not in PACKAGED and not Path(source).expanduser().exists()


def check_tasks(runs: Iterable[RunConfig]) -> None:
    """Every run's task and size exist (medmnist.INFO only: no files, no network)."""
    for task, size in sorted({(c.data.task, c.data.size) for c in runs}):
        task_spec(task, size)


def _vit_weights(runs: list[RunConfig]) -> list[str]:
    """The full names of the timm weights the runs ask for, each checked against its vit.arch."""
    from bench.models.backbones import check_weights, weights_tag

    return sorted({check_weights(weights_tag(c.vit), c.vit.arch) for c in runs if weights_tag(c.vit)})


def preflight(runs: Iterable[RunConfig], data_root: Path, download: bool = True) -> None:
    """Fail before any training on what the user can fix: tasks, sizes, data files, ViT weights, LLM sources.

    With `download=True` missing data files and timm weights are fetched and hub configs read (network); with
    False nothing touches the network: tasks and sizes are checked, local LLM sources read, hub ids skipped,
    and a missing or corrupt data file, or missing timm weights, is an error.
    """
    from bench.models.backbones import weights_file
    from bench.models.llm import block_key, check_block, llm_hidden_size

    runs = list(runs)
    for task, size in sorted({(c.data.task, c.data.size) for c in runs}):
        ensure_file(task_spec(task, size), data_root, download=download)
    for tag in _vit_weights(runs):
        weights_file(tag, download=download)
    for b in sorted({block_key(c.booster) for c in runs if c.booster.source}, key=str):
        if not download and _is_hub_id(b.source):
            continue
        if VARIANTS[b.variant].has_layer:  # the layer range, model type and final norm, from the config alone
            check_block(b)
        else:
            llm_hidden_size(b.source, b.revision)
    check_llm_files(runs)
    check_starts(runs, download)


def check_llm_files(runs: list[RunConfig]) -> None:
    """Every local LLM folder a run loads layers from has whole weight files (index, headers, shards: no tensor
    read), and has weights at all where a run takes pretrained ones; hub ids are checked as they download."""
    from bench.models.llm.source import Source
    from bench.models.llm.verify import check_files

    needs: dict[tuple[str, str | None], bool] = {}
    for c in runs:
        b = c.booster
        if b.source and VARIANTS[b.variant].has_layer and not _is_hub_id(b.source):
            key = (b.source, b.revision)
            needs[key] = needs.get(key, False) or b.init != "random"
    for (source, revision), need_weights in sorted(needs.items(), key=str):
        check_files(Source(source, revision), need_weights)


def check_starts(runs: list[RunConfig], download: bool = True) -> None:
    """Each distinct model started from a vit.checkpoint is built once and the file mapped onto it, so a key or a
    shape that does not fit fails here, before any training (offline: not those whose LLM is a hub id)."""
    from bench.models.build import build_model

    seen = set()
    for c in runs:
        key = (c.vit, c.booster, c.data.task, c.data.size, c.data.rgb)
        offline_hub = not download and VARIANTS[c.booster.variant].has_layer and _is_hub_id(c.booster.source)
        if c.vit.checkpoint and key not in seen and not offline_hub:
            seen.add(key)
            build_model(c, task_spec(c.data.task, c.data.size))


def check_offline(runs: Iterable[RunConfig], data_root: Path) -> list[str]:
    """For --dry-run and list: validate without network or hashing; returns notes about what is missing. Missing
    timm weights are an error when the hub is off (HF_HUB_OFFLINE), else a note. Local LLM sources are read: their
    layers (relative ones resolved against their depth) and final norms checked."""
    from huggingface_hub import constants

    from bench.models.backbones import local_weights, missing_weights
    from bench.models.llm import block_key, check_block, llm_hidden_size

    runs = list(runs)
    notes = []
    for task, size in sorted({(c.data.task, c.data.size) for c in runs}):
        spec = task_spec(task, size)
        if not data_file(spec, data_root).exists():
            notes.append(f"{data_file(spec, data_root).name} is not in {data_root}/ yet (fetched when the grid runs)")
    for tag in _vit_weights(runs):
        if local_weights(tag) is None:
            if constants.HF_HUB_OFFLINE:
                raise BenchError(missing_weights(tag, "the hub is off (HF_HUB_OFFLINE)"))
            notes.append(f"timm weights {tag} are fetched from the hub when the grid runs")
    for source, revision in sorted({(c.booster.source, c.booster.revision) for c in runs if c.booster.source}, key=str):
        if _is_hub_id(source):
            notes.append(f"hub model {source} is checked and fetched when the grid runs")
        else:
            llm_hidden_size(source, revision)
    for b in sorted({block_key(c.booster) for c in runs if VARIANTS[c.booster.variant].has_layer}, key=str):
        if not _is_hub_id(b.source):
            check_block(b)
    check_llm_files(runs)
    return notes
