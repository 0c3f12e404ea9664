"""What the suite can build, one entry per thing: backbones and booster variants.

The config's rules (`vit.arch`, `booster.variant`, the 2D/3D rule, the default depth, the sizes), the cost
estimate (bench/cost.py), the model builder and `bench list` all read these tables, so adding a backbone is one
`Backbone` entry in BACKBONES and adding a variant one `Variant` in VARIANTS (LLM families: one `Family` in
bench/models/families.py). No torch here: the config and the
cost estimate import this module; a builder imports its model code when it is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

PAPER_SIZE, PAPER_PATCH = 224, 16  # vit.paper_mode: the paper's ViT-S sees 224-px images in 16-px patches


def auto_patch(size: int) -> int:
    """Patch size giving 7x7 (28, 64 -> 8x8) or 14x14 grids: small images need small patches."""
    return {28: 4, 64: 8, 128: 16, 224: 16}[size]


@dataclass(frozen=True)
class Backbone:
    """One backbone: how to build it and everything the config and the cost estimate need to know about it.

    `build(vit, size, patch, in_chans, num_classes, is_3d)` gets the resolved `VitConfig` (depth filled) and
    returns a module with timm's interface (`forward_features`, `forward_head`, `embed_dim`) whose attribute
    `booster_site` names an `nn.Sequential` the booster is appended to."""

    build: Callable
    dims: tuple[int, ...]  # (2, 3): images and (with 3D patches) volumes; (3,): volumes only
    width: int  # embedding width
    heads: int
    attention: int  # inner width of attention (heads x head width)
    mlp: int  # hidden width of each block's MLP
    depth: int  # blocks when vit.depth=0 (per transformer for a factorised one)
    sizes: tuple[int, ...] = (28, 64, 128, 224)  # data.size values it takes
    booster_site: str = "blocks"  # the module list the booster is appended to (runs before the final norm there)
    factorised: bool = False  # ViViT: a spatial transformer per frame group, then a temporal one over their CLS
    embed_input_grad: bool = False  # a norm with weights precedes the patch embedding: its input gradient is computed
    weights: str = ""  # timm's ImageNet tag for vit.pretrained (2D, 12-block ViTs only; "" = none)
    note: str = ""  # for the docs and `bench list`


def _timm_vit(vit, size, patch, in_chans, num_classes, is_3d):
    from bench.models.backbones import timm_vit

    return timm_vit(vit, size, patch, in_chans, num_classes, is_3d)


def _lai(vit, size, patch, in_chans, num_classes, is_3d):
    from bench.models.backbones3d import build_lai_backbone

    entry = BACKBONES[vit.arch]
    return build_lai_backbone(entry.width, entry.factorised, vit.depth, size, patch, in_chans, num_classes,
                              vit.drop_path)


def _timm(width: int, weights: str) -> Backbone:
    return Backbone(_timm_vit, (2, 3), width, width // 64, width, 4 * width, 12, weights=weights,
                    note="timm ViT (2D; 3D over Conv3d patches)")


def _lai_entry(width: int, depth: int, factorised: bool) -> Backbone:
    return Backbone(_lai, (3,), width, 8, 8 * 64, width, depth, sizes=(28, 64), embed_input_grad=True,
                    factorised=factorised, booster_site="booster_site" if factorised else "blocks",
                    note="Lai et al.'s " + ("factorised ViViT" if factorised else "3D ViT"))


BACKBONES: dict[str, Backbone] = {
    "tiny": _timm(192, "vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
    "small": _timm(384, "vit_small_patch16_224.augreg_in21k_ft_in1k"),
    "base": _timm(768, "vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    "vit3d-s": _lai_entry(512, 8, False),
    "vit3d-m": _lai_entry(1024, 8, False),
    "vit3d-l": _lai_entry(2048, 8, False),
    "vivit-s": _lai_entry(512, 4, True),
    "vivit-m": _lai_entry(1024, 8, True),
    "vivit-l": _lai_entry(2048, 16, True),
}


def archs(dims: int | None = None) -> list[str]:
    """The registered backbones' names, or those that take `dims`-dimensional inputs."""
    return [name for name, b in BACKBONES.items() if dims is None or dims in b.dims]


@dataclass(frozen=True)
class Variant:
    """One booster variant: what it takes from an LLM and how its booster is wired.

    `llm`: "none" (no booster), "width" (FE and FD sized to the LLM's width, no LLM layer) or "layers" (its
    layers as FL). `wiring`: the fixed residual of a variant without an LLM layer (bench/models/booster.py);
    None for one whose wiring is the `booster.residual` knob."""

    llm: str
    wiring: str | None = None
    note: str = ""

    @property
    def has_layer(self) -> bool:
        return self.llm == "layers"

    @property
    def is_baseline(self) -> bool:
        """No booster at all: what every other variant is compared with."""
        return self.llm == "none"


VARIANTS: dict[str, Variant] = {
    "baseline": Variant("none", note="the ViT alone"),
    "adapters": Variant("width", "out", note="FD(FE z) + z: capacity control, same adapters, no LLM layer"),
    "mlp": Variant("width", "none", note="FD(FE z): the paper's +MLP control"),
    "rllm": Variant("layers", note="FD(FL(FE z) ...) wired by booster.residual"),
}


def without_layer(residual: str) -> str:
    """The wiring a residual leaves when FL is the identity: FL(h) + h folds into FE, so the inner residual goes."""
    return {"in": "none", "hybrid": "out"}.get(residual, residual)


def capacity_control(residual: str) -> str | None:
    """The variant without an LLM layer that a layer variant wired by `residual` is compared with: the same FE/FD
    wired as they are when FL is the identity (in/none -> mlp, out/hybrid -> adapters); None if none is registered."""
    return next((name for name, v in VARIANTS.items() if v.llm == "width" and v.wiring == without_layer(residual)),
                None)


def baselines() -> list[str]:
    return [name for name, v in VARIANTS.items() if v.is_baseline]


def layer_variants() -> list[str]:
    return [name for name, v in VARIANTS.items() if v.has_layer]
