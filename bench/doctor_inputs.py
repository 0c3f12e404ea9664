"""`bench doctor`'s checks of a --grid: whether what it reads (data files, timm weights, LLMs) is whole here or can
be fetched, checked as `bench run` would check it (data files by MD5, LLM folders by their weight files); and which
of its runs the paper step builds, so the memory figure and --runs-per-gpu are about the grid's own model and batch."""

from __future__ import annotations

import json
from pathlib import Path

from bench.doctor_base import Check, Options


def grid_inputs(opts: Options, grid=None) -> Check:
    """The data files, timm weights and LLMs a grid needs: whole on disk or in the cache (data files by their MD5 as
    `bench data list` checks them, LLM folders by their weight files' headers), or reachable to fetch."""
    from huggingface_hub import constants

    from bench.data import data_file, file_status, resolve_root, task_spec
    from bench.grid import load_grid
    from bench.models.backbones import local_weights
    from bench.run.preflight import _vit_weights

    if not opts.grid:
        return Check("grid inputs", "skip", "give --grid NAME to check a grid's data, timm and LLM weights")
    grid = grid or load_grid(opts.grid, dict(opts.sets))
    root = resolve_root(opts.data_root)
    found, missing, why = [], [], []
    fetch: dict[str, list[str]] = {"https://zenodo.org": [], "https://huggingface.co": []}  # MedMNIST; timm, LLMs
    for task, size in sorted({(c.data.task, c.data.size) for c in grid.runs}):
        spec = task_spec(task, size)
        status, name = file_status(spec, root), data_file(spec, root).name
        if status == "corrupt":  # as `bench data list` calls it, and `bench run` refuses it
            missing.append(name)
            why.append(f"{name} is corrupt (not the official MD5): `bench data fetch {task} --size {size}` again")
        else:
            (found if status.startswith("verified") else fetch["https://zenodo.org"]).append(name)
    for tag in _vit_weights(grid.runs):
        (found if local_weights(tag) else fetch["https://huggingface.co"]).append(f"timm {tag}")
    for source in sorted({c.booster.source for c in grid.runs if c.booster.source}):
        where, reason = llm_status(source)
        (found if where == "here" else fetch["https://huggingface.co"] if where == "hub" else missing).append(source)
        why += [reason] if reason else []
    fetched = []
    for url, items in fetch.items():
        if not items:
            continue
        offline = url.endswith("huggingface.co") and constants.HF_HUB_OFFLINE
        reach = "the hub is off (HF_HUB_OFFLINE)" if offline else _reachable(url)
        if reach == "reachable":
            fetched += items
        else:
            missing += items
            why.append(reach)
    detail = f"grid {grid.name}: {len(found)} inputs on this machine"
    if fetched:
        detail += f", {len(fetched)} to fetch (reachable): {', '.join(fetched)}"
    if missing:
        return Check("grid inputs", "FAIL", detail + f"; {len(missing)} missing and not fetchable "
                     f"({'; '.join(why) or 'no such folder'}): {', '.join(missing)}; fetch them where there is "
                     "internet (`bench data fetch`, `hf download`) into the shared data root and cache")
    return Check("grid inputs", "ok", detail)


def llm_status(source: str) -> tuple[str, str]:
    """(here | hub | broken, why when broken): a GGUF source (packaged or a file) is here (resolve and preflight
    check it); a local folder (or the packaged MiniLM) has whole weight files
    (bench.models.llm.verify: index, shards, headers); a hub id is here when its config and every weight file it
    names are in the cache, else it is fetched from the hub."""
    from huggingface_hub import try_to_load_from_cache

    from bench.errors import BenchError
    from bench.models.gguf_file import PACKAGED
    from bench.models.llm import MINILM
    from bench.models.llm.checkpoint import FORMATS
    from bench.models.llm.source import Source
    from bench.models.llm.verify import check_files

    if source in PACKAGED or Path(source).expanduser().is_file():  # GGUF: resolve and preflight read its header
        return "here", ""
    if source == MINILM or Path(source).expanduser().is_dir():
        try:
            check_files(Source(source, None), need_weights=False)
            Source(source, None).config_dict()
        except BenchError as e:
            return "broken", str(e)
        return "here", ""

    def cached(name: str) -> Path | None:
        try:
            hit = try_to_load_from_cache(source, name)
        except ValueError:  # not a valid hub id
            return None
        return Path(hit) if isinstance(hit, str) else None

    if cached("config.json") is None:
        return "hub", ""
    for index_name, single_name in FORMATS:
        index = cached(index_name)
        if index is not None:
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return "hub", ""
            return ("here" if all(cached(f) for f in shards) else "hub"), ""
        if cached(single_name) is not None:
            return "here", ""
    return "hub", ""


def _reachable(url: str, timeout: float = 5.0) -> str:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)  # noqa: S310
        return "reachable"
    except urllib.error.HTTPError:
        return "reachable"  # it answered
    except (OSError, ValueError) as e:
        return f"{url} unreachable: {str(e)[:120]}"


def grid_step(grid, tmp: Path, gpu: bool, batch: int | None = None):
    """(config, what) of the paper step for `grid`: its heaviest run (matmul FLOPs of a training step x its batch),
    built the same shape without a file to download: random ViT weights, and a config-only copy of its LLM (its
    config.json where it is here, else the shape bench.cost knows for the shipped LLMs) at booster.init=random. Its
    own batch on a GPU (the memory figure and --runs-per-gpu are about it), 1 on a CPU unless `batch` is given."""
    import shutil

    from bench import cost
    from bench.config import override, resolve
    from bench.doctor_base import LLAMA_7B, write_llama_config
    from bench.models.registry import VARIANTS

    def weight(c) -> float:
        m = cost.matmuls(c)
        return (m.train_step if m is not None else 0.0) * c.train.batch_size

    run = max(grid.runs, key=weight)
    batch = batch or (run.train.batch_size if gpu else 1)
    sets = {"vit.pretrained": False, "vit.weights": "", "vit.checkpoint": "", "vit.checkpoint_sha256": "",
            "vit.head": "task", "train.batch_size": batch, "train.epochs": 1}
    b, llm = run.booster, "no LLM layer"
    if VARIANTS[b.variant].has_layer:
        folder = tmp / "grid-llm"
        config = cost._config_file(b.source, b.revision)
        shape = cost.llm_shape(b.source, b.revision)
        if config is not None and config.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(config, folder / "config.json")
            llm = f"{Path(b.source).name}'s shape"
        elif shape is not None and shape.model_type == "llama":
            write_llama_config(folder, {**LLAMA_7B, "hidden_size": shape.hidden,
                                        "intermediate_size": shape.intermediate, "num_attention_heads": shape.heads,
                                        "num_key_value_heads": shape.kv_heads, "num_hidden_layers": shape.layers,
                                        "head_dim": shape.head_dim})
            llm = f"{Path(b.source).name}'s shape"
        else:
            write_llama_config(folder, LLAMA_7B)
            llm = f"a LLaMA-7B shape ({b.source}'s is not known here)"
        sets.update({"booster.source": str(folder), "booster.revision": None, "booster.init": "random"})
    cfg = resolve(override(run, sets))
    v = cfg.vit
    what = (f"grid {grid.name}'s heaviest run ({cfg.label}: {cfg.data.task}@{cfg.data.size}, vit {v.arch}"
            f"{' paper mode' if v.paper_mode else ''}, {llm}, random weights), batch {batch}"
            + ("" if gpu or batch == run.train.batch_size else f" (its own {run.train.batch_size} on a GPU)"))
    return cfg, what
