"""Config -> model: a ViT backbone, optionally boosted by FE/FL/FD where its `booster_site` says."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from bench.config import BoosterConfig, ResolvedConfig
from bench.data import TaskSpec
from bench.models.backbones import build_backbone
from bench.models.booster import Booster
from bench.models.checkpoint2d import head_rows, load_start
from bench.models.llm import LLMBlock, block_key, llm_hidden_size, load_llm_block
from bench.models.registry import BACKBONES, VARIANTS


class FP32Linear(nn.Linear):
    """The classifier, computed in fp32 even under autocast: a bf16 logit keeps 8 bits of mantissa, which no later
    `.float()` restores (ties in the AUC ranking, losses that differ between CPU and GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class RLLMViT(nn.Module):
    """A ViT whose booster site ends with the booster, if any: blocks -> [FE -> FL -> FD] -> final norm -> head
    (ViViT: temporal blocks -> norm -> [FE -> FL -> FD] -> head).

    `site` names the backbone's module list the booster is appended to (its registry entry's `booster_site`):
    timm's `blocks`, which forward_features runs before the final norm, or ViViT's `booster_site`, after its
    temporal transformer's final norm, as Lai et al.'s code."""

    def __init__(self, backbone: nn.Module, booster: Booster | None, frozen_llm: bool, site: str = "blocks"):
        super().__init__()
        self.site = site
        if booster is not None:
            getattr(backbone, site).append(booster)
        self.backbone = backbone
        self.frozen_llm = frozen_llm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @property
    def booster(self) -> Booster | None:
        site = getattr(self.backbone, self.site)
        return site[-1] if len(site) and isinstance(site[-1], Booster) else None

    def llm_parameters(self) -> list[nn.Parameter]:
        llm = self.booster.llm if self.booster is not None else None
        return list(llm.parameters()) if llm is not None else []


@functools.lru_cache(maxsize=2)
def _cached_block(key: BoosterConfig, seed: int) -> LLMBlock:
    """A worker's grid reuses one loaded layer across its runs (`key` = `block_key(b)`); callers get a deep copy."""
    return load_llm_block(key, seed)


def build_model(cfg: ResolvedConfig, spec: TaskSpec) -> tuple[RLLMViT, dict]:
    """The model of a config and the LLM provenance to store with the run."""
    v, b = cfg.vit, cfg.booster
    torch.manual_seed(cfg.seed)
    channels = 3 if cfg.data.rgb else spec.n_channels  # data.rgb repeats grey images to 3 channels
    outputs = head_rows(v.checkpoint) if v.checkpoint and v.head == "pretrained" else spec.n_classes
    backbone = build_backbone(v, spec.size, channels, outputs, spec.is_3d)
    info: dict = {}
    booster = None
    variant = VARIANTS[b.variant]
    if variant.is_capacity_control:
        booster = Booster(backbone.embed_dim, llm_hidden_size(b.source, b.revision), b.variant, bias=b.bias,
                          init=b.adapter_init)
    elif variant.has_layer:
        block = copy.deepcopy(_cached_block(block_key(b), cfg.seed if b.init == "random" else 0))
        info = dict(block.info)
        booster = Booster(backbone.embed_dim, block.hidden_size, b.variant, b.residual, block, b.bias, b.adapter_init)
    model = RLLMViT(backbone, booster, frozen_llm=variant.has_layer and b.freeze == "frozen",
                    site=BACKBONES[v.arch].booster_site)
    if v.checkpoint:  # a training checkpoint's weights over everything just built (the reference's --resume)
        load_start(model, v.checkpoint, v.checkpoint_strict)
    if type(backbone.head) is nn.Linear:  # same parameters and state-dict keys, fp32 outputs
        backbone.head.__class__ = FP32Linear
    for p in model.llm_parameters():
        p.requires_grad_(not model.frozen_llm)
    return model, info
