"""Plain dataclasses for one run, typed `key=value` overrides, variant resolution and the run id.

A run is fully described by a `RunConfig`; everything that changes a number lives here, and nothing
that only says *where* (data root, results dir, device) does, so the run id survives a move.
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


def knob(default, *, choices: tuple = (), gt: float | None = None, ge: float | None = None,
         lt: float | None = None, le: float | None = None):
    """A config field with its allowed values, declared beside it: the one place a knob's rule lives.

    `choices` for strings; `gt`/`ge`/`lt`/`le` bounds for numbers (which must also be finite)."""
    rule = {k: v for k, v in dict(choices=choices, gt=gt, ge=ge, lt=lt, le=le).items() if v not in (None, ())}
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class DataConfig:
    task: str = "breastmnist"  # a medmnist flag, e.g. pathmnist, organmnist3d
    size: int = 28  # 28/64/128/224 (2D), 28/64 (3D)


@dataclass(frozen=True)
class VitConfig:
    arch: str = knob("tiny", choices=("tiny", "small", "base"))  # timm's ViT widths; the 3D ViT uses the same ones
    depth: int = knob(12, ge=1)  # transformer blocks (12 in every timm ViT; fewer for quick checks)
    patch: int = knob(0, ge=0)  # 0 = chosen from the image size (28->4, 64->8, 128/224->16)
    paper_mode: bool = False  # upsample 2D images to 224 and use patch 16, as the paper did
    pretrained: bool = False  # timm's ImageNet weights (2D only)
    drop_path: float = knob(0.0, ge=0, lt=1)


@dataclass(frozen=True)
class BoosterConfig:
    """FE -> FL -> FD after the last ViT block. `None` knobs take the variant's default."""

    variant: str = knob("baseline", choices=("baseline", "adapters", "rllm"))  # adapters: FD(FE z) + z, no LLM
    source: str | None = "minilm-l6"  # hub id, local directory, or minilm-l6 (packaged offline copy)
    revision: str | None = None  # hub revision; None = main
    layer: int = -1  # first layer of the block; negative counts from the end
    num_layers: int = knob(1, ge=0)  # consecutive layers starting at `layer`
    residual: str | None = knob(None, choices=("in", "out", "hybrid", "none"))  # rllm; default in
    llm_norm: str | None = knob(None, choices=("none", "unit", "pretrained"))  # rllm; default unit
    freeze: str | None = knob(None, choices=("frozen", "finetune"))  # rllm; default frozen
    lr_mult: float | None = knob(None, gt=0)  # layer lr multiplier (finetune only; default 1.0)
    init: str | None = knob(None, choices=("pretrained", "random"))  # rllm; default pretrained
    pos_emb: str | None = knob(None, choices=("none", "rope"))  # rllm; default none
    mask: str | None = knob(None, choices=("bidirectional", "causal"))  # rllm; default bidirectional
    dtype: str = knob("fp32", choices=("fp32", "bf16"))  # block weights; bf16 on CUDA only


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = knob(10, ge=1)
    batch_size: int = knob(128, ge=1)
    lr: float = knob(1e-3, gt=0)
    weight_decay: float = knob(0.05, ge=0)
    warmup_epochs: float = knob(1.0, ge=0)
    label_smoothing: float = knob(0.0, ge=0, lt=1)
    aug: float = knob(1.0, ge=0)  # augmentation strength: 0 = none, 1 = flips + shifts of up to 1/8 of the image
    eval_batch_size: int = knob(1024, ge=1)
    compile: bool = False


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    vit: VitConfig = field(default_factory=VitConfig)
    booster: BoosterConfig = field(default_factory=BoosterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = knob(0, ge=0)
    label: str = ""  # the grid's name for this variant; not part of the run id
    params_file: str = ""  # the tuned-params file applied (bench run --params); its values are, the path is not


RLLM_DEFAULTS = dict(
    residual="in", llm_norm="unit", freeze="frozen", init="pretrained", pos_emb="none", mask="bidirectional"
)
LLM_KNOBS = ("residual", "llm_norm", "freeze", "lr_mult", "init", "pos_emb", "mask")
WHICH_LLM = ("source", "revision", "layer", "num_layers", "dtype")


@functools.cache
def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls=RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key a user can set, e.g. `train.lr`."""
    keys = []
    for name, tp in field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += all_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown_key(key: str) -> BenchError:
    near = difflib.get_close_matches(key, all_keys(), n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(all_keys())}"
    return BenchError(f"unknown config key '{key}': {hint}")


@functools.cache
def rules() -> dict[str, dict]:
    """{dotted key: its declared rule} for every field declared with `knob`."""
    out = {}

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            tp = field_types(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif f.metadata.get("rule"):
                out[prefix + f.name] = f.metadata["rule"]

    walk(RunConfig, "")
    return out


def check_value(key: str, value: Any) -> None:
    """Raise a one-line BenchError when `value` breaks the rule declared for `key` (None always passes)."""
    rule = rules().get(key)
    if not rule or value is None:
        return
    if "choices" in rule:
        if value not in rule["choices"]:
            raise BenchError(f"{key}={value!r} is not one of {', '.join(rule['choices'])}")
        return
    bounds = [(op, rule[op]) for op in ("gt", "ge", "lt", "le") if op in rule]
    ok = math.isfinite(value) and all(
        {"gt": value > b, "ge": value >= b, "lt": value < b, "le": value <= b}[op] for op, b in bounds)
    if not ok:
        want = " and ".join(f"{ {'gt': '>', 'ge': '>=', 'lt': '<', 'le': '<='}[op]} {b:g}" for op, b in bounds)
        raise BenchError(f"{key}={value!r} is out of range: it must be a finite number {want}")


def check_fields(cfg: RunConfig) -> None:
    """Every field of `cfg` against its declared rule."""
    flat = flatten(cfg)
    for key in rules():
        check_value(key, flat[key])


def coerce(key: str, tp: Any, value: Any) -> Any:
    """Type `value` (a string from --set, or a YAML scalar) as the field `key` of type `tp` wants, and check it."""
    value = _typed(key, tp, value)
    check_value(key, value)
    return value


def _typed(key: str, tp: Any, value: Any) -> Any:
    optional = isinstance(tp, types.UnionType) and type(None) in tp.__args__
    base = next(a for a in tp.__args__ if a is not type(None)) if optional else tp
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("null", "~"))):
        return None
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
    for key, value in updates.items():
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


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


def resolve(cfg: RunConfig) -> RunConfig:
    """The one place a config is validated: every field against its rule, knobs that mean nothing for the
    variant refused, the variant's defaults filled in.

    Which-LLM fields are dropped for the baseline, so a grid crossing LLMs shares one baseline run.
    """
    check_fields(cfg)
    task_spec(cfg.data.task, cfg.data.size)  # the task exists at that size (medmnist.INFO)
    b = cfg.booster
    set_knobs = [k for k in LLM_KNOBS if getattr(b, k) is not None]
    if b.variant in ("baseline", "adapters"):
        if set_knobs:
            raise BenchError(
                f"booster.{set_knobs[0]} has no meaning for variant={b.variant} (no LLM layer); "
                "remove it or use booster.variant=rllm"
            )
        if b.variant == "baseline":
            b = dataclasses.replace(b, source=None, revision=None, layer=0, num_layers=0, dtype="fp32")
        else:  # adapters take only the LLM's width: one run per LLM, whatever layer the grid sweeps
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
    if b.variant != "baseline":
        if not b.source:
            raise BenchError(f"variant={b.variant} needs booster.source (a hub id, a local directory or minilm-l6)")
        if b.variant == "rllm" and b.num_layers < 1:
            raise BenchError(f"booster.num_layers must be >= 1, got {b.num_layers}")
    if cfg.vit.pretrained and cfg.data.task.endswith("3d"):
        raise BenchError("vit.pretrained applies to 2D tasks only (timm has no 3D ImageNet weights); set vit.pretrained=false")
    if cfg.vit.paper_mode and cfg.data.task.endswith("3d"):
        raise BenchError("vit.paper_mode (upsample to 224) applies to 2D tasks only; set vit.paper_mode=false")
    if cfg.vit.pretrained and cfg.vit.depth != 12:
        raise BenchError("vit.pretrained loads timm's 12-block ViTs; set vit.depth=12 or vit.pretrained=false")
    return dataclasses.replace(cfg, booster=b)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """`{"data.task": ..., "train.lr": ..., "seed": ...}`: one store column per field."""
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(to_dict(cfg), "")
    return out


def from_flat(flat: Mapping[str, Any]) -> RunConfig:
    """Inverse of `flatten`, for rebuilding a run's config from its stored row."""
    keys = set(all_keys())
    return override(RunConfig(), {k: v for k, v in flat.items() if k in keys})


def run_id(cfg: RunConfig) -> str:
    """A stable hash of the resolved config (label and params file excluded): equal configs share one run."""
    d = to_dict(resolve(cfg))
    d.pop("label")
    d.pop("params_file")
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:16]
