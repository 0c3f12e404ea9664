"""2D and 3D ViTs, both timm `VisionTransformer`s, so both have timm's interface: forward = forward_head after
forward_features (embedding, `blocks`, final norm). Whatever is appended to `blocks` (the booster) runs after
the last ViT block and before the final norm, in 2D and 3D alike.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models import create_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bench.errors import BenchError
from bench.models.registry import BACKBONES, PAPER_PATCH, PAPER_SIZE, auto_patch

if TYPE_CHECKING:
    from bench.config import VitConfig

WEIGHTS_ENV = "BENCH_TIMM_WEIGHTS"  # a folder of <tag>/model.safetensors (or <tag>.safetensors/.pth), or one file


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


def build_backbone(cfg: VitConfig, size: int, in_chans: int, num_classes: int, is_3d: bool) -> nn.Module:
    """The registered backbone `cfg.arch` (bench/models/registry.py) for images or volumes of `size` (paper mode:
    upsampled to 224, patch 16).

    `cfg` is resolved: paper mode and pretrained weights are 2D only."""
    img_size = PAPER_SIZE if cfg.paper_mode else size
    patch = PAPER_PATCH if cfg.paper_mode else (cfg.patch or auto_patch(size))
    if img_size % patch:
        what = "volume" if is_3d else "image"
        raise BenchError(f"vit.patch={patch} does not divide the {what} size {img_size}; use a divisor or 0 (auto)")
    module, _, function = BACKBONES[cfg.arch].build.partition(":")
    return getattr(importlib.import_module(module), function)(cfg, img_size, patch, in_chans, num_classes, is_3d)


def timm_vit(cfg: VitConfig, img_size: int, patch: int, in_chans: int, num_classes: int,
             is_3d: bool) -> VisionTransformer:
    """timm's ViT for images (paper mode: upsampled patches), or for volumes over Conv3d patches."""
    kwargs = dict(img_size=img_size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
                  drop_path_rate=cfg.drop_path)
    if is_3d:
        kwargs["embed_layer"] = PatchEmbed3D
    elif cfg.paper_mode:
        kwargs["embed_layer"] = UpsamplingPatchEmbed
    tag = weights_tag(cfg)
    if tag:
        return _pretrained_timm(tag, cfg, kwargs)
    entry = BACKBONES[cfg.arch]
    return VisionTransformer(embed_dim=entry.width, depth=cfg.depth, num_heads=entry.heads, **kwargs)


def weights_tag(cfg: VitConfig) -> str:
    """The timm pretrained tag a resolved ViT config asks for ("" = none): vit.weights, else vit.pretrained's
    default for the arch."""
    return cfg.weights or (BACKBONES[cfg.arch].weights if cfg.pretrained else "")


