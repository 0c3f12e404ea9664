"""From a batch of uint8 images to the model's input, for training and for evaluation, batched on the device.

`Pipeline` is built once per run from the resolved config; with every paper field at its default it is the
first pipeline (`prepare_batch`, then the bilinear upsampling paper mode did in the model), bit for bit. The
paper's 2D recipe (DeiT's, timm's `create_transform` + `Mixup`) is, per sample and on the device:

    RandomResizedCrop to the model size (PIL resampling) -> horizontal flip -> RandAugment (timm's increasing set)
    -> ToTensor + Normalize -> RandomErasing ('pixel') -> mixup / cutmix over the batch (soft targets)
    eval: resize to size / eval_crop, centre crop -> Normalize

Between the crop and the normalisation images hold uint8 values, rounded after each op as PIL does. Every draw comes
from the generator passed in, so the draws are the same for a seed on a device (a whole run is bit-reproducible on a
GPU only with train.deterministic: docs/operations.md, "On GPUs"); nothing waits for the device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from bench.data.augment.core import (check_images, constant, flip_shift, normalise, per_sample, prepare_batch,
                                     uniform)
from bench.data.augment.geometry import resize_centre_crop, resized_crop, rrc_params
from bench.data.augment.mixing import cutmix_box, erase, erase_boxes, mix, mix_params, soft_targets
from bench.data.augment.randaugment import apply_layer, draw
from bench.data.info import TaskSpec

if TYPE_CHECKING:
    from bench.config import RunConfig

__all__ = ["Pipeline", "prepare_batch"]


class Pipeline:
    """`train(images, labels, generator) -> (x, targets)` and `eval(images) -> x` for one run.

    `input_size` is the side the model takes (224 in paper mode), `n_outputs` its head's width: soft targets span
    every output (1000 with vit.head=pretrained). Targets are the int64 labels unchanged, or with mixup / cutmix float
    (N, n_outputs) soft targets with `train.label_smoothing` folded in, as timm's Mixup makes them (`soft_targets`).
    """

    def __init__(self, cfg: RunConfig, spec: TaskSpec, input_size: int, n_outputs: int):
        d, t = cfg.data, cfg.train
        self.t, self.is_3d, self.size, self.n_outputs = t, spec.is_3d, input_size, n_outputs
        self.rgb = d.rgb and spec.n_channels == 1
        channels = 3 if self.rgb else spec.n_channels
        self.mean, self.std = d.mean, d.std
        # PIL semantics (uint8 values, PIL's filters) from the image to the normalisation, as the paper's pipeline;
        # without any of these the first pipeline: normalise, then torch's bilinear upsampling as the model did
        self.pixels = not spec.is_3d and (bool(t.rrc_scale) or t.randaug_ops > 0 or t.eval_crop != 1.0
                                          or t.interpolation != "bilinear")
        self.soft_targets = t.mixup > 0 or t.cutmix > 0
        means = d.mean * channels if len(d.mean) == 1 else d.mean
        self.fill = tuple(float(min(255, round(255 * m))) for m in means)  # timm's img_mean: RandAugment's fill

    def train(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        t, device = self.t, images.device
        x = flip_shift(self._channels(images), t.aug, generator)
        if self.pixels:
            x = self._normalise_pixels(self._augment_pixels(x.float(), generator))
        else:
            x = self._resize_normalised(self._normalise(x))
        if t.hflip > 0 and not self.pixels:
            x = self._hflip(x, generator)
        if t.erase > 0:
            x = erase(x, erase_boxes(len(x), x.shape[-2], x.shape[-1], t.erase, generator, device), generator)
        if not self.soft_targets:
            return x, labels
        lam, use_cutmix = mix_params(t.mixup, t.cutmix, t.mixup_switch, generator, device)
        x, lam = mix(x, lam, use_cutmix, cutmix_box(lam, x.shape[-2], x.shape[-1], generator))
        return x, soft_targets(labels[:, 0], lam, self.n_outputs, t.label_smoothing)

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        x = self._channels(images)
        if not self.pixels:
            return self._resize_normalised(self._normalise(x))
        side = int(self.size / self.t.eval_crop)  # DeiT: int(input_size / eval_crop_pct)
        if (side, self.size) != (x.shape[-1], x.shape[-1]):
            x = resize_centre_crop(x.float(), side, self.size, self.t.interpolation)
        return self._normalise_pixels(x)

    def _channels(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        return images.expand(-1, 3, *images.shape[2:]) if self.rgb else images

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return normalise(x, self.mean, self.std)

    def _normalise_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """ToTensor + Normalize of float pixel values in one pass: x * (1 / (255 std)) - mean / std."""
        channels = x.shape[1]
        mean = self.mean * channels if len(self.mean) == 1 else self.mean
        std = self.std * channels if len(self.std) == 1 else self.std
        scale = constant(tuple(1 / (255 * s) for s in std), x.device).view(1, -1, 1, 1)
        shift = constant(tuple(-m / s for m, s in zip(mean, std)), x.device).view(1, -1, 1, 1)
        return torch.addcmul(shift, x, scale)

    def _resize_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """The model's former upsampling (paper mode): torch's interpolation of the normalised image."""
        if self.is_3d or x.shape[-1] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode=self.t.interpolation, align_corners=False)

    def _augment_pixels(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        t, n, device = self.t, len(x), x.device
        height, width = x.shape[-2:]
        if t.rrc_scale:
            box = rrc_params(n, height, width, t.rrc_scale, t.rrc_ratio, generator, device)
        else:
            box = (x.new_zeros(n), x.new_zeros(n), x.new_full((n,), float(height)), x.new_full((n,), float(width)))
        flip = uniform(n, generator, device) < t.hflip if t.hflip > 0 else None
        if t.rrc_scale or (height, width) != (self.size, self.size) or flip is not None:
            x = resized_crop(x, *box, self.size, t.interpolation, flip)
        if t.randaug_ops:
            ops, args = draw(t.randaug_ops, n, t.randaug_magnitude, t.randaug_std, generator, device)
            for op, arg in zip(ops, args):
                x = apply_layer(x, op, arg, self.fill, t.interpolation)
        return x

    def _hflip(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        flipped = uniform(len(x), generator, x.device) < self.t.hflip
        return per_sample(x, flipped, lambda xs: xs.flip(-1))  # (the pixel path flips inside its resize, for free)
