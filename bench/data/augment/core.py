"""What every op shares (draws on the generator's device, per-sample application, normalisation) and the first
augmentation (`train.aug`): per-sample flips and edge-padded shifts as index gathers, 2D and 3D.

Every stored run before the paper's pipeline trained with `prepare_batch`; the pipeline keeps it bit-identical.
"""

from __future__ import annotations

import functools

import torch


def uniform(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device, so a CPU generator gives the same batch on CPU and GPU."""
    on = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=on).to(device)


def randint(low: int, high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    on = generator.device if generator is not None else device
    return torch.randint(low, high, (n,), generator=generator, device=on).to(device)


MASKED = ("cuda",)  # device types where per_sample computes every sample and masks: selecting would sync


def per_sample(x: torch.Tensor, mask: torch.Tensor, fn, *params: torch.Tensor) -> torch.Tensor:
    """x with fn(x[i], *params[i]) where mask[i] (written into x when not on CUDA). On CUDA fn runs on the whole batch
    and a `where` keeps the masked samples (selecting them would wait for the device); elsewhere only the masked
    samples are computed. fn must treat samples independently, which makes the two the same."""
    if x.device.type in MASKED:
        return torch.where(mask.view(-1, *([1] * (x.ndim - 1))), fn(x, *params), x)
    index = mask.nonzero()[:, 0]
    if not len(index):
        return x
    return x.index_copy_(0, index, fn(x[index], *(p[index] for p in params)))


@functools.lru_cache(maxsize=64)
def constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A small float32 tensor made once per device: later steps copy nothing from the host (which would sync)."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim not in (4, 5):
        raise TypeError(f"expected uint8 (N, C, H, W) or (N, C, D, H, W) images, got {images.dtype} {tuple(images.shape)}")


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 -> float32 (x / 255 - mean) / std per channel; one value each is medmnist's ToTensor + Normalize."""
    x = images.float().div_(255)
    if len(mean) == 1 and len(std) == 1:  # Python scalars: exactly the ops every stored run used
        return x.sub_(mean[0]).div_(std[0])
    view = (1, -1) + (1,) * (images.ndim - 2)
    return x.sub_(constant(mean, x.device).view(view)).div_(constant(std, x.device).view(view))


def flip_shift(x: torch.Tensor, aug: float, generator: torch.Generator | None) -> torch.Tensor:
    """Each sample flipped with p=0.5 (2D: horizontally; 3D: along each axis independently) and shifted by a random
    integer of up to round(aug * side / 8) pixels per spatial axis, with edge padding; any dtype (a gather moves
    values, so it commutes with normalisation). Flip and shift of one axis are one gather of clamped indices."""
    if aug <= 0:
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
            index = (index - randint(-shift, shift + 1, n, generator, x.device)[:, None]).clamp_(0, side - 1)
        if flip:
            flipped = randint(0, 2, n, generator, x.device).bool()[:, None]
            index = torch.where(flipped, side - 1 - index, index)
        view = [n] + [1] * (ndim - 1)
        view[dim] = side
        x = x.gather(dim, index.reshape(view).expand(x.shape))
    return x


def prepare_batch(images: torch.Tensor, train: bool, aug: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, C, *spatial) -> float32 in [-1, 1], medmnist's ToTensor + Normalize(0.5, 0.5), then (train, aug > 0)
    `flip_shift`."""
    check_images(images)
    x = normalise(images, (0.5,), (0.5,))
    return flip_shift(x, aug, generator) if train else x
