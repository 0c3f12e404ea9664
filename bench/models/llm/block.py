"""One (or a few consecutive) transformer layers of a pretrained LLM as a standalone block.

The layers are transformers' own classes (`LlamaDecoderLayer`, `Qwen2DecoderLayer`, `MistralDecoderLayer`,
`GPT2Block`, `OPTDecoderLayer`, `BertLayer`), built on the meta device and then given only their own tensors,
so the block computes exactly what the whole model's layers compute, at the cost of those layers alone.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch
from torch import nn

from bench.config import BoosterConfig
from bench.errors import BenchError
from bench.models import gguf_file
from bench.models.llm.checkpoint import Checkpoint, count_params, read_block_tensors, sha256
from bench.models.families import Family, resolve_layers
from bench.models.llm.source import Source, load_config
from bench.models.registry import VARIANTS
from bench.upstream import hf_init_weights, opt_final_norm

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OUTSIDE_THE_BLOCK = ("residual", "freeze", "lr_mult", "bias", "adapter_init")  # booster wiring and training: the
# loaded block is the same


def block_key(b: BoosterConfig) -> BoosterConfig:
    """`b` without the knobs that act outside the block: equal for every run that loads the same block."""
    return dataclasses.replace(b, **dict.fromkeys(OUTSIDE_THE_BLOCK))


class _UnitRMSNorm(nn.Module):
    """RMSNorm with weight 1 and nothing to train (computed in fp32, like LlamaRMSNorm)."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class LLMBlock(nn.Module):
    """x (B, T, hidden) -> the chosen layers in order (configured mask and positions) -> the configured norm.

    booster.mask     bidirectional: full attention over all tokens, no mask (as the paper); causal:
                     lower-triangular. Attention always runs through transformers' "sdpa" implementation.
    booster.pos_emb  rotary families (llama, qwen2, mistral): none = cos 1, sin 0 at every position, the
                     identity rotation (as the paper); rope = the model's own rotary embedding over 0..T-1.
                     Learned-absolute families (gpt2, opt, bert), whose layers carry no positional signal:
                     none = the layers as they are; rope = the model's own learned position embeddings for
                     0..T-1 (gpt2 `wpe`, opt `embed_positions` with its offset of 2, bert
                     `embeddings.position_embeddings`) added to the block input, kept as the buffer
                     `pos_table`, never trained. More tokens than learned positions is a BenchError.
    booster.llm_norm none; unit = a parameter-free RMSNorm (rms-normed families) or LayerNorm (others);
                     pretrained = the model's own final norm (BERT has none: each layer ends in a LayerNorm).
    booster.dtype    the weights' dtype; forward casts its input to it and its output back.

    Dropout inside the layers is 0: the block is a fixed feature transform, the same in train and eval mode.
    Nothing is frozen here. `info` holds the provenance `load_llm_block` records.
    """

    hidden_size: int
    info: dict

    def __init__(self, family: Family, config, indices: list[int], b: BoosterConfig):
        super().__init__()
        mod = importlib.import_module(family.module)
        layer_cls = getattr(mod, family.layer_cls)
        self.hidden_size = int(config.hidden_size)
        self.info = {}
        self.mask = b.mask
        self.pos_emb = b.pos_emb
        self.pos_offset = family.pos_offset
        with torch.device("meta"):
            self.layers = nn.ModuleList(_make_layer(layer_cls, config, i) for i in indices)
            eps = getattr(config, family.eps_attr) if family.eps_attr else 1e-5
            if b.llm_norm == "pretrained":
                if family.rms:
                    self.norm = getattr(mod, family.layer_cls.replace("DecoderLayer", "RMSNorm"))(
                        self.hidden_size, eps=config.rms_norm_eps
                    )
                else:
                    affine = getattr(config, "layer_norm_elementwise_affine", True)
                    self.norm = nn.LayerNorm(self.hidden_size, eps=eps, elementwise_affine=affine)
            elif b.llm_norm == "unit":
                self.norm = (
                    _UnitRMSNorm(config.rms_norm_eps)
                    if family.rms
                    else nn.LayerNorm(self.hidden_size, eps=eps, elementwise_affine=False)
                )
            else:
                self.norm = nn.Identity()
            if b.pos_emb == "rope" and family.pos_key:
                rows = int(config.max_position_embeddings) + family.pos_offset
                self.register_buffer("pos_table", torch.empty(rows, self.hidden_size))
            else:
                self.pos_table = None
        for m in self.layers.modules():  # sdpa reads `is_causal` when no mask is given (we never give one)
            if isinstance(getattr(m, "is_causal", None), bool):
                m.is_causal = b.mask == "causal"
        self.rotary = family.rotary_cls is not None
        if self.rotary:
            # The model's own rotary frequencies (rope type, theta, scaling: its RotaryEmbedding's), stored as the
            # int32 bits of their fp32 values. A buffer moves with the block (.to(device): no host -> device copy
            # in forward), and only floating-point buffers follow a cast (.to(bf16) of the whole ViT), so the
            # frequencies stay exactly fp32.
            rope = getattr(mod, family.rotary_cls)(config=config)
            self.register_buffer("rope_freq_bits", rope.inv_freq.float().view(torch.int32), persistent=False)
            self.rope_scale = float(rope.attention_scaling)
            self.head_dim = _head_dim(config)

    def _position_embeddings(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = h.shape[1]
        if self.pos_emb == "rope":  # as transformers' RotaryEmbedding.forward over positions 0..T-1, in fp32
            freqs = torch.arange(T, device=h.device)[None, :, None].float() * self.rope_freq_bits.view(torch.float32)
            emb = torch.cat((freqs, freqs), dim=-1)
            return (emb.cos() * self.rope_scale).to(h.dtype), (emb.sin() * self.rope_scale).to(h.dtype)
        one = torch.ones(1, T, self.head_dim, device=h.device, dtype=h.dtype)  # identity rotation: no position
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
        if self.rotary:
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


def _random_init(block: LLMBlock, family: Family, config, seed: int) -> None:
    """The family's own `_init_weights`, post-order like transformers, under a private RNG state."""
    pre_cls = getattr(importlib.import_module(family.module), family.pretrained_cls)

    def post_order(m: nn.Module):
        for c in m.children():
            post_order(c)
        hf_init_weights(pre_cls, config, m)

    block.layers.to_empty(device="cpu")  # what is on the meta device (not the rotary frequencies)
    block.norm.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        post_order(block.layers)
        post_order(block.norm)
        if block.pos_table is not None:
            emb = nn.Embedding(*block.pos_table.shape)
            hf_init_weights(pre_cls, config, emb)
            block.pos_table = emb.weight.detach()


def _plan(b: BoosterConfig):
    """Every check that needs the LLM's own config: model type, layer range, final norm."""
    if not VARIANTS[b.variant].has_layer or None in (b.init, b.pos_emb, b.mask, b.llm_norm):
        raise ValueError(f"an LLM block needs an rllm BoosterConfig resolved by bench.config.resolve, got {b}")
    src = Source(b.source, b.revision)
    config, family = load_config(src)
    indices = resolve_layers(b.layer, b.num_layers, int(config.num_hidden_layers), src.label)
    no_final = family.final_norm is None or (config.model_type == "opt" and not opt_final_norm(config))
    if b.llm_norm == "pretrained" and no_final:
        why = ("BERT has no final norm: each of its layers already ends in a LayerNorm"
               if config.model_type == "bert" else f"this {config.model_type} config has no final layer norm")
        raise BenchError(f"booster.llm_norm=pretrained: {why}; use booster.llm_norm=unit or none")
    return src, config, family, indices


def check_block(b: BoosterConfig) -> None:
    """Raise the BenchError `load_llm_block(b)` would, from the LLM's config alone: a grid checks before it trains."""
    _plan(b)


def load_llm_block(b: BoosterConfig, seed: int = 0) -> LLMBlock:
    """Layers `b.layer .. b.layer + b.num_layers - 1` of `b.source`, as `b`'s knobs say (see LLMBlock).

    `b` is resolved (`bench.config.resolve` validates every field and fills the R-LLM defaults). init=pretrained
    reads only these layers' tensors (and the final norm or position table, if asked for); init=random reads
    none and uses the family's own `_init_weights`, seeded with `seed` without touching the global RNG.
    `info` records llm.source (hub id@commit sha, or the absolute directory or GGUF file), llm.file_hash (sha256 of
    the shard file(s) read, comma-joined; "" for init=random), llm.model_type, llm.layers ("30,31"), llm.hidden_size,
    llm.num_hidden_layers and llm.params (the whole checkpoint's, from safetensors headers; None if unreachable);
    a GGUF file adds its general.name, organization and license, and llm.quant (the layer's weight storage types).
    """
    src, config, family, indices = _plan(b)
    dtype = DTYPES[b.dtype]
    block = LLMBlock(family, config, indices, b)
    ckpt, quant = None, ""
    if b.init == "random":
        _random_init(block, family, config, seed)
        block.to(dtype)
        file_hash = ""
    else:
        shapes = {k: t.shape for k, t in block.state_dict(keep_vars=True).items()}
        if src.gguf is not None:
            sd, quant = gguf_file.read_block_tensors(src.header, indices, shapes, dtype)
            file_hash = sha256(src.gguf)
        else:
            ckpt = Checkpoint(src)
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
        "llm.num_hidden_layers": int(config.num_hidden_layers),
        "llm.params": src.header.params if src.gguf is not None else count_params(src, ckpt, family),
    }
    if src.gguf is not None:  # provenance of a GGUF file: its own metadata and how the layer's weights are stored
        h = src.header
        block.info.update({"llm.gguf_name": h.name, "llm.organization": h.organization, "llm.license": h.license,
                           "llm.quant": quant})
    return block
