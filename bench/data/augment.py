"""Batch preprocessing on the device: scale, normalise, and (for training) flip and shift.

Done on whole uint8 batches after indexing the in-memory split, so augmentation costs a few gathers on
the GPU instead of a per-sample PIL pipeline in DataLoader workers.
"""

from __future__ import annotations

import torch


def _randint(low: int, high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Drawn on the generator's device, so a CPU generator gives the same batch on CPU and GPU."""
    on = generator.device if generator is not None else device
    return torch.randint(low, high, (n,), generator=generator, device=on).to(device)


def prepare_batch(images: torch.Tensor, train: bool, aug: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, C, *spatial) -> float32 in [-1, 1], medmnist's ToTensor + Normalize(0.5, 0.5).

    With `train` and `aug > 0`, each sample is flipped with p=0.5 (2D: horizontally; 3D: along each
    axis independently) and shifted by a random integer of up to round(aug * side / 8) pixels per
    spatial axis, with edge padding. Flip and shift of one axis are one gather of clamped indices.
    """
    if images.dtype != torch.uint8 or images.ndim not in (4, 5):
        raise TypeError(f"expected uint8 (N, C, H, W) or (N, C, D, H, W) images, got {images.dtype} {tuple(images.shape)}")
    x = images.float().div_(255).sub_(0.5).div_(0.5)
    if not train or aug <= 0:
        return x
    n, ndim = x.shape[0], x.ndim
    flip_dims = range(2, ndim) if ndim == 5 else (ndim - 1,)
    for dim in range(2, ndim):
        side = x.shape[dim]
        shift = round(aug * side / 8)
        flip = dim in flip_dims
        if not shift and not flip:
            continue
        index = torch.arange(side, device=x.device).expand(n, side)
        if shift:
            index = (index - _randint(-shift, shift + 1, n, generator, x.device)[:, None]).clamp_(0, side - 1)
        if flip:
            flipped = _randint(0, 2, n, generator, x.device).bool()[:, None]
            index = torch.where(flipped, side - 1 - index, index)
        view = [n] + [1] * (ndim - 1)
        view[dim] = side
        x = x.gather(dim, index.reshape(view).expand(x.shape))
    return x
