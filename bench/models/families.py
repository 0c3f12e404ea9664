"""The supported LLM model types: transformers' class names, their checkpoints' tensor names and their
config.json's shape keys, in one table.

Source (model-type check), checkpoint (tensor names), block (layer classes) and the cost estimate (layer
shapes) all read this one table, so adding a family is one entry here. No torch: the cost estimate imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.errors import BenchError


@dataclass(frozen=True)
class Family:
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
    # config.json keys of the layer's shape (bench/cost.py); kv heads and head width: num_key_value_heads and
    # head_dim where the config has them, else the heads and hidden / heads
    hidden_key: str = "hidden_size"
    heads_key: str = "num_attention_heads"
    inner_key: str = "intermediate_size"  # the MLP's hidden width
    inner_default: int = 0  # where the config leaves inner_key out or null: this many times the hidden width
    layers_key: str = "num_hidden_layers"
    gated: bool = False  # llama-family MLP (gate, up, down) rather than two linears


def _llama_like(name: str, cls_prefix: str) -> Family:
    return Family(
        module=f"transformers.models.{name}.modeling_{name}",
        layer_cls=f"{cls_prefix}DecoderLayer",
        pretrained_cls=f"{cls_prefix}PreTrainedModel",
        prefixes=("model.", ""),
        layer_stem="layers.",
        final_norm="norm.",
        rotary_cls=f"{cls_prefix}RotaryEmbedding",
        rms=True,
        gated=True,
    )


FAMILIES: dict[str, Family] = {
    "llama": _llama_like("llama", "Llama"),
    "qwen2": _llama_like("qwen2", "Qwen2"),
    "mistral": _llama_like("mistral", "Mistral"),
    "gpt2": Family(
        module="transformers.models.gpt2.modeling_gpt2",
        layer_cls="GPT2Block",
        pretrained_cls="GPT2PreTrainedModel",
        prefixes=("transformer.", ""),
        layer_stem="h.",
        final_norm="ln_f.",
        pos_key="wpe.weight",
        eps_attr="layer_norm_epsilon",
        buffer_keys=r"(^|\.)(attn|crossattention)\.(masked_)?bias$",
        hidden_key="n_embd",
        heads_key="n_head",
        inner_key="n_inner",
        inner_default=4,
        layers_key="n_layer",
    ),
    "opt": Family(
        module="transformers.models.opt.modeling_opt",
        layer_cls="OPTDecoderLayer",
        pretrained_cls="OPTPreTrainedModel",
        prefixes=("model.decoder.", "decoder."),
        layer_stem="layers.",
        final_norm="final_layer_norm.",
        pos_key="embed_positions.weight",
        pos_offset=2,
        inner_key="ffn_dim",
    ),
    "bert": Family(
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
SUPPORTED = tuple(FAMILIES)


def resolve_layers(layer: int | str, num_layers: int, n: int, label: str) -> list[int]:
    """Indices of the block's layers. Relative layers place the block's start in 0..n-num_layers: first = 0,
    last = the end, middle = 0.5, a fraction f = round(f * (n - num_layers)), halves rounding up."""
    asked = layer
    if isinstance(layer, str):
        fraction = {"first": 0.0, "middle": 0.5, "last": 1.0}.get(layer)
        fraction = float(layer) if fraction is None else fraction
        layer = max(0, math.floor(fraction * (n - num_layers) + 0.5))
    first = layer + n if layer < 0 else layer
    if first < 0 or first + num_layers > n:
        if isinstance(asked, str):  # a relative start is always in range: the block is longer than the model
            raise BenchError(f"booster.num_layers={num_layers} is more than the {n} layers of {label}; "
                             f"use booster.num_layers <= {n}")
        span = f"layers {layer}..{layer + num_layers - 1}" if num_layers > 1 else f"layer {layer}"
        raise BenchError(
            f"booster.layer={layer} (num_layers={num_layers}) is out of range: {label} has {n} layers, "
            f"so {span} does not exist; use booster.layer in 0..{n - num_layers} or {-n}..{-num_layers} (from the end)"
        )
    return list(range(first, first + num_layers))
