"""Config -> model: a ViT backbone, optionally boosted by FE/FL/FD before its final norm."""

from __future__ import annotations

import copy
import functools

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bench.config import BoosterConfig, RunConfig
from bench.data import TaskSpec
from bench.models.backbones import build_backbone
from bench.models.booster import Booster
from bench.models.llm import LLMBlock, block_key, llm_hidden_size, load_llm_block


class RLLMViT(nn.Module):
    """A ViT whose `blocks` end with the booster, if any: blocks -> [FE -> FL -> FD] -> final norm -> head."""

    def __init__(self, backbone: VisionTransformer, booster: Booster | None, frozen_llm: bool):
        super().__init__()
        if booster is not None:
            backbone.blocks.append(booster)  # timm's forward_features runs it after the last block, before the norm
        self.backbone = backbone
        self.frozen_llm = frozen_llm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @property
    def booster(self) -> Booster | None:
        last = self.backbone.blocks[-1]
        return last if isinstance(last, Booster) else None

    def llm_parameters(self) -> list[nn.Parameter]:
        llm = self.booster.llm if self.booster is not None else None
        return list(llm.parameters()) if llm is not None else []


@functools.lru_cache(maxsize=2)
def _cached_block(key: BoosterConfig, seed: int) -> LLMBlock:
    """A worker's grid reuses one loaded layer across its runs (`key` = `block_key(b)`); callers get a deep copy."""
    return load_llm_block(key, seed)


def build_model(cfg: RunConfig, spec: TaskSpec) -> tuple[RLLMViT, dict]:
    """The model for a resolved config and the LLM provenance to store with the run."""
    v, b = cfg.vit, cfg.booster
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(v, spec.size, spec.n_channels, spec.n_classes, spec.is_3d)
    info: dict = {}
    booster = None
    if b.variant in ("adapters", "mlp"):
        booster = Booster(backbone.embed_dim, llm_hidden_size(b.source, b.revision), b.variant, None, b.bias,
                          b.adapter_init)
    elif b.variant == "rllm":
        block = copy.deepcopy(_cached_block(block_key(b), cfg.seed if b.init == "random" else 0))
        info = dict(block.info)
        booster = Booster(backbone.embed_dim, block.hidden_size, b.residual, block, b.bias, b.adapter_init)
    model = RLLMViT(backbone, booster, frozen_llm=b.variant == "rllm" and b.freeze == "frozen")
    for p in model.llm_parameters():
        p.requires_grad_(not model.frozen_llm)
    return model, info
