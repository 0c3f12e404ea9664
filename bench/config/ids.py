"""A config's flat form (one store column per field) and its run id: a stable hash of the resolved config."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any, Mapping

from bench.config.resolve import resolve
from bench.config.rules import override
from bench.config.schema import (
    NOT_IN_RUN_ID,
    ResolvedConfig,
    RunConfig,
    _flat_values,
    _text,
    added_defaults,
    all_keys,
    field_types,
)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


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
