"""FE -> FL -> FD: the LLM layer between two linear adapters, with the residual wiring as a knob.

`z` is the ViT token sequence, FE: d_vit -> d_llm, FL: the LLM layer(s), FD: d_llm -> d_vit.
    in       FD(FL(FE z) + FE z)          the paper code's wiring
    out      FD(FL(FE z)) + z
    hybrid   FD(FL(FE z) + FE z) + z
    none     FD(FL(FE z))
    adapters FD(FE z) + z                 capacity control: same adapters, no LLM layer
    mlp      FD(FE z)                     the paper's "+MLP" control: the adapters alone, no residual

FE and FD have biases unless `bias=False` (the paper's code has none); `init="trunc_normal"` draws their weights
from timm's ViT init, normal(0, 0.02) "truncated" at +-2 (absolute bounds, so in effect untruncated), biases 0, as
the paper's 2D code initialises them.
"""

from __future__ import annotations

import torch
from torch import nn


NO_LLM = ("adapters", "mlp")


class Booster(nn.Module):
    def __init__(self, d_vit: int, d_llm: int, residual: str, llm: nn.Module | None, bias: bool = True,
                 init: str = "default"):
        super().__init__()
        if (llm is None) != (residual in NO_LLM):
            raise ValueError("an LLM layer goes with residual in/out/hybrid/none; none goes with adapters or mlp")
        self.fe = nn.Linear(d_vit, d_llm, bias=bias)
        self.fd = nn.Linear(d_llm, d_vit, bias=bias)
        if init == "trunc_normal":
            for linear in (self.fe, self.fd):
                nn.init.trunc_normal_(linear.weight, std=0.02, a=-2.0, b=2.0)
                if bias:
                    nn.init.zeros_(linear.bias)
        self.llm = llm
        self.residual = residual

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fe(z)
        if self.residual == "mlp":
            return self.fd(h)
        if self.residual == "adapters":
            return self.fd(h) + z
        f = self.llm(h)
        if self.residual in ("in", "hybrid"):
            f = f + h
        out = self.fd(f)
        if self.residual in ("out", "hybrid"):
            out = out + z
        return out
