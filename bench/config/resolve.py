"""`resolve`: the one place a config is checked whole and completed (the variant's and the arch's defaults,
the sha256 of the files whose content is part of the run: a GGUF source, a start checkpoint)."""

from __future__ import annotations

import dataclasses

from bench.config.rules import _as, check_fields
from bench.config.schema import (
    LLM_KNOBS,
    RLLM_DEFAULTS,
    BoosterConfig,
    DataConfig,
    ResolvedConfig,
    RunConfig,
    TrainConfig,
    VitConfig,
)
from bench.data.info import task_spec
from bench.errors import BenchError
from bench.models.registry import BACKBONES, VARIANTS, archs, layer_variants


def resolve(cfg: RunConfig) -> ResolvedConfig:
    """The one place a config is validated: every field against its rule, knobs that mean nothing for the
    variant or the task refused, the variant's and the arch's defaults filled in. A ResolvedConfig is returned
    as it is.

    Which-LLM fields are dropped for the baseline, so a grid crossing LLMs shares one baseline run.
    """
    if isinstance(cfg, ResolvedConfig):
        return cfg
    check_fields(cfg)
    spec = task_spec(cfg.data.task, cfg.data.size)  # the task exists at that size (medmnist.INFO)
    b = cfg.booster
    variant = VARIANTS[b.variant]
    set_knobs = [k for k in LLM_KNOBS if getattr(b, k) is not None]
    if not variant.has_layer:
        if set_knobs:
            raise BenchError(
                f"booster.{set_knobs[0]} has no meaning for variant={b.variant} (no LLM layer); "
                f"remove it or use booster.variant={layer_variants()[0]}"
            )
        if variant.is_baseline:
            b = dataclasses.replace(b, source=None, revision=None, layer=0, num_layers=0, dtype="fp32", bias=True,
                                    adapter_init="default")
        else:  # adapters and mlp take only the LLM's width: one run per LLM, whatever layer the grid sweeps
            b = dataclasses.replace(b, layer=0, num_layers=0, dtype="fp32")
    else:
        fill = {k: v for k, v in RLLM_DEFAULTS.items() if getattr(b, k) is None}
        b = dataclasses.replace(b, **fill)
        if b.freeze == "finetune" and b.lr_mult is None:
            b = dataclasses.replace(b, lr_mult=1.0)
        if b.freeze == "frozen" and b.lr_mult is not None:
            raise BenchError("booster.lr_mult only applies to a fine-tuned layer; set booster.freeze=finetune or drop it")
        if b.init == "random" and b.llm_norm == "pretrained":
            raise BenchError("booster.llm_norm=pretrained loads trained weights into a random-init block; use unit or none")
    if variant.needs_llm:
        if not b.source:
            raise BenchError(f"variant={b.variant} needs booster.source (a hub id, a local directory or minilm-l6)")
        if variant.has_layer and b.num_layers < 1:
            raise BenchError(f"booster.num_layers must be >= 1, got {b.num_layers}")
    b = _resolve_source(b)
    vit = _resolve_vit(cfg.vit, spec)
    vit, train = _resolve_start(vit, cfg.train)
    _check_data(cfg.data, spec)
    _check_train(train, spec)
    return _as(ResolvedConfig, dataclasses.replace(cfg, vit=vit, booster=b, train=train))


def _resolve_vit(v: VitConfig, spec) -> VitConfig:
    entry, dims = BACKBONES[v.arch], 3 if spec.is_3d else 2
    if dims not in entry.dims:
        raise BenchError(f"vit.arch={v.arch} is a {entry.dims[0]}D backbone; for a {dims}D task use one of "
                         f"{', '.join(archs(dims))}")
    if spec.size not in entry.sizes:
        raise BenchError(f"vit.arch={v.arch} takes data.size {', '.join(map(str, entry.sizes))}, not {spec.size}; "
                         "set data.size to one of them or choose another vit.arch")
    if spec.is_3d:
        for name in ("pretrained", "paper_mode", "weights", "checkpoint"):
            if getattr(v, name):
                raise BenchError(f"vit.{name} applies to 2D tasks only (there are no 3D ImageNet weights or 224-px "
                                 f"images); drop vit.{name}")
    if v.pretrained and not entry.weights:
        raise BenchError(f"vit.pretrained: vit.arch={v.arch} has no ImageNet weights; use one of "
                         f"{', '.join(n for n, b in BACKBONES.items() if b.weights)} or drop vit.pretrained")
    if v.pretrained and v.weights:
        raise BenchError("vit.pretrained and vit.weights both pick ImageNet weights; keep only vit.weights")
    if v.checkpoint:  # the start is the training checkpoint, not timm's weights
        v = dataclasses.replace(v, pretrained=False, weights="")
    if v.head == "pretrained" and not (v.pretrained or v.weights or v.checkpoint):
        raise BenchError("vit.head=pretrained keeps the checkpoint's ImageNet classifier: set vit.weights too (or "
                         "vit.checkpoint)")
    depth = v.depth or entry.depth
    if (v.pretrained or v.weights) and depth != 12:
        raise BenchError("ImageNet weights are for timm's 12-block ViTs; set vit.depth=0 (or 12)")
    return dataclasses.replace(v, depth=depth)


