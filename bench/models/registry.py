"""What the suite can build, one entry per thing: backbones and booster variants.

The config's rules (`vit.arch`, `booster.variant`, the 2D/3D rule, the default depth, the sizes), the cost
estimate (bench/cost.py), the model builder and `bench list` all read these tables, so adding a backbone is one
`Backbone` entry in BACKBONES and adding a variant one `Variant` in VARIANTS (LLM families: one `Family` in
bench/models/families.py). No torch here, and no import of the model code: the config and the
cost estimate import this module, and a backbone names its builder ("module:function"), which
bench/models/backbones.py imports when it builds one.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_SIZE, PAPER_PATCH = 224, 16  # vit.paper_mode: the paper's ViT-S sees 224-px images in 16-px patches


def auto_patch(size: int) -> int:
    """Patch size giving 7x7 (28, 64 -> 8x8) or 14x14 grids: small images need small patches."""
    return {28: 4, 64: 8, 128: 16, 224: 16}[size]


@dataclass(frozen=True)
class Backbone:
    """One backbone: how to build it and everything the config and the cost estimate need to know about it.

    `build` names its builder as "module:function" (imported only when a model is built, so this table imports
    no model code): `function(vit, size, patch, in_chans, num_classes, is_3d)` gets the resolved `VitConfig`
    (depth filled) and returns a module with timm's interface (`forward_features`, `forward_head`, `embed_dim`)
    whose attribute `booster_site` names an `nn.Sequential` the booster is appended to."""

    build: str
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


def _timm(width: int, weights: str) -> Backbone:
    return Backbone("bench.models.backbones:timm_vit", (2, 3), width, width // 64, width, 4 * width, 12,
                    weights=weights, note="timm ViT (2D; 3D over Conv3d patches)")


def _lai_entry(width: int, depth: int, factorised: bool) -> Backbone:
    return Backbone("bench.models.backbones3d:lai_backbone", (3,), width, 8, 8 * 64, width, depth, sizes=(28, 64),
                    embed_input_grad=True, factorised=factorised,
                    booster_site="booster_site" if factorised else "blocks",
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


RESIDUALS = ("in", "out", "hybrid", "none")  # booster.residual: how FL's input and output join (models/booster.py)


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
        """Its booster runs LLM layers (FL): the booster.* LLM knobs (layer, init, freeze, residual...) apply."""
        return self.llm == "layers"

    @property
    def is_baseline(self) -> bool:
        """No booster at all: the ViT alone, what every other variant is compared with."""
        return self.llm == "none"

    @property
    def needs_llm(self) -> bool:
        """It reads an LLM (booster.source): its width for FE/FD, and its layers if `has_layer`."""
        return self.llm != "none"

    @property
    def is_capacity_control(self) -> bool:
        """FE/FD sized to an LLM's width with no LLM layer: what a layer variant is compared with for capacity."""
        return self.llm == "width"


VARIANTS: dict[str, Variant] = {
    "baseline": Variant("none", note="the ViT alone"),
    "adapters": Variant("width", "out", note="FD(FE z) + z: capacity control, same adapters, no LLM layer"),
    "mlp": Variant("width", "none", note="FD(FE z): the paper's +MLP control"),
    "rllm": Variant("layers", note="FD(FL(FE z) ...) wired by booster.residual"),
}


def baselines() -> list[str]:
    """The variants without a booster (booster.variant's default among them)."""
    return [name for name, v in VARIANTS.items() if v.is_baseline]


def layer_variants() -> list[str]:
    """The variants whose booster runs LLM layers, in registry order (the paper's R-LLM first)."""
    return [name for name, v in VARIANTS.items() if v.has_layer]


def without_layer(residual: str) -> str:
    """The wiring a residual leaves when FL is the identity: FD is linear, so FD(FE z + FE z) is FD(FE z) up to a
    factor and only the outer residual (+ z after FD) is left: in -> none, hybrid -> out (out, none and anything
    else, e.g. a missing value, unchanged)."""
    return {"in": "none", "hybrid": "out"}.get(residual, residual)


def capacity_control(residual: str) -> str | None:
    """The capacity control of a layer variant wired by `residual`: the variant with the same FE/FD and no LLM
    layer whose wiring is `residual`'s without the layer (mlp for in/none, adapters for out/hybrid); None if
    none is registered (or `residual` is not a residual)."""
    wiring = without_layer(residual)
    return next((name for name, v in VARIANTS.items() if v.is_capacity_control and v.wiring == wiring), None)