@functools.cache
def check_weights(tag: str, arch: str) -> str:
    """`tag` is a timm pretrained tag of a 12-block ViT as wide as vit.arch (what the run records and costs);
    returns its full name (model.tag)."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    name, _ = split_model_name_tag(tag)
    try:
        pretrained = get_pretrained_cfg(tag)
    except RuntimeError:  # a known model, an unknown tag
        pretrained = None
    if pretrained is None:
        raise BenchError(f"vit.weights={tag!r} is not a timm pretrained tag; e.g. deit_small_patch16_224.fb_in1k "
                         f"(python -c \"import timm; print(timm.list_pretrained('*{name[:8]}*'))\")")
    with torch.device("meta"):
        model = create_model(name)
    width, entry = getattr(model, "embed_dim", None), BACKBONES[arch]
    if not isinstance(model, VisionTransformer) or width != entry.width or len(model.blocks) != 12:
        what = (f"a 12-block ViT {width} wide" if isinstance(model, VisionTransformer) and len(model.blocks) == 12
                else f"a {type(model).__name__}")
        raise BenchError(f"vit.weights={tag} is {what}, but vit.arch={arch} is a 12-block ViT {entry.width} wide; "
                         f"use weights of timm's {arch} ViTs (e.g. {entry.weights}) or set vit.arch to match")
    return f"{name}.{pretrained.tag}" if pretrained.tag else name


def local_weights(tag: str) -> Path | None:
    """The weights file of `tag` on this machine, without the network: ${WEIGHTS_ENV} (a file: used as it is; a
    folder: <tag>/model.safetensors, as `hf download timm/<tag> --local-dir DIR/<tag>` writes, or
    <tag>.safetensors, .pth or .bin), else the Hugging Face cache; None when it is nowhere."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    env = os.environ.get(WEIGHTS_ENV)
    if env and Path(env).expanduser().is_file():
        return Path(env).expanduser()
    if env and Path(env).expanduser().is_dir():
        d = Path(env).expanduser()
        for f in (d / tag / "model.safetensors", d / tag / "pytorch_model.bin", d / f"{tag}.safetensors",
                  d / f"{tag}.pth", d / f"{tag}.bin"):
            if f.is_file():
                return f
    hub_id = get_pretrained_cfg(tag).hf_hub_id
    for fname in ("model.safetensors", "pytorch_model.bin") if hub_id else ():
        hit = try_to_load_from_cache(hub_id, fname)
        if isinstance(hit, str):
            return Path(hit)
    return None


def weights_file(tag: str, download: bool) -> Path:
    """The weights file of timm tag `tag` (full name): found locally (`local_weights`), else downloaded from the
    hub when `download`; else a one-line BenchError that says where to put the file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from timm.models import get_pretrained_cfg

    found = local_weights(tag)
    if found is not None:
        return found
    hub_id = get_pretrained_cfg(tag).hf_hub_id
    if download and hub_id:
        try:
            try:
                return Path(hf_hub_download(hub_id, "model.safetensors"))
            except EntryNotFoundError:
                return Path(hf_hub_download(hub_id, "pytorch_model.bin"))
        except Exception as e:  # noqa: BLE001 - unreachable, offline mode, gated: all say where to put the file
            why = f"the hub is unreachable ({type(e).__name__})"
    else:
        why = "the hub is not asked (offline check)" if hub_id else "timm has no hub copy of them"
    raise BenchError(missing_weights(tag, why))


def missing_weights(tag: str, why: str) -> str:
    return (f"timm weights {tag} are not on this machine and {why}; where the hub is reachable run `hf download "
            f"timm/{tag} --local-dir DIR/{tag}`, copy DIR here and set {WEIGHTS_ENV}=DIR (or {WEIGHTS_ENV}=the "
            "weights file itself)")


def _pretrained_timm(tag: str, cfg: VitConfig, kwargs: dict) -> VisionTransformer:
    """timm builds the ViT and loads (resampling patch and position embeddings for other sizes) its weights from a
    local file; vit.head=pretrained keeps the checkpoint's classifier (ImageNet's 1000 outputs), task = a new one."""
    from timm.models import get_pretrained_cfg

    tag = check_weights(tag, cfg.arch)
    path = weights_file(tag, download=True)
    if cfg.head == "pretrained":
        kwargs = dict(kwargs, num_classes=get_pretrained_cfg(tag).num_classes)
    try:
        return create_model(tag, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise BenchError(
            f"could not load timm weights {tag} from {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"the file is not {tag}'s: replace it (`hf download timm/{tag}`) or fix {WEIGHTS_ENV}"
        ) from None


def task_logits(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The task's K class logits of a model's outputs: with vit.head=pretrained the model keeps ImageNet's 1000
    outputs, trained on labels 0..K-1 (the paper's code), and the class scores are the softmax/sigmoid over its
    first K; with vit.head=task the outputs are the K. The training loss takes all outputs (cross-entropy over the
    1000 logits, as the paper), so the model's forward returns them all."""
    return logits[..., :n_classes]
