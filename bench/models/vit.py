"""ViT backbones for 2D (timm) and 3D (timm blocks over Conv3d patches) with one interface.

Both expose `tokens(x)` — the token sequence (CLS + patches) after the last block and *before* the
final norm, where the booster goes — plus `norm` and `forward_head`, so the R-LLM wrapper treats
them alike.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import create_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from bench.config import VitConfig
from bench.errors import BenchError

WIDTHS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}  # embed dim, heads
TIMM_WEIGHTS = {  # timm's ImageNet checkpoints (the paper's ViT-S was ImageNet-pretrained)
    "tiny": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "small": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "base": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
}
PAPER_SIZE, PAPER_PATCH = 224, 16


def auto_patch(size: int) -> int:
    """Patch size giving 7x7 (28, 64 -> 8x8) or 14x14 grids: small images need small patches."""
    return {28: 4, 64: 8, 128: 16, 224: 16}[size]


class ViT2D(nn.Module):
    """timm's VisionTransformer; in paper mode images are upsampled to 224 first."""

    def __init__(self, cfg: VitConfig, size: int, in_chans: int, num_classes: int):
        super().__init__()
        self.input_size = PAPER_SIZE if cfg.paper_mode else size
        patch = PAPER_PATCH if cfg.paper_mode else (cfg.patch or auto_patch(size))
        if self.input_size % patch:
            raise BenchError(f"vit.patch={patch} does not divide the image size {self.input_size}; use a divisor or 0 (auto)")
        dim, heads = WIDTHS[cfg.arch]
        kwargs = dict(img_size=self.input_size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
                      drop_path_rate=cfg.drop_path)
        if cfg.pretrained:
            self.vit = _pretrained_timm(cfg.arch, kwargs)
        else:
            self.vit = VisionTransformer(embed_dim=dim, depth=cfg.depth, num_heads=heads, **kwargs)
        self.embed_dim = self.vit.embed_dim
        self.norm = self.vit.norm

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        v = self.vit
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))
        return v.blocks(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(x)


def _pretrained_timm(arch: str, kwargs: dict) -> VisionTransformer:
    """timm loads (and resamples patch/position embeddings for) its ImageNet weights, from the hub or a file."""
    name = TIMM_WEIGHTS[arch]
    local = os.environ.get("BENCH_TIMM_WEIGHTS")
    overlay = {"file": local} if local else None
    try:
        return create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        raise BenchError(
            f"could not load timm weights '{name}' ({type(e).__name__}: {str(e).splitlines()[0][:120]}); offline, "
            f"download them where the hub is reachable (`hf download timm/{name}`) and set "
            "BENCH_TIMM_WEIGHTS=/path/to/model.safetensors"
        ) from None


class PatchEmbed3D(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D'*H'*W', dim)


class ViT3D(nn.Module):
    """A ViT over volumes: Conv3d patches, a CLS token, learned positions and timm's blocks."""

    def __init__(self, cfg: VitConfig, size: int, in_chans: int, num_classes: int):
        super().__init__()
        patch = cfg.patch or auto_patch(size)
        if size % patch:
            raise BenchError(f"vit.patch={patch} does not divide the volume size {size}; use a divisor or 0 (auto)")
        dim, heads = WIDTHS[cfg.arch]
        self.embed_dim = dim
        self.patch_embed = PatchEmbed3D(patch, in_chans, dim)
        n_tokens = (size // patch) ** 3 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, dim))
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.Sequential(*[Block(dim, heads, qkv_bias=True, drop_path=r) for r in rates])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(_init_linear)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, 0])


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_backbone(cfg: VitConfig, size: int, in_chans: int, num_classes: int, is_3d: bool) -> nn.Module:
    return (ViT3D if is_3d else ViT2D)(cfg, size, in_chans, num_classes)
