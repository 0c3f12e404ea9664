"""Plain dataclasses for one run, typed `key=value` overrides, variant resolution and the run id.

A run is fully described by a `RunConfig`; everything that changes a number lives here, and nothing
that only says *where* (data root, results dir, device) does, so the run id survives a move. Each
field declares its allowed values beside it (`knob`), and `resolve` is the one place they are checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from bench.data.info import task_spec
from bench.errors import BenchError
from bench.models.registry import BACKBONES, RESIDUALS, VARIANTS, archs, layer_variants


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


def _unknown_key(key: str) -> BenchError:
    near = difflib.get_close_matches(key, all_keys(), n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(all_keys())}"
    return BenchError(f"unknown config key '{key}': {hint}")


def _in_bounds(value, rule: dict) -> bool:
    checks = {"gt": lambda b: value > b, "ge": lambda b: value >= b, "lt": lambda b: value < b, "le": lambda b: value <= b}
    return math.isfinite(value) and all(checks[op](b) for op, b in rule.items() if op in checks)


def check_value(key: str, value: Any) -> None:
    """Raise a one-line BenchError when `value` breaks the rule declared for `key` (None always passes)."""
    if key == "booster.layer":
        _check_layer(value)
    rule = rules().get(key)
    if not rule or value is None:
        return
    if "choices" in rule:
        if value not in rule["choices"]:
            raise BenchError(f"{key}={value!r} is not one of {', '.join(rule['choices'])}")
        return
    if not all(_in_bounds(v, rule) for v in (value if isinstance(value, tuple) else (value,))):
        signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        want = " and ".join(f"{signs[op]} {b:g}" for op, b in rule.items() if op in signs)
        shown = _text(value) if isinstance(value, tuple) else repr(value)
        what = "every item must be" if isinstance(value, tuple) else "it must be"
        raise BenchError(f"{key}={shown} is out of range: {what} a finite number {want}")


def _check_layer(value: int | str) -> None:
    if isinstance(value, int) or value in RELATIVE_LAYERS:
        return
    try:
        fraction = float(value)
    except ValueError:
        fraction = math.nan
    if not 0 <= fraction <= 1:
        raise BenchError(f"booster.layer={value!r} is not a layer: use an index (negative from the end), "
                         f"{', '.join(RELATIVE_LAYERS)}, or a fraction of the depth in [0, 1] such as 0.5")


_PASSED: set[tuple] = set()  # (key, type, value) already checked: a grid repeats the same values thousands of times


def check_fields(cfg: RunConfig) -> None:
    """Every field of `cfg` against its declared rule."""
    flat = _flat_values(cfg)
    for key in rules():
        value = flat[key]
        seen = (key, type(value), value)  # nan != nan, so a nan is never taken as passed
        if seen not in _PASSED:
            check_value(key, value)
            _PASSED.add(seen)
    _check_layer(cfg.booster.layer)


def coerce(key: str, tp: Any, value: Any) -> Any:
    """Type `value` (a string from --set, or a YAML scalar) as the field `key` of type `tp` wants, and check it."""
    value = _typed(key, tp, value)
    check_value(key, value)
    return value


def _typed(key: str, tp: Any, value: Any) -> Any:
    args = tp.__args__ if isinstance(tp, types.UnionType) else (tp,)
    if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("null", "~"))):
        return None
    args = tuple(a for a in args if a is not type(None))
    if args == (int, str):  # an index, else a name or a fraction (booster.layer)
        try:
            return _typed(key, int, value)
        except BenchError:
            return _typed(key, str, value)
    base = args[0]
    if typing.get_origin(base) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (int, float)) and not isinstance(items, bool):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise BenchError(f"{key}={value!r} is not a list of numbers; e.g. {key}=0.485,0.456,0.406")
        return tuple(_typed(key, float, v) for v in items if not (isinstance(v, str) and not v.strip()))
    bad = BenchError(f"{key}={value!r} is not a valid {base.__name__}; e.g. {key}={_example(base)}")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if base is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise bad from None
    if base is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise TypeError(f"no coercion for {tp}")


def _example(tp) -> str:
    return {bool: "true", int: "3", float: "0.001", str: "name"}[tp]


def override(cfg: RunConfig, updates: Mapping[str, Any]) -> RunConfig:
    """A copy of `cfg` with dotted keys (`train.lr`) set, each value typed by its field."""
    if isinstance(cfg, ResolvedConfig) and updates:
        cfg = _as(RunConfig, cfg)
    for key, value in updates.items():
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _as(cls, cfg: RunConfig) -> RunConfig:
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunConfig)})


def _set(obj, path: list[str], value, key: str):
    hints = field_types(type(obj))
    name = path[0]
    if name not in hints:
        raise _unknown_key(key)
    tp = hints[name]
    if dataclasses.is_dataclass(tp):
        if len(path) == 1:
            if not isinstance(value, Mapping):
                raise BenchError(f"'{key}' is a section; set its fields, e.g. {key}.{next(iter(field_types(tp)))}=...")
            sub = getattr(obj, name)
            for k, v in value.items():
                sub = _set(sub, [k], v, f"{key}.{k}")
            return dataclasses.replace(obj, **{name: sub})
        return dataclasses.replace(obj, **{name: _set(getattr(obj, name), path[1:], value, key)})
    if len(path) > 1:
        raise _unknown_key(key)
    return dataclasses.replace(obj, **{name: coerce(key, tp, value)})


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """`["train.lr=0.1", ...]` -> `{"train.lr": "0.1"}`; keys are checked when applied."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set expects key=value, got '{pair}' (e.g. --set train.epochs=1)")
        out[key.strip()] = value.strip()
    return out


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


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


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


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """`{"data.task": ..., "train.lr": ..., "seed": ...}`: one store column per field (tuples as "a,b")."""
    return {k: _text(v) if isinstance(v, tuple) else (str(v) if k == "booster.layer" else v)
            for k, v in _flat_values(cfg).items()}


