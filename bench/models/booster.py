"""FE -> FL -> FD: the LLM layer between two linear adapters, with the residual wiring as a knob.

`z` is the ViT token sequence, FE: d_vit -> d_llm, FL: the LLM layer(s), FD: d_llm -> d_vit.
    in       FD(FL(FE z) + FE z)          the paper code's wiring
    out      FD(FL(FE z)) + z
    hybrid   FD(FL(FE z) + FE z) + z
    none     FD(FL(FE z))
    adapters FD(FE z) + z                 capacity control: same adapters, no LLM layer
"""

from __future__ import annotations

import torch
from torch import nn


class Booster(nn.Module):
    def __init__(self, d_vit: int, d_llm: int, residual: str, llm: nn.Module | None):
        super().__init__()
        if (llm is None) != (residual == "adapters"):
            raise ValueError("an LLM layer goes with residual in/out/hybrid/none; none goes with adapters")
        self.fe = nn.Linear(d_vit, d_llm)
        self.fd = nn.Linear(d_llm, d_vit)
        self.llm = llm
        self.residual = residual

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fe(z)
        if self.llm is None:
            return self.fd(h) + z
        f = self.llm(h)
        if self.residual in ("in", "hybrid"):
            f = f + h
        out = self.fd(f)
        if self.residual in ("out", "hybrid"):
            out = out + z
        return out
