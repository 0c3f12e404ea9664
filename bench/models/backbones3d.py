"""Lai et al.'s 3D backbones (their 3D_classification code), built from timm's blocks.

Both cut a (B, C, D, H, W) volume into p x p x p tubelets (D is the frame axis), embed each with
LayerNorm -> Linear -> LayerNorm, and run pre-norm blocks of 8 attention heads of 64 (qkv without bias) and an
MLP as wide as the model, with PyTorch's default init and N(0, 1) position and class embeddings, as theirs.

vit3d-s/m/l (512/1024/2048 wide): timm's VisionTransformer over all tubelets + CLS; its `norm` is the
reference's head LayerNorm, so the booster appended to `blocks` runs where theirs does, after the blocks and
before that norm.
vivit-s/m/l (factorised ViViT): a spatial transformer over each frame group's tubelets + a CLS, then a temporal
transformer over the group CLS tokens + a CLS, each ending in a LayerNorm; the head is a Linear on the temporal
CLS. The booster runs after the temporal norm (the reference's place), so it joins `booster_site`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from timm.layers import Attention, calculate_drop_path_rates
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from bench.models.registry import BACKBONES

if TYPE_CHECKING:
    from bench.config import VitConfig

HEADS, HEAD_DIM = 8, 64  # the widths, 512/1024/2048 for s/m/l, are in bench/models/registry.py


class Attention64(Attention):
    """timm's attention with heads 64 wide whatever the model width: 8 x 64 = 512 inside a 1024-wide model."""

    def __init__(self, dim: int, num_heads: int = HEADS, **kwargs):
        super().__init__(dim, num_heads=num_heads, attn_head_dim=HEAD_DIM, **kwargs)


class TubeletEmbed(nn.Module):
    """p^3 tubelets, each flattened in the reference's (p_h, p_w, p_d, c) order, then LayerNorm -> Linear ->
    LayerNorm: (B, D/p * (H/p)(W/p), dim), or (B, D/p, (H/p)(W/p), dim) with `keep_frames` (ViViT).

    Takes the keyword arguments timm's VisionTransformer passes its `embed_layer`."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True,
                 keep_frames: bool = False, dynamic_img_pad: bool = False, device=None, dtype=None):
        super().__init__()
        self.patch, self.keep_frames = patch_size, keep_frames
        self.frames, self.patches_per_frame = img_size // patch_size, (img_size // patch_size) ** 2
        self.num_patches = self.frames * self.patches_per_frame
        patch_dim = in_chans * patch_size**3
        dd = {"device": device, "dtype": dtype}
        self.norm_in = nn.LayerNorm(patch_dim, **dd)
        self.proj = nn.Linear(patch_dim, embed_dim, bias=bias, **dd)
        self.norm = nn.LayerNorm(embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, d // p, p, h // p, p, w // p, p)  # b c f pd gh ph gw pw
        x = x.permute(0, 2, 4, 6, 5, 7, 3, 1).reshape(b, d // p, (h // p) * (w // p), -1)
        x = self.norm(self.proj(self.norm_in(x)))
        return x if self.keep_frames else x.flatten(1, 2)


def lai_blocks(dim: int, depth: int, drop_path: float) -> nn.Sequential:
    """`depth` pre-norm blocks as the reference's: LN -> attention (8 x 64, qkv without bias) and LN -> MLP
    (dim -> dim -> dim, GELU), torch's LayerNorm (eps 1e-5)."""
    rates = calculate_drop_path_rates(drop_path, depth)
    return nn.Sequential(*[
        Block(dim, HEADS, mlp_ratio=1.0, qkv_bias=False, proj_bias=True, drop_path=rate, norm_layer=nn.LayerNorm,
              attn_layer=Attention64)
        for rate in rates
    ])


def vit3d(width: int, depth: int, size: int, patch: int, in_chans: int, num_classes: int,
          drop_path: float) -> VisionTransformer:
    """timm's ViT with the reference's tubelet embedding and blocks; weight_init='skip' keeps torch's defaults."""
    vit = VisionTransformer(img_size=size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
                            embed_dim=width, depth=depth, num_heads=HEADS, mlp_ratio=1.0, qkv_bias=False,
                            norm_layer=nn.LayerNorm, embed_layer=TubeletEmbed, attn_layer=Attention64,
                            drop_path_rate=drop_path, weight_init="skip")
    nn.init.normal_(vit.pos_embed)
    nn.init.normal_(vit.cls_token)
    return vit


class ViViT(nn.Module):
    """Factorised ViViT (spatial, then temporal transformer), with timm's interface: `forward_features` (up to the
    temporal norm, then `booster_site`), `forward_head` (Linear on the temporal CLS), `blocks` and `norm` (the
    temporal transformer's)."""

    def __init__(self, width: int, depth: int, size: int, patch: int, in_chans: int, num_classes: int,
                 drop_path: float):
        super().__init__()
        dim = self.embed_dim = width
        self.num_classes = num_classes
        self.patch_embed = TubeletEmbed(size, patch, in_chans, dim, keep_frames=True)
        frames, per_frame = self.patch_embed.frames, self.patch_embed.patches_per_frame
        self.pos_embed = nn.Parameter(torch.randn(1, frames, per_frame, dim))  # tubelets only, not the CLS
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))  # each frame group's (spatial) CLS
        self.temporal_cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.spatial_blocks = lai_blocks(dim, depth, drop_path)
        self.spatial_norm = nn.LayerNorm(dim)
        self.blocks = lai_blocks(dim, depth, drop_path)
        self.norm = nn.LayerNorm(dim)
        self.booster_site = nn.Sequential()  # after the temporal norm, on the temporal tokens
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed  # (B, F, N, dim)
        b, f, n, dim = x.shape
        x = torch.cat([self.cls_token.expand(b, f, 1, dim), x], dim=2).reshape(b * f, n + 1, dim)
        x = self.spatial_norm(self.spatial_blocks(x))[:, 0].reshape(b, f, dim)  # each group's CLS
        x = torch.cat([self.temporal_cls_token.expand(b, 1, dim), x], dim=1)
        return self.booster_site(self.norm(self.blocks(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def lai_backbone(vit: VitConfig, size: int, patch: int, in_chans: int, num_classes: int, is_3d: bool) -> nn.Module:
    """vit3d-* or (factorised) vivit-* (the registry entry `vit.arch`): `vit.depth` blocks (ViViT: in each of its
    two transformers) over `patch`^3 tubelets."""
    entry = BACKBONES[vit.arch]
    build = ViViT if entry.factorised else vit3d
    return build(entry.width, vit.depth, size, patch, in_chans, num_classes, vit.drop_path)
