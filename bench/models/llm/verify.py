"""Whether a local LLM folder's weight files are whole, from the index and each file's header alone (no tensor is
read: seconds even for LLaMA-7B), so a missing, cut-off or corrupt file, or an index naming a shard that is not
there, fails preflight as one line naming the file, instead of a run that fails after every other variant trained.

safetensors files are opened with the safetensors library itself (it checks the header and that the tensors fill
the file exactly, so a truncated file is caught); PyTorch .bin files are memory-mapped (`checkpoint.load_bin`).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.errors import BenchError
from bench.models.llm.checkpoint import FORMATS, load_bin
from bench.models.llm.source import Source

FIX = "re-download it (or re-save the model with save_pretrained)"


def check_files(src: Source, need_weights: bool = True) -> None:
    """Raise a BenchError naming the file if `src`'s weights are missing (when `need_weights`), its index does not
    parse or names a shard the folder lacks, or a weights file does not hold the tensors the index puts there.
    Hub ids are left to the download (nothing is fetched here)."""
    if src.root is None:
        return
    for index_name, single_name in FORMATS:
        index = src.path(index_name)
        if index is not None:
            by_file: dict[str, set[str]] = {}
            for tensor, fname in _weight_map(index).items():
                by_file.setdefault(fname, set()).add(tensor)
            for fname, tensors in sorted(by_file.items()):
                path = src.path(fname)
                if path is None:
                    raise BenchError(f"missing weights: {index} lists {fname} ({len(tensors)} tensors) but "
                                     f"{src.root} has no such file; download the missing shard")
                lacking = sorted(tensors - _tensor_names(path))
                if lacking:
                    more = f" (+{len(lacking) - 1} more)" if len(lacking) > 1 else ""
                    raise BenchError(f"missing weights: {index} puts {lacking[0]}{more} in {fname}, which lacks it; "
                                     f"{FIX}")
            return
        single = src.path(single_name)
        if single is not None:
            _tensor_names(single)
            return
    if need_weights:
        raise BenchError(f"missing weights: booster.source={src.label} has config.json but no model.safetensors"
                         "(.index.json) or pytorch_model.bin(.index.json); download its weight files (or use "
                         "booster.init=random, which needs none)")


def _weight_map(index: Path) -> dict[str, str]:
    """The index's {tensor: file}, or a BenchError naming the index."""
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(f"{index} is not a readable JSON index ({type(e).__name__}: {e}); {FIX}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise BenchError(f"{index} has no 'weight_map' of tensor names to files; {FIX}")
    return weight_map


def _tensor_names(path: Path) -> set[str]:
    """The tensor names in one weights file, checked whole by its reader; a BenchError naming the file if not."""
    if path.suffix == ".bin":
        return set(load_bin(path))  # a BenchError naming the file when it does not load
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return set(f.keys())
    except (SafetensorError, OSError) as e:
        size = path.stat().st_size
        raise BenchError(f"{path} is truncated or corrupt ({size} bytes; safetensors: "
                         f"{' '.join(str(e).split())[:120]}); {FIX}") from None
