"""Safetensors checkpoints read tensor by tensor: which shard holds what, only the wanted tensors, hashes, sizes.

Reading from the index and the headers, then only the wanted tensors from only the shards that hold them,
keeps the extra memory of loading one layer at about that layer's bytes, never the whole model's, so layer 31
of LLaMA-7B loads on a laptop. Only safetensors are read (no pytorch_model.bin).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.errors import BenchError
from bench.models.llm.families import Family

if TYPE_CHECKING:
    from bench.models.llm.source import Source

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0")
# A legacy (TF-era) checkpoint names LayerNorm parameters gamma/beta; transformers renames them on load too.
LEGACY_RENAMES = ((".LayerNorm.weight", ".LayerNorm.gamma"), (".LayerNorm.bias", ".LayerNorm.beta"))  # new, old


def read_header(path: Path) -> dict:
    """name -> {dtype, shape, data_offsets} of every tensor in a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


class Checkpoint:
    """Which file holds which tensor, from the index (sharded) or the single file's header."""

    def __init__(self, src: Source):
        self.src = src
        index = src.path(INDEX_FILE)
        if index is not None:
            data = json.loads(index.read_text())
            self.weight_map: dict[str, str] = dict(data["weight_map"])
            self.total_size = (data.get("metadata") or {}).get("total_size")
        else:
            single = src.path(SINGLE_FILE)
            if single is None:
                bins = src.root is not None and any(src.root.glob("pytorch_model*.bin"))
                raise BenchError(
                    f"booster.source={src.label} has no model.safetensors(.index.json)"
                    + (" (only pytorch_model*.bin, which is not read)" if bins else "")
                    + "; give a safetensors checkpoint (re-save with save_pretrained or download *.safetensors)"
                )
            self.weight_map = dict.fromkeys(read_header(single), SINGLE_FILE)
            self.total_size = None
        self.files = sorted(set(self.weight_map.values()))

    def prefix(self, family: Family) -> str:
        for p in family.prefixes:
            stem = re.compile(re.escape(p + family.layer_stem) + r"\d+\.")
            if any(stem.match(k) for k in self.weight_map):
                return p
        looked = " or ".join(f"'{p}{family.layer_stem}N.*'" for p in family.prefixes)
        raise BenchError(
            f"missing weights: booster.source={self.src.label} has no tensors named {looked}; "
            "the checkpoint does not match its config's model_type"
        )


def sha256(path: Path, _cache: dict = {}) -> str:  # noqa: B006 - a deliberate per-process cache
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        with open(path, "rb") as f:
            _cache[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _cache[key]


def count_params(src: Source, ckpt: Checkpoint | None, family: Family) -> int | None:
    """Float tensors of the whole model (minus stored buffers), from safetensors headers only; None if unreachable."""
    skip = re.compile(family.buffer_keys) if family.buffer_keys else None

    def count(tensors) -> int:  # tensors: iterable of (name, dtype, shape)
        n = 0
        for name, dtype, shape in tensors:
            if dtype in FLOAT_DTYPES and not (skip and skip.search(name)):
                k = 1
                for s in shape:
                    k *= s
                n += k
        return n

    files = ckpt.files if ckpt is not None else None
    if src.root is not None:
        if files is None:
            index = src.path(INDEX_FILE)
            files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index else [SINGLE_FILE]
        total = 0
        for f in files:
            p = src.path(f)
            if p is None:
                return None
            total += count((k, v["dtype"], v["shape"]) for k, v in read_header(p).items())
        return total
    try:  # hub: header range-reads of every shard, without downloading them
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(src.repo_id, revision=src.commit)
        return count(
            (k, t.dtype, t.shape) for fm in meta.files_metadata.values() for k, t in fm.tensors.items()
        )
    except Exception:  # noqa: BLE001 - offline with a partial cache: estimate from the index, else unknown
        if ckpt is not None and ckpt.total_size:  # the dtype of the shards already here (no more downloads)
            sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
            dtypes = [v["dtype"] for f, p in src.fetched.items() if f.endswith(".safetensors")
                      for v in read_header(p).values()]
            itemsize = sizes.get(max(set(dtypes), key=dtypes.count) if dtypes else "", 0)
            return int(ckpt.total_size) // itemsize if itemsize else None
        return None


def _safe_open(path: Path):
    from safetensors import safe_open

    try:  # pread: tensor bytes go straight into the tensor, without mapping the shard into our memory
        return safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors < 0.8
        return safe_open(str(path), framework="pt", device="cpu")


def _ckpt_key(local: str, prefix: str, family: Family, indices: list[int], weight_map: dict) -> str:
    """The checkpoint name of block tensor `local` (layers.J.*, norm.*, pos_table)."""
    if local.startswith("layers."):
        _, j, rest = local.split(".", 2)
        name = f"{prefix}{family.layer_stem}{indices[int(j)]}.{rest}"
    elif local.startswith("norm."):
        name = f"{prefix}{family.final_norm}{local[len('norm.'):]}"
    else:
        name = prefix + family.pos_key
    if name not in weight_map:
        for new, old in LEGACY_RENAMES:
            if name.endswith(new) and name[: -len(new)] + old in weight_map:
                return name[: -len(new)] + old
    return name


def read_block_tensors(src: Source, ckpt: Checkpoint, family: Family, indices: list[int],
                       shapes: dict[str, torch.Size], dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a block's own names (`shapes`: layers.J.*, norm.*, pos_table), as `dtype`, read only from
    the shards holding them after checking that layers `indices` have exactly these; and those shards' sha256s,
    comma-joined."""
    prefix = ckpt.prefix(family)
    wanted = {local: _ckpt_key(local, prefix, family, indices, ckpt.weight_map) for local in shapes}
    pre_cls = getattr(importlib.import_module(family.module), family.pretrained_cls)
    ignore = [re.compile(p) for p in (getattr(pre_cls, "_keys_to_ignore_on_load_unexpected", None) or [])]
    if family.buffer_keys:
        ignore.append(re.compile(family.buffer_keys))
    heads = tuple(f"{prefix}{family.layer_stem}{i}." for i in indices)
    used = set(wanted.values())
    unexpected = [k for k in ckpt.weight_map if k.startswith(heads) and k not in used
                  and not any(p.search(k) for p in ignore)]
    missing = [k for k in wanted.values() if k not in ckpt.weight_map]
    if missing or unexpected:
        bad, kind = (missing, "lacks") if missing else (unexpected, "has unexpected")
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BenchError(
            f"missing weights: booster.source={src.label} {kind} {bad[0]}{more} for transformers' "
            f"{family.layer_cls}; use an unmodified checkpoint of its config's model_type"
        )
    by_file: dict[str, list[str]] = {}
    for local, k in wanted.items():
        by_file.setdefault(ckpt.weight_map[k], []).append(local)
    sd: dict[str, torch.Tensor] = {}
    hashes = []
    for fname in sorted(by_file):
        path = src.path(fname)
        if path is None:
            raise BenchError(f"missing weights: booster.source={src.label} lists {fname} in its index but lacks it")
        hashes.append(sha256(path))
        with _safe_open(path) as f:
            for local in by_file[fname]:
                t = f.get_tensor(wanted[local])
                if tuple(t.shape) != tuple(shapes[local]):
                    raise BenchError(
                        f"missing weights: {wanted[local]} in {src.label} has shape {tuple(t.shape)} but its "
                        f"config.json builds {tuple(shapes[local])}; the checkpoint and config disagree"
                    )
                sd[local] = t.to(dtype)
                del t
    return sd, ",".join(hashes)
