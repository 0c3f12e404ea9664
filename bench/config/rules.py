"""Checking and coercing values against the schema's rules: `--set` text, typed overrides, one-line errors."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Mapping

from bench.config.schema import (
    RELATIVE_LAYERS,
    ResolvedConfig,
    RunConfig,
    _flat_values,
    _text,
    all_keys,
    field_types,
    rules,
)
from bench.errors import BenchError


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


