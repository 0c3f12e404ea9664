"""FE -> FL -> FD: the LLM layer between two linear adapters, with the residual wiring as a knob.

`z` is the ViT token sequence, FE: d_vit -> d_llm, FL: the LLM layer(s), FD: d_llm -> d_vit. The variant says
whether there is an FL (bench/models/registry.py); the residual wiring is
    in       FD(FL(FE z) + FE z)          the paper code's wiring
    out      FD(FL(FE z)) + z
    hybrid   FD(FL(FE z) + FE z) + z
    none     FD(FL(FE z))
and without an LLM layer (FL = identity) the variant's own wiring:
    adapters FD(FE z) + z  (out)          capacity control: same adapters, no LLM layer
    mlp      FD(FE z)      (none)         the paper's "+MLP" control: the adapters alone, no residual

FE and FD have biases unless `bias=False` (the paper's code has none); `init="trunc_normal"` draws their weights
from timm's ViT init, normal(0, 0.02) "truncated" at +-2 (absolute bounds, so in effect untruncated), biases 0, as
the paper's 2D code initialises them.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models.registry import RESIDUALS, VARIANTS


class Booster(nn.Module):
    def __init__(self, d_vit: int, d_llm: int, variant: str, residual: str | None = None, llm: nn.Module | None = None,
                 bias: bool = True, init: str = "default"):
        """`residual` (in/out/hybrid/none) wires a variant with an LLM layer `llm`; a variant without one has its
        own wiring and takes neither."""
        super().__init__()
        v = VARIANTS[variant]
        if v.is_baseline or (llm is not None) != v.has_layer or (residual is not None) != v.has_layer:
            takes = "an LLM layer and a residual" if v.has_layer else "neither an LLM layer nor a residual"
            raise ValueError(f"variant {variant} takes {takes}")
        residual = residual if v.has_layer else v.wiring
        if residual not in RESIDUALS:
            raise ValueError(f"residual {residual!r} is not one of {', '.join(RESIDUALS)}")
        self.fe = nn.Linear(d_vit, d_llm, bias=bias)
        self.fd = nn.Linear(d_llm, d_vit, bias=bias)
        if init == "trunc_normal":
            for linear in (self.fe, self.fd):
                nn.init.trunc_normal_(linear.weight, std=0.02, a=-2.0, b=2.0)
                if bias:
                    nn.init.zeros_(linear.bias)
        self.llm = llm
        self.variant, self.residual = variant, residual

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fe(z)
        if self.llm is None:
            f = h
        else:
            f = self.llm(h)
            if self.residual in ("in", "hybrid"):
                f = f + h
        out = self.fd(f)
        if self.residual in ("out", "hybrid"):
            out = out + z
        return out
