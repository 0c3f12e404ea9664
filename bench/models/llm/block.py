"""One (or a few consecutive) transformer layers of a pretrained LLM as a standalone block.

The layers are transformers' own classes (`LlamaDecoderLayer`, `Qwen2DecoderLayer`, `MistralDecoderLayer`,
`GPT2Block`, `OPTDecoderLayer`, `BertLayer`), built on the meta device and then given only their own tensors,
so the block computes exactly what the whole model's layers compute, at the cost of those layers alone.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.llm.checkpoint import Checkpoint, count_params, read_block_tensors
from bench.models.llm.families import Family
from bench.models.llm.source import Source, load_config
from bench.upstream import hf_init_weights

INITS = ("pretrained", "random")
POS_EMBS = ("none", "rope")
MASKS = ("bidirectional", "causal")
LLM_NORMS = ("none", "unit", "pretrained")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BenchError(f"booster.{name}={value!r} is not one of {', '.join(choices)}")


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

    def __init__(self, family: Family, config, indices: list[int], mask: str, pos_emb: str, llm_norm: str):
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


def _random_init(block: LLMBlock, family: Family, config, seed: int) -> None:
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


def _plan(source: str, layer: int, num_layers: int, revision: str | None, init: str, pos_emb: str, mask: str,
          llm_norm: str):
    """Every check that needs only the config: knob values, model type, layer range, final norm."""
    _check_choice("init", init, INITS)
    _check_choice("pos_emb", pos_emb, POS_EMBS)
    _check_choice("mask", mask, MASKS)
    _check_choice("llm_norm", llm_norm, LLM_NORMS)
    if init == "random" and llm_norm == "pretrained":
        raise BenchError("booster.llm_norm=pretrained loads trained weights into a random-init block; use unit or none")
    src = Source(source, revision)
    config, family = load_config(src)
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
        ckpt = Checkpoint(src)
        shapes = {k: t.shape for k, t in block.state_dict(keep_vars=True).items()}
        sd, file_hash = read_block_tensors(src, ckpt, family, indices, shapes, dtype)
        block.load_state_dict(sd, strict=True, assign=True)
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
        "llm.params": count_params(src, ckpt, family),
    }
    return block