def from_flat(flat: Mapping[str, Any]) -> RunConfig:
    """Inverse of `flatten`, for rebuilding a run's config from its stored row."""
    keys = set(all_keys())
    return override(RunConfig(), {k: v for k, v in flat.items() if k in keys})


def drop_not_in_id(d: dict) -> None:
    """Remove the NOT_IN_RUN_ID fields from a config dict (top-level or `section.name`)."""
    for key in NOT_IN_RUN_ID:
        section, _, name = key.rpartition(".")
        (d[section] if section else d).pop(name)


def run_id(cfg: RunConfig) -> str:
    """A stable hash of the resolved config (not its label, params file or save_weights): equal configs share
    one run. Fields added after the first release are left out at their default, so older ids stay valid."""
    resolved = resolve(cfg)
    return id_from_parts(id_parts(resolved), resolved.seed)


def id_parts(resolved: ResolvedConfig) -> dict[str, str]:
    """What the run id hashes of a resolved config, the seed aside: its dict less the fields left out of run ids,
    as the JSON text of each top-level value by its JSON key. A grid encodes them once for all its seeds."""
    d = _as_dict(resolved)
    drop_not_in_id(d)
    if d["booster"]["source_sha256"]:  # a GGUF file: its content is the id's, not its path or short name
        d["booster"].pop("source")
    for key, default in added_defaults().items():
        section, name = key.split(".")
        if d[section].get(name, default) == default:
            d[section].pop(name, None)
    d.pop("seed")
    return {json.dumps(k): json.dumps(v, sort_keys=True, separators=(",", ":")) for k, v in d.items()}


def id_from_parts(parts: dict[str, str], seed: int) -> str:
    """The run id: sha1 of the JSON of the config's dict with sorted keys and no spaces, assembled from the parts
    (a JSON object is its members' texts joined), the first 16 hex digits."""
    members = {**parts, '"seed"': str(seed)}
    blob = "{" + ",".join(f"{k}:{members[k]}" for k in sorted(members)) + "}"
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _as_dict(obj) -> dict:
    """`to_dict` without its deep copy (fields hold scalars and tuples): 20x faster."""
    sections = _sections(type(obj))
    return {k: _as_dict(v) if k in sections else v for k, v in vars(obj).items()}


@functools.cache
def _sections(cls) -> frozenset[str]:
    return frozenset(name for name, tp in field_types(cls).items() if dataclasses.is_dataclass(tp))