def _resolve_source(b: BoosterConfig) -> BoosterConfig:
    """A GGUF source's sha256 (checked against one already recorded); nothing for other sources."""
    from bench.models.gguf_file import find

    path = find(b.source)
    if path is None:
        if b.source_sha256:
            raise BenchError("booster.source_sha256 is resolved from a GGUF booster.source; set booster.source to the "
                             ".gguf file or drop booster.source_sha256")
        return b
    from bench.models.llm.checkpoint import sha256

    sha = sha256(path)
    if b.source_sha256 and b.source_sha256 != sha:
        raise BenchError(f"booster.source={b.source} has sha256 {sha[:12]}..., not the recorded {b.source_sha256[:12]}...: "
                         "the file changed; restore it or drop booster.source_sha256")
    return dataclasses.replace(b, source_sha256=sha)


def _resolve_start(v: VitConfig, t: TrainConfig) -> tuple[VitConfig, TrainConfig]:
    """vit.checkpoint's sha256 (checked against one already recorded) and, with train.resume, the schedule's start
    epoch read from the file; train.resume is dropped without a checkpoint (nothing to resume)."""
    if not v.checkpoint:
        if v.checkpoint_sha256:
            raise BenchError("vit.checkpoint_sha256 is resolved from vit.checkpoint; set vit.checkpoint (a path to "
                             "a checkpoint.pth) or drop vit.checkpoint_sha256")
        return v, dataclasses.replace(t, resume=False)
    from bench.models.checkpoint2d import inspect_checkpoint

    sha, epoch = inspect_checkpoint(v.checkpoint)
    if v.checkpoint_sha256 and v.checkpoint_sha256 != sha:
        raise BenchError(f"vit.checkpoint={v.checkpoint} has sha256 {sha[:12]}..., not the recorded "
                         f"{v.checkpoint_sha256[:12]}...: the file changed; restore it or drop vit.checkpoint_sha256")
    v = dataclasses.replace(v, checkpoint_sha256=sha)
    if t.resume:
        start = 0 if epoch is None else epoch + 1
        if t.start_epoch not in (0, start):
            raise BenchError(f"train.start_epoch={t.start_epoch} but train.resume starts at {start} (the checkpoint's "
                             "epoch + 1); drop one of them")
        t = dataclasses.replace(t, start_epoch=start)
    return v, t


def _check_data(d: DataConfig, spec) -> None:
    channels = 3 if d.rgb or spec.n_channels == 3 else 1
    for name in ("mean", "std"):
        n = len(getattr(d, name))
        if n not in (1, channels):
            raise BenchError(f"data.{name} has {n} values but the images have {channels} channel(s); give 1 or "
                             f"{channels} (data.rgb=true makes grey images 3-channel)")


def _check_train(t: TrainConfig, spec) -> None:
    if t.rrc_scale and (len(t.rrc_scale) != 2 or t.rrc_scale[0] > t.rrc_scale[1]):
        raise BenchError("train.rrc_scale is a (min, max) area range, e.g. 0.08,1.0; or empty for no crop")
    if len(t.rrc_ratio) != 2 or t.rrc_ratio[0] > t.rrc_ratio[1]:
        raise BenchError("train.rrc_ratio is a (min, max) aspect-ratio range, e.g. 0.75,1.3333")
    if spec.is_3d:
        for name in ("rrc_scale", "randaug_ops", "hflip", "erase", "mixup", "cutmix"):
            if getattr(t, name) != getattr(TrainConfig, name):
                raise BenchError(f"train.{name} is a 2D image augmentation; 3D volumes use train.aug (flips and "
                                 f"shifts): drop train.{name}")
        if t.eval_crop != 1.0:
            raise BenchError("train.eval_crop applies to 2D images only; drop it")
    if (t.mixup or t.cutmix) and spec.multilabel:
        raise BenchError(f"train.mixup/cutmix mix one label per image; {spec.task} is multi-label: drop them")


