"""Random erasing (timm's RandomErasing, mode 'pixel', one box) and mixup / cutmix (timm's Mixup, mode 'batch') on
normalised batches, every draw from the caller's generator and on the device (no host sync)."""

from __future__ import annotations

import math

import torch

from bench.data.augment.core import per_sample, uniform

ERASE_AREA = (0.02, 1 / 3)  # timm RandomErasing's defaults: area fraction, aspect ratio range
ERASE_ASPECT = (0.3, 1 / 0.3)


def erase_boxes(n: int, height: int, width: int, p: float, generator: torch.Generator,
                device: torch.device) -> tuple[torch.Tensor, ...]:
    """(top, left, h, w) per sample (h = 0: not erased): erased with probability p, then up to 10 tries of an area
    fraction U(0.02, 1/3) and a log-uniform aspect ratio in (0.3, 1/0.3), the first with h < height and w < width."""
    tries = 10
    draws = uniform((n, tries + 1, 2), generator, device)
    area = height * width * (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * draws[:, :tries, 0])
    lo, hi = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    aspect = torch.exp(lo + (hi - lo) * draws[:, :tries, 1])
    h = torch.sqrt(area * aspect).round()
    w = torch.sqrt(area / aspect).round()
    fits = (h < height) & (w < width)
    first = fits.float().argmax(1, keepdim=True)
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    place = uniform((3, n), generator, device)
    erased = fits.any(1) & (place[0] < p)
    h = torch.where(erased, h, 0.0)
    top = (place[1] * (height - h + 1)).floor()
    left = (place[2] * (width - w + 1)).floor()
    return top, left, h, torch.where(erased, w, 0.0)


def box_mask(top, left, h, w, height: int, width: int) -> torch.Tensor:
    """(N, 1, H, W) bool: inside each sample's box."""
    rows = torch.arange(height, device=top.device)[None, :]
    cols = torch.arange(width, device=top.device)[None, :]
    r = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    c = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    return (r[:, :, None] & c[:, None, :])[:, None]


def erase(x: torch.Tensor, boxes: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
    """Each box filled with per-pixel, per-channel N(0, 1) noise (mode 'pixel' on the normalised image)."""

    def fill(xs, top, left, h, w):
        noise = torch.randn(xs.shape, generator=generator, device=generator.device).to(xs.device)
        return torch.where(box_mask(top, left, h, w, xs.shape[-2], xs.shape[-1]), noise, xs)

    return per_sample(x, boxes[2] > 0, fill, *boxes)


def mix_params(mixup: float, cutmix: float, switch: float, generator: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(lam, use_cutmix) for one batch, as timm's Mixup draws them (mix prob 1): cutmix with probability `switch`
    when both are on, lam ~ Beta(alpha, alpha) of the chosen one."""
    if mixup > 0 and cutmix > 0:
        use_cutmix = uniform((), generator, device) < switch
    else:
        use_cutmix = torch.full((), cutmix > 0, device=device)
    alpha = torch.where(use_cutmix, cutmix, mixup).to(generator.device).expand(2).contiguous()
    g = torch._standard_gamma(alpha, generator=generator).to(device)  # Beta(a, a) = G1 / (G1 + G2)
    return g[0] / g.sum(), use_cutmix


def cutmix_box(lam: torch.Tensor, height: int, width: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """timm's rand_bbox: a box of side int(side * sqrt(1 - lam)) around a uniform centre (side // 2 before it, the
    rest from it), clipped to the image."""
    ratio = torch.sqrt(1 - lam)
    cut_h, cut_w = (height * ratio).floor(), (width * ratio).floor()
    centre = uniform((2,), generator, lam.device)
    cy, cx = (centre[0] * height).floor(), (centre[1] * width).floor()
    top, bottom = (cy - (cut_h / 2).floor()).clamp(0, height), (cy + (cut_h / 2).ceil()).clamp(0, height)
    left, right = (cx - (cut_w / 2).floor()).clamp(0, width), (cx + (cut_w / 2).ceil()).clamp(0, width)
    return top, left, bottom - top, right - left


def mix(x: torch.Tensor, lam: torch.Tensor, use_cutmix: torch.Tensor, box: tuple[torch.Tensor, ...]
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed batch, lam of the targets): each sample mixed with the batch's reverse, timm's batch mode
    (x * lam + reverse * (1 - lam)). Cutmix pastes the box from the reverse (weight 0 inside, 1 outside) and corrects
    lam to the pasted area."""
    height, width = x.shape[-2:]
    top, left, h, w = (t.reshape(1) for t in box)
    outside = (~box_mask(top, left, h, w, height, width)).float()
    weight = torch.where(use_cutmix, outside, lam)  # (1, 1, H, W)
    reverse = torch.arange(len(x) - 1, -1, -1, device=x.device)  # x.flip(0), as a (much faster) block copy
    mixed = torch.lerp(x.index_select(0, reverse), x, weight)  # one pass; equal to timm's to float rounding
    return mixed, torch.where(use_cutmix, 1 - (h * w)[0] / (height * width), lam)


def soft_targets(labels: torch.Tensor, lam: torch.Tensor, n_outputs: int, smoothing: float) -> torch.Tensor:
    """timm's mixup_target: smoothed one-hots (off = s / n, on = 1 - s + off) of each label and of the reversed
    batch's, weighted lam : 1 - lam."""
    off = smoothing / n_outputs
    on = 1.0 - smoothing + off
    one_hot = torch.full((len(labels), n_outputs), off, device=labels.device).scatter_(1, labels.view(-1, 1), on)
    return one_hot * lam + one_hot.flip(0) * (1.0 - lam)
