"""The search space: which config keys a study searches, over which ranges, checked against the config
(every extreme must resolve for every variant) before any trial. No optuna here: a `Param` suggests
through the trial it is given.

The fair rule: every variant of a task searches the same keys over the same ranges, so no tuned variant
gets more dimensions (or a wider range) than another. The variants are all those the grid has for the
task, whichever `--variant` filters are given, so a study is the same however it was started. A default
key that does not apply to every variant (`booster.lr_mult`: fine-tuned layers only) is left out for all
of them and keeps the grid's value; a key the space file lists must fit every variant, else one line.

Search-space file (`bench tune --space FILE`, YAML; every key optional):

    params:                 # merged into default_space by key; null drops a key (keeps the grid's value)
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      train.batch_size: {type: categorical, choices: [32, 64, 128]}
      vit.drop_path: null
    replace: false          # true: search only the params listed here
    pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 1}   # or hyperband (min_resource, ...)
    sampler: {n_startup_trials: 10}                                  # TPESampler options
"""

from __future__ import annotations

import difflib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from bench.config import RunConfig, all_keys, leaf_types, override, resolve
from bench.errors import BenchError

NOT_SEARCHABLE = ("data.task", "data.size", "seed", "label", "booster.variant")  # what defines the study
PARAM_FIELDS = {"type", "low", "high", "log", "step", "choices"}
TYPES = ("float", "int", "categorical")
FILE_KEYS = ("params", "replace", "pruner", "sampler")


@dataclass(frozen=True)
class Param:
    """One searched config key: `float`/`int` in [low, high] (optionally log or stepped), or `categorical`."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))

    def to_dict(self) -> dict:
        d = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                d["step"] = self.step
        return d


def default_space(base: RunConfig) -> dict[str, Param]:
    """Ranges for a ViT trained on MedMNIST; warmup scales with the base's epochs; lr_mult only when fine-tuning."""
    epochs = resolve(base).train.epochs
    space = [
        Param("train.lr", "float", 1e-4, 5e-3, log=True),
        Param("train.weight_decay", "float", 1e-4, 0.3, log=True),
        Param("train.warmup_epochs", "float", 0.0, round(min(10.0, max(0.5, 0.2 * epochs)), 2)),
        Param("train.batch_size", "categorical", choices=(32, 64, 128, 256)),
        Param("train.label_smoothing", "float", 0.0, 0.2),
        Param("vit.drop_path", "float", 0.0, 0.3),
        Param("train.aug", "float", 0.0, 1.5),
    ]
    if resolve(base).booster.freeze == "finetune":
        space.append(Param("booster.lr_mult", "float", 0.01, 1.0, log=True))
    return {p.key: p for p in space}


def _field_type(key: str) -> type:
    """The Python type of a dotted config key (Optional unwrapped)."""
    tp = leaf_types()[key]
    if isinstance(tp, types.UnionType):
        tp = next(a for a in tp.__args__ if a is not type(None))
    return tp


def _number(value: Any, where: str) -> float:
    """YAML reads `1e-4` (no dot) as a string: accept any number-like scalar."""
    if isinstance(value, bool):
        raise BenchError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BenchError(f"{where}: expected a number, got {value!r}") from None


