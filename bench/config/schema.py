"""The config's schema: plain frozen dataclasses for one run, each field's rule declared beside it (`knob`),
and the one walk over the fields that store columns, grid typing, the tune space and the rules read."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from bench.models.registry import BACKBONES, RESIDUALS, VARIANTS


def knob(default, *, choices: tuple = (), gt: float | None = None, ge: float | None = None,
         lt: float | None = None, le: float | None = None, added: bool = False):
    """A config field with its allowed values, declared beside it: the one place a knob's rule lives.

    `choices` for strings (a registry's dict: its names, read when checked, so a new entry is a new choice); `gt`/`ge`/`lt`/`le` bounds for numbers (which must also be finite; for tuples,
    each item). `added=True` marks a field added after the first release: at its default it is left out
    of the run id, so runs stored before it existed keep their ids (its default is what they did)."""
    rule = {k: v for k, v in dict(choices=choices, gt=gt, ge=ge, lt=lt, le=le).items() if v not in (None, ())}
    return field(default=default, metadata={"rule": rule, "added": added})


RELATIVE_LAYERS = ("first", "middle", "last")


@dataclass(frozen=True)
class DataConfig:
    task: str = "breastmnist"  # a medmnist flag, e.g. pathmnist, organmnist3d
    size: int = 28  # 28/64/128/224 (2D), 28/64 (3D)
    rgb: bool = knob(False, added=True)  # repeat grey images to 3 channels (the paper: RGB JPEGs in 2D, repeat in 3D)
    mean: tuple[float, ...] = knob((0.5,), added=True)  # per-channel normalisation of [0, 1] pixels: (x - mean) / std
    std: tuple[float, ...] = knob((0.5,), gt=0, added=True)  # (0.5,)/(0.5,) is medmnist's; ImageNet's for timm weights


@dataclass(frozen=True)
class VitConfig:
    arch: str = knob("tiny", choices=BACKBONES)  # bench/models/registry.py
    depth: int = knob(0, ge=0)  # transformer blocks; 0 = the arch's own (12; vit3d 8; vivit 4+4, 8+8, 16+16)
    patch: int = knob(0, ge=0)  # 0 = chosen from the image size (28->4, 64->8, 128/224->16)
    paper_mode: bool = False  # the model sees 2D images at 224 with patch 16, as the paper's ViT-S
    pretrained: bool = False  # timm's default ImageNet weights for the arch (2D only)
    drop_path: float = knob(0.0, ge=0, lt=1)
    weights: str = knob("", added=True)  # a timm pretrained tag, e.g. deit_small_patch16_224.fb_in1k (2D only)
    head: str = knob("task", choices=("task", "pretrained"), added=True)  # pretrained: keep the 1000-way ImageNet
    # classifier and train it, the task's classes being its first outputs (the paper's code)
    checkpoint: str = knob("", added=True)  # a DeiT / LM4VisualEncoding training checkpoint.pth to start from (2D; its
    # `model` mapped onto ViT, head, FE/FD and LLM layer: bench/models/checkpoint2d.py); replaces vit.weights. Where
    # the file is, not what it holds: never in the run id (its sha256 is)
    checkpoint_sha256: str = knob("", added=True)  # resolved from vit.checkpoint's file: the run id keys on the content
    checkpoint_strict: bool = knob(True, added=True)  # every checkpoint tensor maps onto the model and every model
    # tensor comes from the checkpoint; false: map what fits, keep the rest as built


@dataclass(frozen=True)
class BoosterConfig:
    """FE -> FL -> FD after the last ViT block. `None` knobs take the variant's default."""

    variant: str = knob("baseline", choices=VARIANTS)  # bench/models/registry.py; adapters: FD(FE z) + z and
    # mlp: FD(FE z), both without an LLM layer (capacity controls)
    source: str | None = "minilm-l6"  # hub id, local directory, a GGUF file (or a folder holding one), or a packaged
    # model: minilm-l6 (all-MiniLM-L6-v2) or smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF)
    source_sha256: str = knob("", added=True)  # resolved from a GGUF source's file: the run id keys on its content,
    # not on where it is
    revision: str | None = None  # hub revision; None = main
    layer: int | str = -1  # first layer of the block: an index (negative from the end), first | middle | last,
    # or a fraction of the depth in [0, 1] (0.5 = the middle layer)
    num_layers: int = knob(1, ge=0)  # consecutive layers starting at `layer`
    residual: str | None = knob(None, choices=RESIDUALS)  # rllm; default in
    llm_norm: str | None = knob(None, choices=("none", "unit", "pretrained"))  # rllm; default unit
    freeze: str | None = knob(None, choices=("frozen", "finetune"))  # rllm; default frozen
    lr_mult: float | None = knob(None, gt=0)  # layer lr multiplier (finetune only; default 1.0)
    init: str | None = knob(None, choices=("pretrained", "random"))  # rllm; default pretrained
    pos_emb: str | None = knob(None, choices=("none", "rope"))  # rllm; default none
    mask: str | None = knob(None, choices=("bidirectional", "causal"))  # rllm; default bidirectional
    dtype: str = knob("fp32", choices=("fp32", "bf16"))  # block weights; bf16 on CUDA only
    bias: bool = knob(True, added=True)  # FE and FD with biases (the paper's have none)
    adapter_init: str = knob("default", choices=("default", "trunc_normal"), added=True)  # FE/FD weights: torch's
    # default, or timm's truncated normal(0.02) (the paper's 2D code)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = knob(10, ge=1)
    batch_size: int = knob(128, ge=1)
    lr: float = knob(1e-3, gt=0)
    weight_decay: float = knob(0.05, ge=0)
    warmup_epochs: float = knob(1.0, ge=0)
    label_smoothing: float = knob(0.0, ge=0, lt=1)
    aug: float = knob(1.0, ge=0)  # flips + shifts of up to aug/8 of the image; 0 = none
    eval_batch_size: int = knob(1024, ge=1)
    compile: bool = False
    optimizer: str = knob("adamw", choices=("adamw", "adam"), added=True)  # adam: L2 decay, the paper's 3D code
    schedule: str = knob("cosine", choices=("cosine", "cosine_epoch", "constant"), added=True)  # cosine: per step;
    # cosine_epoch: timm's CosineLRScheduler stepped per epoch (DeiT, the paper's 2D code); constant: lr throughout
    warmup_lr: float = knob(0.0, ge=0, added=True)  # where the linear warm-up starts
    min_lr: float = knob(0.0, ge=0, added=True)  # where the cosine ends
    rrc_scale: tuple[float, ...] = knob((), gt=0, le=1, added=True)  # RandomResizedCrop area range, e.g. (0.08, 1.0);
    # () = none
    rrc_ratio: tuple[float, ...] = knob((0.75, 4 / 3), gt=0, added=True)  # its aspect-ratio range
    interpolation: str = knob("bilinear", choices=("bilinear", "bicubic"), added=True)  # resizing to the model size
    hflip: float = knob(0.0, ge=0, le=1, added=True)  # horizontal flip probability (after the crop)
    randaug_ops: int = knob(0, ge=0, added=True)  # RandAugment ops per image (timm's increasing set); 0 = none
    randaug_magnitude: float = knob(9.0, ge=0, le=10, added=True)
    randaug_std: float = knob(0.5, ge=0, added=True)  # Gaussian noise on the magnitude, per op
    erase: float = knob(0.0, ge=0, le=1, added=True)  # random erasing probability (per-pixel normal noise)
    mixup: float = knob(0.0, ge=0, added=True)  # mixup Beta(alpha, alpha); 0 = off
    cutmix: float = knob(0.0, ge=0, added=True)  # cutmix Beta(alpha, alpha); 0 = off
    mixup_switch: float = knob(0.5, ge=0, le=1, added=True)  # with both on: probability of cutmix for a batch
    eval_crop: float = knob(1.0, gt=0, le=1, added=True)  # eval: resize to size / eval_crop, centre crop (DeiT 0.875)
    repeated_aug: int = knob(1, ge=1, added=True)  # each image this many times per epoch, differently augmented
    audit_test: bool = knob(False, added=True)  # protocol audit: test metrics every epoch, into the history only
    deterministic: bool = knob(False, added=True)  # torch's deterministic algorithms (bench.train.set_determinism)
    resume: bool = knob(False, added=True)  # DeiT's --resume of vit.checkpoint: when the file stores its epoch (with
    # `optimizer` and `lr_scheduler`, the reference's condition) the lr schedule starts at epoch + 1 (train.start_epoch);
    # optimizer state is not restored, as the reference. Dropped without vit.checkpoint
    start_epoch: int = knob(0, ge=0, added=True)  # the schedule's epoch the run starts at: it trains `epochs` epochs,
    # start_epoch .. start_epoch + epochs - 1, of a start_epoch + epochs long schedule (resume fills it in)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    vit: VitConfig = field(default_factory=VitConfig)
    booster: BoosterConfig = field(default_factory=BoosterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = knob(0, ge=0)
    label: str = ""  # the grid's name for this variant; not part of the run id
    params_file: str = ""  # the tuned-params file applied (bench run --params); its values are, the path is not
    save_weights: bool = False  # keep the trained weights (for `bench explain`); what is kept, not what is computed

    def __eq__(self, other) -> bool:
        """Equal values, resolved (ResolvedConfig) or not, are equal configs."""
        if not isinstance(other, RunConfig):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(RunConfig))


