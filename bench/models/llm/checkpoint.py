"""Checkpoints read tensor by tensor: which shard holds what, only the wanted tensors, hashes, sizes.

Reading from the index and the headers, then only the wanted tensors from only the shards that hold them,
keeps the extra memory of loading one layer at about that layer's bytes, never the whole model's, so layer 31
of LLaMA-7B loads on a laptop. Safetensors (sharded or one file) are preferred; PyTorch `.bin` checkpoints (as
huggyllama/llama-7b ships LLaMA-1) are memory-mapped with `torch.load(mmap=True, weights_only=True)`, so only
the wanted tensors' pages are read, and each one's pages are given back once it is copied.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import json
import mmap
import pickle
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.errors import BenchError
from bench.models.families import Family

if TYPE_CHECKING:
    from bench.models.llm.source import Source

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"
FORMATS = ((INDEX_FILE, SINGLE_FILE), (BIN_INDEX_FILE, BIN_FILE))  # (index, single file), safetensors first
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
    """Which file holds which tensor: from the index (sharded), the single safetensors file's header, or the single
    pytorch_model.bin's (mapped) keys; safetensors when a model has both."""

    def __init__(self, src: Source):
        self.src = src
        for index_name, single_name in FORMATS:
            index = src.path(index_name)
            if index is not None:
                data = json.loads(index.read_text())
                self.weight_map: dict[str, str] = dict(data["weight_map"])
                self.total_size = (data.get("metadata") or {}).get("total_size")
                break
            single = src.path(single_name)
            if single is not None:
                self.weight_map = dict.fromkeys((name for name, *_ in tensor_entries(single)), single_name)
                self.total_size = None
                break
        else:
            raise BenchError(
                f"booster.source={src.label} has no model.safetensors(.index.json) or pytorch_model.bin(.index.json); "
                "give a transformers checkpoint (save_pretrained, or download its *.safetensors or *.bin files)"
            )
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


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch checkpoint's tensors, memory-mapped: nothing is read until a tensor is, and no code runs."""
    try:
        sd = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except (RuntimeError, pickle.UnpicklingError, OSError, EOFError) as e:
        raise BenchError(
            f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:100]}); "
            "re-save the model with save_pretrained (safetensors) or re-download the file"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BenchError(f"{path} is not a state dict of tensors; re-save the model with save_pretrained")
    return sd


def tensor_entries(path: Path):
    """(name, is_float, numel, itemsize) of every tensor in a .safetensors file (its header) or a .bin (mapped)."""
    if path.suffix == ".bin":
        for name, t in load_bin(path).items():
            yield name, t.is_floating_point(), t.numel(), t.element_size()
        return
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
    for name, v in read_header(path).items():
        yield name, v["dtype"] in FLOAT_DTYPES, _numel(v["shape"]), sizes.get(v["dtype"], 1)


def count_params(src: Source, ckpt: Checkpoint | None, family: Family) -> int | None:
    """Float tensors of the whole model (minus stored buffers), from file headers only; None if unreachable."""
    skip = re.compile(family.buffer_keys) if family.buffer_keys else None

    def count(entries) -> int:  # entries: iterable of (name, is_float, numel, ...)
        return sum(numel for name, is_float, numel, *_ in entries if is_float and not (skip and skip.search(name)))

    if src.root is not None:
        try:
            ckpt = ckpt or Checkpoint(src)
        except BenchError:  # a config-only folder (init=random)
            return None
        total = 0
        for f in ckpt.files:
            p = src.path(f)
            if p is None:
                return None
            total += count(tensor_entries(p))
        return total
    try:  # hub: header range-reads of every safetensors shard, without downloading them
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(src.repo_id, revision=src.commit)
        return count(
            (k, t.dtype in FLOAT_DTYPES, _numel(t.shape)) for fm in meta.files_metadata.values()
            for k, t in fm.tensors.items()
        )
    except Exception:  # noqa: BLE001 - offline, a partial cache or .bin only: estimate from the index, else unknown
        if ckpt is not None and ckpt.total_size:  # the dtype of the shards already here (no more downloads)
            itemsizes = [e[3] for f, p in src.fetched.items() if f in ckpt.files for e in tensor_entries(p) if e[1]]
            itemsize = max(set(itemsizes), key=itemsizes.count) if itemsizes else 0
            return int(ckpt.total_size) // itemsize if itemsize else None
        return None


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _safe_open(path: Path):
    from safetensors import safe_open

    try:  # pread: tensor bytes go straight into the tensor, without mapping the shard into our memory
        return safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors < 0.8
        return safe_open(str(path), framework="pt", device="cpu")


def _madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc.madvise, mmap.MADV_DONTNEED
    except (OSError, AttributeError):  # no libc madvise (Windows): mapped pages stay until the shard is closed
        return None


_MADVISE = _madvise()


def _give_back(mapped: torch.Tensor) -> None:
    """Drop the resident pages of a memory-mapped tensor already copied. They are clean pages of a private file
    mapping (re-read from the file if touched again), so a shard's mapping never holds more than about one tensor:
    loading a layer costs its bytes plus its largest tensor's, not twice its bytes."""
    if _MADVISE is None:
        return
    madvise, dontneed = _MADVISE
    storage = mapped.untyped_storage()
    page = mmap.PAGESIZE
    start = -(-storage.data_ptr() // page) * page  # whole pages inside this tensor's bytes only
    end = (storage.data_ptr() + storage.nbytes()) // page * page
    if end > start:
        madvise(start, end - start, dontneed)


@contextlib.contextmanager
def _shard_reader(path: Path):
    """`read(name, dtype)`: one tensor of the shard as `dtype`, in memory of its own."""
    if path.suffix != ".bin":
        with _safe_open(path) as f:
            yield lambda name, dtype: f.get_tensor(name).to(dtype)
        return
    mapped = load_bin(path)

    def read(name: str, dtype: torch.dtype) -> torch.Tensor:
        t = mapped[name].to(dtype, copy=True)  # a copy: the mapping goes away with the shard
        _give_back(mapped[name])
        return t

    try:
        yield read
    finally:
        mapped.clear()


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
        with _shard_reader(path) as read:
            for local in by_file[fname]:
                t = read(wanted[local], dtype)
                if tuple(t.shape) != tuple(shapes[local]):
                    raise BenchError(
                        f"missing weights: {wanted[local]} in {src.label} has shape {tuple(t.shape)} but its "
                        f"config.json builds {tuple(shapes[local])}; the checkpoint and config disagree"
                    )
                sd[local] = t
    return sd, ",".join(hashes)
