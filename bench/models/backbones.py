"""2D and 3D ViTs, both timm `VisionTransformer`s, so both have timm's interface: forward = forward_head after
forward_features (embedding, `blocks`, final norm). Whatever is appended to `blocks` (the booster) runs after
the last ViT block and before the final norm, in 2D and 3D alike.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models import create_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bench.config import ARCHS_3D, VitConfig
from bench.errors import BenchError
from bench.models.backbones3d import build_lai_backbone

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


class UpsamplingPatchEmbed(PatchEmbed):
    """timm's patch embedding of images first upsampled (bilinear) to its image size: the paper's 28 -> 224."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            x = F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False)
        return super().forward(x)


class PatchEmbed3D(nn.Module):
    """Conv3d patches of a volume, built the way timm's VisionTransformer builds its `embed_layer`."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True,
                 dynamic_img_pad: bool = False, device=None, dtype=None):  # timm always passes dynamic_img_pad
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 3
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias,
                              device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D'*H'*W', dim)


def build_backbone(cfg: VitConfig, size: int, in_chans: int, num_classes: int, is_3d: bool) -> VisionTransformer:
    """timm's ViT for images (paper mode: upsampled to 224, patch 16), or for volumes over Conv3d patches.

    `cfg` is resolved: paper mode and pretrained weights are 2D only."""
    img_size = PAPER_SIZE if cfg.paper_mode else size
    patch = PAPER_PATCH if cfg.paper_mode else (cfg.patch or auto_patch(size))
    if img_size % patch:
        what = "volume" if is_3d else "image"
        raise BenchError(f"vit.patch={patch} does not divide the {what} size {img_size}; use a divisor or 0 (auto)")
    if cfg.arch in ARCHS_3D:
        return build_lai_backbone(cfg.arch, cfg.depth, img_size, patch, in_chans, num_classes, cfg.drop_path)
    kwargs = dict(img_size=img_size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
                  drop_path_rate=cfg.drop_path)
    if is_3d:
        kwargs["embed_layer"] = PatchEmbed3D
    elif cfg.paper_mode:
        kwargs["embed_layer"] = UpsamplingPatchEmbed
    if cfg.pretrained:
        return _pretrained_timm(cfg.arch, kwargs)
    dim, heads = WIDTHS[cfg.arch]
    return VisionTransformer(embed_dim=dim, depth=cfg.depth, num_heads=heads, **kwargs)


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
