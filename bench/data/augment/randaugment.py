"""timm's RandAugment (`rand-m{M}-mstd{S}-inc1`: the increasing op set) on a batch, each sample drawing its own ops.

timm, per image and per layer: an op chosen uniformly (with replacement across layers), applied with p=0.5, at a
magnitude ~ N(M, S) clipped to [0, 10], its sign (where the op has one) flipped with p=0.5; the op acts on the uint8
PIL image. Here a layer is applied to the whole batch at once: the five geometric ops are one per-sample affine warp,
each other op one batched function of the samples that drew it, with per-sample arguments (`per_sample`: on CUDA
computed for the whole batch and kept by a mask, so nothing waits for the device).
"""

from __future__ import annotations

import math

import torch

from bench.data.augment.core import per_sample, uniform
from bench.data.augment.geometry import affine

OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
       "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
       "TranslateXRel", "TranslateYRel")  # timm.data.auto_augment._RAND_INCREASING_TRANSFORMS, in its order
OP = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
SIGNED = GEOMETRIC + ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing")
APPLY_PROB = 0.5  # timm's rand_augment_transform default


def draw(n_layers: int, n: int, magnitude: float, std: float, generator: torch.Generator,
         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(op, arg), each (n_layers, n): the op index per layer and sample (-1 = skipped) and its argument."""
    u = uniform((4, n_layers, n), generator, device)
    op = (u[0] * len(OPS)).long().clamp_(max=len(OPS) - 1)
    if std > 100:  # timm: a std above 100 means uniform magnitudes in [0, M]
        level = u[1] * magnitude
    else:
        level = magnitude + std * torch.erfinv(2 * u[1] - 1) * math.sqrt(2)
    level = level.clamp(0, 10)
    negate = u[2] > 0.5
    op = torch.where(u[3] > APPLY_PROB, -1, op)
    return op, op_arg(op, level, negate)


def op_arg(op: torch.Tensor, level: torch.Tensor, negate: torch.Tensor) -> torch.Tensor:
    """The argument timm's level_to_arg gives each op at `level` (0..10), `negate` for the signed ones."""
    frac = level / 10
    sign = torch.where(negate, -1.0, 1.0)
    enhance = (1 + sign * frac * 0.9).clamp(min=0.1)
    args = {
        "Rotate": sign * frac * 30,
        "PosterizeIncreasing": 4 - (frac * 4).floor(),
        "SolarizeIncreasing": 256 - (frac * 256).floor().clamp(max=256),
        "SolarizeAdd": (frac * 110).floor().clamp(max=128),
        "ColorIncreasing": enhance, "ContrastIncreasing": enhance, "BrightnessIncreasing": enhance,
        "SharpnessIncreasing": enhance,
        "ShearX": sign * frac * 0.3, "ShearY": sign * frac * 0.3,
        "TranslateXRel": sign * frac * 0.45, "TranslateYRel": sign * frac * 0.45,
    }
    out = torch.zeros_like(level)
    for name, value in args.items():
        out = torch.where(op == OP[name], value, out)
    return out


def apply_layer(x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, fill: tuple[float, ...], mode: str
                ) -> torch.Tensor:
    """One RandAugment layer: sample i gets OPS[op[i]] at arg[i] (op -1: unchanged). x: (N, C, H, W) uint8 values."""
    geometric = sum(op == OP[name] for name in GEOMETRIC).bool()
    warp = lambda xs, o, a: affine(xs, warp_matrix(o, a, xs.shape[-2], xs.shape[-1]), fill, mode)  # noqa: E731
    x = per_sample(x, geometric, warp, op, arg)
    for name, fn in PIXEL_OPS.items():
        x = per_sample(x, op == OP[name], fn, arg)
    return x


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend (ImageEnhance): degenerate + factor * (x - degenerate), clipped, truncated to uint8."""
    return (degenerate + factor.view(-1, *([1] * (x.ndim - 1))) * (x - degenerate)).clamp_(0, 255).floor_()


def grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's convert("L") (ITU-R 601-2 luma, rounded), back to x's channels."""
    if x.shape[1] == 1:
        return x
    luma = (x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 32768).div_(65536).floor_()
    return luma[:, None].expand_as(x)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH (3x3, centre 5, others 1, divided by 13), rounded; the one-pixel border is left as it
    is. The 3x3 sum is two shifted-slice passes (a depthwise conv is ~10x slower on the CPU)."""
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    inner = box.add_(x[..., 1:-1, 1:-1], alpha=4).div_(13).add_(0.5).floor_().clamp_(0, 255)
    out = x.clone()
    out[..., 1:-1, 1:-1] = inner
    return out


def autocontrast(x: torch.Tensor, _=None) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0), per channel: lowest..highest level stretched to 0..255, truncated."""
    lo, hi = x.amin((2, 3), keepdim=True).double(), x.amax((2, 3), keepdim=True).double()
    scale = 255.0 / (hi - lo).clamp(min=1)
    stretched = (x.double() * scale - lo * scale).clamp_(0, 255).trunc_().to(x.dtype)  # PIL: in doubles
    return torch.where(hi > lo, stretched, x)


def equalize(x: torch.Tensor, _=None) -> torch.Tensor:
    """ImageOps.equalize, per channel: step = (pixels - count of the highest present level) // 255, and level i maps
    to (step // 2 + pixels below i) // step; unchanged when step is 0."""
    n, c = x.shape[:2]
    index = x.reshape(n, c, -1).long()
    hist = torch.zeros(n, c, 256, device=x.device).scatter_add_(2, index, torch.ones_like(index, dtype=torch.float32))
    last = 255 - (hist > 0).flip(-1).float().argmax(-1, keepdim=True)
    step = ((hist.sum(-1, keepdim=True) - hist.gather(-1, last)) / 255).floor()
    below = hist.cumsum(-1) - hist
    table = ((step / 2).floor() + below).div_(step.clamp(min=1)).floor_().clamp_(max=255)
    levels = torch.arange(256, device=x.device, dtype=x.dtype).expand(n, c, 256)
    table = torch.where(step > 0, table, levels)
    return table.gather(2, index).view_as(x)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast: a blend with the image's mean grey level, rounded."""
    return blend(grey(x)[:, :1].mean((2, 3), keepdim=True).add_(0.5).floor_(), x, factor)


PIXEL_OPS = {
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": lambda x, _: 255 - x,
    "PosterizeIncreasing": lambda x, bits: x.div(_pow2(8 - bits)).floor_().mul_(_pow2(8 - bits)),  # keep `bits` MSBs
    "SolarizeIncreasing": lambda x, t: torch.where(x < t.view(-1, 1, 1, 1), x, 255 - x),
    "SolarizeAdd": lambda x, add: torch.where(x < 128, (x + add.view(-1, 1, 1, 1)).clamp_(max=255), x),
    "ColorIncreasing": lambda x, f: blend(grey(x), x, f),
    "ContrastIncreasing": contrast,
    "BrightnessIncreasing": lambda x, f: blend(torch.zeros_like(x), x, f),
    "SharpnessIncreasing": lambda x, f: blend(smooth(x), x, f),
}


def _pow2(bits: torch.Tensor) -> torch.Tensor:
    return torch.exp2(bits).view(-1, 1, 1, 1)


def warp_matrix(op: torch.Tensor, arg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 2, 3) PIL affine data of each sample's geometric op (identity otherwise): output pixel centre -> source."""
    n = op.shape[0]
    m = torch.zeros(n, 2, 3, device=arg.device)
    m[:, 0, 0] = m[:, 1, 1] = 1
    theta = -torch.deg2rad(arg)  # Image.rotate(degrees): counter-clockwise about the centre (w/2, h/2)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = width / 2.0, height / 2.0
    rotation = torch.stack([torch.stack([cos, sin, cx - cos * cx - sin * cy], -1),
                            torch.stack([-sin, cos, cy + sin * cx - cos * cy], -1)], 1)
    m = torch.where((op == OP["Rotate"]).view(n, 1, 1), rotation, m)
    for name, (row, col, unit) in {"ShearX": (0, 1, 1.0), "ShearY": (1, 0, 1.0), "TranslateXRel": (0, 2, width),
                                   "TranslateYRel": (1, 2, height)}.items():
        hit = op == OP[name]
        m[:, row, col] = torch.where(hit, arg * unit, m[:, row, col])
    return m