def parse_param(key: str, spec: Any, bases: Mapping[str, RunConfig], where: str) -> Param:
    """Check one search-space entry against the config: the key, its type, and that every extreme resolves
    for every variant in `bases` (label -> base config)."""
    ctx = f"{where}: {key}"
    if key not in all_keys():
        near = difflib.get_close_matches(key, all_keys(), n=1)
        hint = f"did you mean '{near[0]}'?" if near else "use dotted config keys such as train.lr"
        raise BenchError(f"{where}: unknown parameter '{key}': {hint}")
    if key in NOT_SEARCHABLE:
        raise BenchError(f"{ctx} defines the study, it cannot be searched; use --task/--variant/--set instead")
    if not isinstance(spec, Mapping):
        raise BenchError(f"{ctx}: expected a mapping like {{type: float, low: 0.0001, high: 0.01, log: true}}, got {spec!r}")
    extra = set(spec) - PARAM_FIELDS
    if extra:
        raise BenchError(f"{ctx}: unknown field '{sorted(extra)[0]}' (fields: {', '.join(sorted(PARAM_FIELDS))})")
    kind = spec.get("type")
    if kind not in TYPES:
        raise BenchError(f"{ctx}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    ftype = _field_type(key)
    if kind == "categorical":
        choices = spec.get("choices")
        if set(spec) - {"type", "choices"}:
            raise BenchError(f"{ctx}: a categorical takes only 'choices', e.g. {{type: categorical, choices: [32, 64]}}")
        if not isinstance(choices, list) or not choices:
            raise BenchError(f"{ctx}: 'choices' must be a non-empty list")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise BenchError(f"{ctx}: choices must be scalars, got {choices!r}")
        param = Param(key, kind, choices=tuple(choices))
        extremes = list(choices)
    else:
        if ftype not in (int, float):
            raise BenchError(f"{ctx} is a {ftype.__name__} field: use type categorical with choices")
        if kind == "float" and ftype is int:
            raise BenchError(f"{ctx} is an integer field: use type int or categorical")
        if "choices" in spec or "low" not in spec or "high" not in spec:
            raise BenchError(f"{ctx}: a {kind} needs 'low' and 'high' (and no 'choices')")
        low, high = _number(spec["low"], f"{ctx}.low"), _number(spec["high"], f"{ctx}.high")
        step = None if spec.get("step") is None else _number(spec["step"], f"{ctx}.step")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise BenchError(f"{ctx}: 'log' is true or false, got {log!r}")
        if kind == "int":
            if not all(float(v).is_integer() for v in (low, high) + ((step,) if step else ())):
                raise BenchError(f"{ctx}: an int range needs integer low/high/step")
            low, high, step = int(low), int(high), None if step is None else int(step)
        if not low < high:
            raise BenchError(f"{ctx}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise BenchError(f"{ctx}: a log range needs low > 0, got {low}")
        if log and step is not None:
            raise BenchError(f"{ctx}: 'log' and 'step' cannot be combined")
        param = Param(key, kind, low, high, log=log, step=step)
        extremes = [low, high]
    for label, base in bases.items():
        for value in extremes:
            try:
                resolve(override(base, {key: value}))
            except BenchError as e:
                fair = (f"; every variant of {base.data.task} searches the same keys, so drop it or tune a grid whose "
                        "variants all take it") if len(bases) > 1 else ""
                raise BenchError(f"{ctx}={value!r} does not fit variant {label}: {e}{fair}") from None
    return param


@dataclass(frozen=True)
class SpaceFile:
    params: dict[str, Param]
    pruner: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)
    left_out: dict[str, tuple[str, ...]] = field(default_factory=dict)  # default key -> the variants that take it


def common_defaults(bases: Mapping[str, RunConfig]) -> tuple[dict[str, Param], dict[str, tuple[str, ...]]]:
    """The default keys every variant takes, with their one range; and the keys left out (-> who takes them)."""
    spaces = {label: default_space(base) for label, base in bases.items()}
    common, left_out = {}, {}
    for key in dict.fromkeys(k for space in spaces.values() for k in space):
        takes = tuple(label for label, space in spaces.items() if key in space)
        if len(takes) < len(spaces):
            left_out[key] = takes
            continue
        ranges = {label: space[key] for label, space in spaces.items()}
        if len(set(ranges.values())) > 1:
            shown = "; ".join(f"{label}: {p.to_dict()}" for label, p in ranges.items())
            raise BenchError(f"the variants' default ranges for {key} differ ({shown}); set its range in a --space "
                             "file so every variant searches the same one")
        common[key] = next(iter(ranges.values()))
    return common, left_out


def load_space(path: str | Path | None, bases: Mapping[str, RunConfig]) -> SpaceFile:
    """The one space of a task's variants (`bases`: label -> base config, see the fair rule above): the common
    default keys, with the file's `params` merged in (or replacing them), plus pruner and sampler options."""
    space, left_out = common_defaults(bases)
    if path is None:
        return SpaceFile(space, left_out=left_out)
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"search-space file '{path}' does not exist")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise BenchError(f"{path}: malformed YAML ({' '.join(str(e).split())})") from None
    if not isinstance(doc, Mapping):
        raise BenchError(f"{path}: a search-space file is a mapping with keys {', '.join(FILE_KEYS)}")
    for key in doc:
        if key not in FILE_KEYS:
            hint = ("parameters go under 'params:'" if key in all_keys()
                    else f"use {', '.join(FILE_KEYS)}")
            raise BenchError(f"{path}: unknown key '{key}': {hint}")
    params = doc.get("params") or {}
    if not isinstance(params, Mapping):
        raise BenchError(f"{path}: 'params' maps dotted config keys to ranges, e.g. train.lr: {{type: float, ...}}")
    replace = doc.get("replace", False)
    if not isinstance(replace, bool):
        raise BenchError(f"{path}: 'replace' is true or false")
    if replace:
        space, left_out = {}, {}
    for key, spec in params.items():
        if spec is None:
            if key not in all_keys():
                parse_param(str(key), {}, bases, str(path))  # raises the unknown-key error
            space.pop(key, None)
        else:
            space[key] = parse_param(str(key), spec, bases, str(path))
        left_out.pop(key, None)
    for section in ("pruner", "sampler"):
        if not isinstance(doc.get(section) or {}, Mapping):
            raise BenchError(f"{path}: '{section}' is a mapping of options")
    return SpaceFile(space, dict(doc.get("pruner") or {}), dict(doc.get("sampler") or {}), left_out)
