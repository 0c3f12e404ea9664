"""Resizing, cropping and affine warps of whole batches with per-sample parameters, with PIL's semantics.

Images here are float tensors holding uint8 values (0..255), as the paper's PIL pipeline holds them between ops:
every op rounds and clips its output to 0..255 as PIL does. Resizing is PIL's separable convolution resize
(bilinear: triangle filter; bicubic: Keys a=-0.5; widened by the scale when shrinking), built as one weight matrix per
sample and axis, so a batch of differently cropped images is two batched matmuls (in fp32: TF32 off, `exact_matmul`).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from bench.data.augment.core import constant, uniform


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp_(min=0)


def _keys_cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


FILTERS = {"bilinear": (_triangle, 1.0), "bicubic": (_keys_cubic, 2.0)}  # PIL's filters and their support


def resample_weights(in_size: int, out_size: int, start: torch.Tensor, length: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, out_size, in_size): PIL's resize weights of the window [start, start + length) of an axis (per sample)
    onto out_size pixels; pixels outside the window get weight 0 (PIL crops, then resizes)."""
    kernel, support = FILTERS[mode]
    device = start.device
    scale = (length / out_size)[:, None, None]
    filterscale = scale.clamp(min=1.0)
    reach = support * filterscale
    center = (torch.arange(out_size, device=device, dtype=torch.float32)[None, :, None] + 0.5) * scale
    window = torch.arange(in_size, device=device, dtype=torch.float32)[None, None, :] - start[:, None, None]
    lo = (center - reach + 0.5).floor().clamp(min=0)
    hi = torch.minimum((center + reach + 0.5).floor(), length[:, None, None])
    w = kernel((window - center + 0.5) / filterscale) * ((window >= lo) & (window < hi))
    return w / w.sum(-1, keepdim=True)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Round and clip to uint8 values, as PIL stores every intermediate image."""
    return x.add_(0.5).floor_().clamp_(0, 255)


@contextlib.contextmanager
def exact_matmul():
    """TF32 off for the block: the resampling's rounding to whole grey levels (PIL's) needs fp32 products, which
    TF32 (10-bit mantissa on Ampere and later GPUs, if a user or library turned it on) would not give."""
    flags = torch.backends.cuda.matmul
    before = flags.allow_tf32
    flags.allow_tf32 = False
    try:
        yield
    finally:
        flags.allow_tf32 = before


def resize_windows(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Apply per-sample weights: horizontal pass first, rounded, then vertical (PIL's order)."""
    with exact_matmul():
        x = to_pixels(x @ cols.transpose(1, 2)[:, None])
        return to_pixels(rows[:, None] @ x)


def rrc_params(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(top, left, h, w) per sample, as torchvision's RandomResizedCrop.get_params draws them: up to 10 tries of an
    area fraction U(scale) and a log-uniform aspect ratio, the first that fits; else the centre crop at the nearest
    allowed ratio. The 10 tries are drawn for every sample at once."""
    tries = 10
    draws = uniform((n, tries, 4), generator, device)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(1, keepdim=True)  # index of the first fitting try (0 when none fits)
    pick = lambda t: t.gather(1, first)[:, 0]  # noqa: E731
    h, w, u_top, u_left = pick(h), pick(w), pick(draws[..., 2]), pick(draws[..., 3])
    top = (u_top * (height - h + 1)).floor()
    left = (u_left * (width - w + 1)).floor()
    fallback_h, fallback_w = _centre_fallback(height, width, ratio)
    ok = fits.any(1)
    h = torch.where(ok, h, float(fallback_h))
    w = torch.where(ok, w, float(fallback_w))
    top = torch.where(ok, top, float((height - fallback_h) // 2))
    left = torch.where(ok, left, float((width - fallback_w) // 2))
    return top, left, h, w


def _centre_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def resized_crop(x: torch.Tensor, top, left, h, w, size: int, mode: str, flip: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Each sample's crop (top, left, h, w) resized to size x size (torchvision's resized_crop on PIL images), then
    mirrored where `flip`: reversing a sample's output columns of weights mirrors its output for free."""
    rows = resample_weights(x.shape[-2], size, top, h, mode)
    cols = resample_weights(x.shape[-1], size, left, w, mode)
    if flip is not None:
        cols = torch.where(flip.view(-1, 1, 1), cols.flip(1), cols)
    return resize_windows(x, rows, cols)


def resize_centre_crop(x: torch.Tensor, resize_to: int, size: int, mode: str) -> torch.Tensor:
    """Resize the whole image to resize_to x resize_to, then the centre size x size crop (torchvision's Resize +
    CenterCrop: offset round((resize_to - size) / 2))."""
    n = x.shape[0]
    offset = int(round((resize_to - size) / 2.0))
    rows = resample_weights(x.shape[-2], resize_to, x.new_zeros(n), x.new_full((n,), float(x.shape[-2])), mode)
    cols = resample_weights(x.shape[-1], resize_to, x.new_zeros(n), x.new_full((n,), float(x.shape[-1])), mode)
    return resize_windows(x, rows[:, offset:offset + size], cols[:, offset:offset + size])


def affine(x: torch.Tensor, matrix: torch.Tensor, fill: tuple[float, ...], mode: str) -> torch.Tensor:
    """PIL's Image.transform(AFFINE): output pixel centre (x + .5, y + .5) samples the input at `matrix` (N, 2, 3)
    applied to it; sources outside the image take `fill` (one value per channel), neighbours beyond the edge repeat
    it. The interpolation is torch's grid_sample (bicubic a=-0.75 where PIL's is a=-0.5: up to a few grey levels at
    edges)."""
    n, c, height, width = x.shape
    to_unit = constant((2 / width, 0, -1, 0, 2 / height, -1), x.device).view(2, 3)  # pixel -> grid_sample coords
    to_pixel = constant((width / 2, 0, width / 2, 0, height / 2, height / 2, 0, 0, 1), x.device).view(3, 3)
    last_row = to_pixel[2:].expand(n, 1, 3)
    theta = to_unit @ torch.cat([matrix, last_row], 1) @ to_pixel
    grid = F.affine_grid(theta, [n, c, height, width], align_corners=False)
    inside = ((grid >= -1) & (grid < 1)).all(-1, keepdim=True).view(n, 1, height, width)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    return to_pixels(torch.where(inside, out, constant(fill, x.device).view(1, -1, 1, 1)))