@dataclass(frozen=True, eq=False)  # RunConfig's equality and hash
class ResolvedConfig(RunConfig):
    """A RunConfig that `resolve` checked and completed (the variant's and the arch's defaults filled in): what
    model building, training, the cost estimate and the run id work from. Only `resolve` makes one; `override`
    of one gives a plain RunConfig again, to be resolved anew."""


NOT_IN_RUN_ID = ("label", "params_file", "save_weights", "vit.checkpoint")  # where, not what: vit.checkpoint's
# content is in the id as vit.checkpoint_sha256
RLLM_DEFAULTS = dict(
    residual="in", llm_norm="unit", freeze="frozen", init="pretrained", pos_emb="none", mask="bidirectional"
)
LLM_KNOBS = ("residual", "llm_norm", "freeze", "lr_mult", "init", "pos_emb", "mask")


@functools.cache
def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def fields(cls=RunConfig, prefix: str = ""):
    """(dotted key, dataclass field, type) of every leaf field: the one walk over the config's fields (store
    columns, grid typing, the tune space and the rules below read it)."""
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from fields(tp, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, tp


@functools.cache
def leaf_types() -> dict[str, Any]:
    """{dotted key: field type} of every settable field, e.g. {"train.lr": float, "booster.layer": int | str}."""
    return {key: tp for key, _, tp in fields()}


@functools.cache
def all_keys() -> list[str]:
    """Every dotted key a user can set, e.g. `train.lr`."""
    return list(leaf_types())


@functools.cache
def rules() -> dict[str, dict]:
    """{dotted key: its declared rule} for every field declared with a rule."""
    return {key: f.metadata["rule"] for key, f, _ in fields() if f.metadata.get("rule")}


@functools.cache
def added_defaults() -> dict[str, Any]:
    """{dotted key: default} of the fields added after the first release (left out of run ids at that default)."""
    return {key: f.default for key, f, _ in fields() if f.metadata.get("added")}


@functools.cache
def _paths() -> list[tuple[str, tuple[str, ...]]]:
    return [(key, tuple(key.split("."))) for key in all_keys()]


def _flat_values(cfg: RunConfig) -> dict[str, Any]:
    """{dotted key: value} read straight off the frozen dataclasses (no copies: grid expansion calls it per run)."""
    out = {}
    for key, path in _paths():
        value = cfg
        for name in path:
            value = getattr(value, name)
        out[key] = value
    return out


def _text(value: tuple) -> str:
    return ",".join(str(v) for v in value)
