"""YAML grid -> list of resolved run configs. The format is documented in ablations/README.md.

    defaults: a nested config every run starts from
    axes:     {dotted.key: [values]} crossed with each other
    variants: {name: {dotted.key: value}} one override set per run; the name becomes the run's label
    seeds:    [0, 1, 2] crossed with everything
    exclude:  [{key: value | [values]}] drop runs matching every key ("variant" matches the name)
    include:  [{variant: name, dotted.key: value}] extra runs (crossed with the seeds)
    runs:     [{dotted.key: value}] explicit points (each crossed with the axes, variants and seeds)

Any of these override mappings (defaults, a runs or include entry, a variant) may say `extends: FILE` (or a list
of files): a recipe, a YAML mapping of config keys relative to the grid's folder (ablations/recipes/), whose keys
the mapping's own override.

`--set` overrides are applied last, to every run (`--set VARIANT:key=value` to that variant's runs only, after the
others). Runs with the same run id collapse into one
(e.g. the baseline of a grid that crosses several LLMs).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from bench.config import (ResolvedConfig, RunConfig, all_keys, coerce, id_from_parts, id_parts, leaf_types, override, resolve,
                          run_id)
from bench.errors import BenchError

TOP_KEYS = ("name", "description", "defaults", "axes", "variants", "seeds", "exclude", "include", "runs", "portable")
ABLATIONS = Path(__file__).resolve().parents[1] / "ablations"


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    runs: list[ResolvedConfig]  # unique by run id, in grid order
    known: dict[int, tuple[RunConfig, str]] = field(default_factory=dict, repr=False, compare=False)  # the
    # expansion's run ids by config object, so a copy with some runs replaced (tuned params) recomputes only those
    portable: bool = False  # rows and logs without host name or absolute paths (a store shipped in a repository)

    def run_ids(self) -> list[str]:
        return [_known_id(self.known, c) or run_id(c) for c in self.runs]


def _known_id(known: dict[int, tuple[RunConfig, str]], cfg: RunConfig) -> str | None:
    hit = known.get(id(cfg))
    return hit[1] if hit is not None and hit[0] is cfg else None


def grid_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of one in ablations/ (`smoke` -> ablations/smoke.yaml)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise BenchError(f"grid file '{p}' does not exist")
        return p
    for folder in (Path.cwd() / "ablations", ABLATIONS):
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted(f.stem for f in ABLATIONS.glob("*.yaml"))
    raise BenchError(f"unknown grid '{name_or_path}': use one of {', '.join(known)} or a path to a .yaml file")


class _Loader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently) and
    remembers the line of every key and list item, so a grid's mistakes can name their line."""

    def __init__(self, stream):
        super().__init__(stream)
        self.lines: dict[int, tuple[Any, dict]] = {}  # id(mapping or list) -> (it, kept alive; {key or index: line})

    def construct_yaml_map(self, node):
        data: dict = {}
        yield data
        lines: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in lines:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' is given twice (first on line {lines[key]}); keep one",
                        key_node.start_mark)
                lines[key] = key_node.start_mark.line + 1
        data.update(self.construct_mapping(node))
        self.lines[id(data)] = (data, lines)

    def construct_yaml_seq(self, node):
        data: list = []
        yield data
        data.extend(self.construct_sequence(node))
        self.lines[id(data)] = (data, {i: n.start_mark.line + 1 for i, n in enumerate(node.value)})


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_yaml_seq)
NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a grid's name names its report folder: one plain word


def load_grid(name_or_path: str, sets: Mapping[str, Any] | None = None) -> Grid:
    path = grid_path(name_or_path)
    lines: dict = {}
    spec = _read_yaml(path, lines)
    if not isinstance(spec, dict):
        raise BenchError(f"{path}: a grid is a YAML mapping with keys {', '.join(TOP_KEYS)}")
    _check_shape(spec, path, lines)
    spec = _with_recipes(spec, path)
    runs, ids = _expand(spec, sets or {}, where=str(path))
    portable = spec.get("portable", False)
    if not isinstance(portable, bool):
        raise BenchError(f"{path}: 'portable' is true or false")
    return Grid(spec.get("name") or path.stem, path, runs, ids, portable)


def _read_yaml(path: Path, lines: dict | None = None) -> Any:
    """The file's YAML (a key given twice is an error naming its line); `lines` gets _Loader's lines of it."""
    loader = _Loader(path.read_text())
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        raise BenchError(f"{path}:{mark.line + 1}:{mark.column + 1}: malformed YAML ({e.problem}); fix that line") from None
    except yaml.YAMLError as e:
        raise BenchError(f"{path}: malformed YAML ({e})") from None
    finally:
        loader.dispose()
        if lines is not None:
            lines.update(loader.lines)


def _with_recipes(spec: dict, path: Path) -> dict:
    """The grid with the `extends:` of its override mappings (defaults, each runs and include entry, each
    variant) merged in: a recipe shared by several grids is stated once, in a file of its own."""
    out = dict(spec)
    if isinstance(spec.get("defaults"), Mapping):
        out["defaults"] = _extended(spec["defaults"], path.parent, f"{path} defaults", (path.resolve(),))
    for key in ("runs", "include"):
        if isinstance(spec.get(key), list):
            out[key] = [_extended(e, path.parent, f"{path} {key}", (path.resolve(),)) for e in spec[key]]
    if isinstance(spec.get("variants"), Mapping):
        out["variants"] = {name: _extended(ov, path.parent, f"{path} variant '{name}'", (path.resolve(),))
                           for name, ov in spec["variants"].items()}
    return out


def _extended(entry: Any, folder: Path, where: str, chain: tuple[Path, ...]) -> Any:
    """`entry` with the recipe files its `extends:` names (paths relative to `folder`, later files winning)
    under its own keys, as dotted keys; a recipe may extend others. Any other entry is returned as it is."""
    if not isinstance(entry, Mapping) or "extends" not in entry:
        return entry
    names = entry["extends"] if isinstance(entry["extends"], list) else [entry["extends"]]
    merged: dict = {}
    for name in names:
        if not isinstance(name, str) or not name:
            raise BenchError(f"{where}: 'extends' names recipe files, e.g. extends: recipes/deit2d.yaml")
        path = (folder / name).resolve()
        if not path.is_file():
            raise BenchError(f"{where}: extends {name}, but {path} does not exist; fix the path (relative to {folder})")
        if path in chain:
            raise BenchError(f"{where}: extends {name}, which extends itself ({' -> '.join(p.name for p in chain)} "
                             f"-> {path.name}); remove the loop")
        recipe = _read_yaml(path)
        if not isinstance(recipe, Mapping):
            raise BenchError(f"{path}: a recipe is a mapping of config keys, e.g. train.lr: 1.0e-4")
        merged.update(_dotted(_extended(recipe, path.parent, str(path), (*chain, path))))
    merged.update(_dotted({k: v for k, v in entry.items() if k != "extends"}))
    return merged


def _dotted(overrides: Mapping) -> dict:
    """Sections as dotted keys ({train: {lr: x}} -> {train.lr: x}): a recipe and the keys over it merge key by key."""
    out: dict = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in _dotted(value).items()})
        else:
            out[key] = value
    return out


def _check_shape(spec: dict, path: Path, lines: dict[int, tuple[Any, dict]]) -> None:
    """What the expansion would take silently: a name that is not one plain word, empty `runs` or `variants`, an
    include entry that names no variant. Each error names its line."""
    def at(obj, key) -> str:
        return f"{path}:{lines.get(id(obj), (None, {}))[1].get(key, '?')}"

    name = spec.get("name")
    if "name" in spec and not (isinstance(name, str) and NAME_CHARS.fullmatch(name)):
        raise BenchError(f"{at(spec, 'name')}: the grid's name {name!r} names its report folder: give one word of "
                         "letters, digits, '.', '_' or '-' (or leave it out to use the file's name)")
    for key, example in (("runs", "- {data.task: breastmnist}"), ("variants", "baseline: {booster.variant: baseline}")):
        if key in spec and not spec[key]:
            raise BenchError(f"{at(spec, key)}: '{key}' is empty: give at least one entry (e.g. {example}) "
                             "or remove the key")
    include = spec.get("include") or []
    if not isinstance(include, list):
        raise BenchError(f"{at(spec, 'include')}: 'include' is a list of runs, e.g. - {{variant: adapters, "
                         "booster.variant: adapters}")
    for i, extra in enumerate(include):
        if not isinstance(extra, dict) or not isinstance(extra.get("variant"), str) or not extra["variant"]:
            raise BenchError(f"{at(include, i)}: each include entry names its variant (its label in reports), "
                             "e.g. - {variant: rllm-first, booster.variant: rllm, booster.layer: first}")


def expand(spec: Mapping[str, Any], sets: Mapping[str, Any], where: str = "grid") -> list[ResolvedConfig]:
    return _expand(spec, sets, where)[0]


def _expand(spec: Mapping[str, Any], sets: Mapping[str, Any], where: str) -> tuple[list[RunConfig], dict]:
    """The runs in grid order, unique by run id, and {id(run): (run, run id)}.

    What repeats is computed once: each override mapping is typed once (`_Typed`), a point's config once
    for all its variants, a combination's resolved config and hashed fields once for all its seeds (resolve
    does not read the seed)."""
    for key in spec:
        if key not in TOP_KEYS:
            raise BenchError(f"{where}: unknown grid key '{key}'{_near(key, TOP_KEYS)}")
    typed = _Typed()
    base = _apply(RunConfig(), spec.get("defaults") or {}, f"{where} defaults")
    variants = spec.get("variants") or {"": {}}
    if not isinstance(variants, dict):
        raise BenchError(f"{where}: 'variants' maps names to override sets, e.g. rllm: {{booster.variant: rllm}}")
    sets, scoped = _split_sets(sets, variants)
    _apply(RunConfig(), sets, "--set")  # a bad --set is the command line's fault, not the grid's
    for name, only in scoped.items():
        _apply(RunConfig(), only, f"--set {name}:")
    seeds = spec.get("seeds", [base.seed])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise BenchError(f"{where}: 'seeds' is a list of integers, e.g. seeds: [0, 1, 2]")
    seeds = [override(base, {"seed": s}).seed for s in seeds]  # each checked against the seed's rule
    seed_from_sets = "seed" in sets  # --set seed=N wins over the grid's seeds

    points = _points(spec, where)
    combos = [(p, name, ov, False) for p in points for name, ov in variants.items()]
    for extra in spec.get("include") or []:
        extra = dict(extra)
        name = extra.pop("variant", "")
        combos.append((extra, name, variants.get(name, {}), True))
    excludes = [_check_rule(r, where) for r in spec.get("exclude") or []]
    per_combo = [r for r in excludes if "seed" not in r]  # decided once for all seeds
    per_seed = [r for r in excludes if "seed" in r]

    runs: list[ResolvedConfig] = []
    ids: dict[int, tuple[RunConfig, str]] = {}
    seen: set[str] = set()
    at_point: dict[int, RunConfig] = {}
    labels: dict[Any, str] = {}
    for point, name, ov, included in combos:
        ctx = f"{where} variant '{name}'" if name else where
        cfg = at_point.get(id(point))
        if cfg is None:
            cfg = at_point[id(point)] = typed.apply(base, point, ctx)
        cfg = typed.apply(cfg, ov, ctx) if ov else cfg
        label = name or cfg.booster.variant
        if label not in labels:
            labels[label] = _apply(RunConfig(), {"label": label}, ctx).label
        cfg = typed.apply(dataclasses.replace(cfg, label=labels[label]), sets, ctx)
        if name in scoped:
            cfg = typed.apply(cfg, scoped[name], ctx)
        try:
            res = resolve(cfg)
        except BenchError as e:
            if not included and any(_matches(rule, cfg) for rule in per_combo):
                continue  # excluded anyway (a scoped --set meets runs the grid drops, e.g. 2D keys on 3D points)
            raise BenchError(f"{ctx}: {e}") from None
        if not included and any(_matches(rule, res) for rule in per_combo):
            continue
        parts = id_parts(res)
        for seed in seeds:
            run = res if seed_from_sets else dataclasses.replace(res, seed=seed)
            if not included and any(_matches(rule, run) for rule in per_seed):
                continue
            rid = id_from_parts(parts, run.seed)
            if rid not in seen:
                seen.add(rid)
                runs.append(run)
                ids[id(run)] = (run, rid)
    if not runs:
        raise BenchError(f"{where}: the grid has no runs (check axes, variants, seeds and exclude rules)")
    return runs, ids


def _split_sets(sets: Mapping[str, Any], variants: Mapping[str, Any]) -> tuple[dict, dict[str, dict]]:
    """--set overrides for every run, and those scoped to one variant (`--set rllm:vit.checkpoint=PATH`), which
    apply to that variant's runs after the others: {variant: {key: value}}."""
    plain: dict = {}
    scoped: dict[str, dict] = {}
    for key, value in sets.items():
        name, sep, rest = key.partition(":")
        if not sep:
            plain[key] = value
        elif name in variants and name:
            scoped.setdefault(name, {})[rest] = value
        else:
            raise BenchError(f"--set {key}=...: the grid has no variant '{name}' (its variants: "
                             f"{', '.join(v for v in variants if v) or 'none'}); use VARIANT:key=value or key=value")
    return plain, scoped


def _points(spec: Mapping[str, Any], where: str) -> list[dict]:
    """The grid's points: the `runs` entries (or one empty point) crossed with every combination of `axes`."""
    axes = spec.get("axes") or {}
    explicit = spec.get("runs")
    if explicit is not None and (not isinstance(explicit, list) or not all(isinstance(r, dict) for r in explicit)):
        raise BenchError(f"{where}: 'runs' is a list of override mappings, e.g. - {{data.task: breastmnist}}")
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        raise BenchError(f"{where}: 'axes' maps dotted keys to non-empty lists, e.g. data.task: [breastmnist]")
    keys = list(axes)
    crossed = [dict(zip(keys, values)) for values in itertools.product(*axes.values())]
    return [{**run, **point} for run in (explicit or [{}]) for point in crossed]


def _apply(cfg: RunConfig, overrides: Mapping[str, Any], where: str) -> RunConfig:
    if not isinstance(overrides, Mapping):
        raise BenchError(f"{where}: expected a mapping of config keys, got {overrides!r}")
    try:
        return override(cfg, overrides)
    except BenchError as e:
        raise BenchError(f"{where}: {e}") from None


class _Typed:
    """`_apply` with each override mapping typed and checked once (by `config.coerce`, as `override` does) and
    then set with `dataclasses.replace`: a grid applies the same few mappings thousands of times."""

    def __init__(self):
        self.typed: dict[int, tuple[Any, dict | None]] = {}  # id -> (the mapping, kept alive so ids stay unique; typed)

    def apply(self, cfg: RunConfig, overrides: Mapping[str, Any], where: str) -> RunConfig:
        if id(overrides) not in self.typed:
            self.typed[id(overrides)] = (overrides, self._type(overrides, where))
        leaves = self.typed[id(overrides)][1]
        if leaves is None:  # a whole section, or a mistake: config.override does it and words the error
            return _apply(cfg, overrides, where)
        return _replace(cfg, leaves) if leaves else cfg

    @staticmethod
    def _type(overrides, where) -> dict | None:
        if not isinstance(overrides, Mapping):
            return None
        types = leaf_types()
        leaves: dict = {}
        for key, value in overrides.items():
            if key not in types:
                return None
            try:
                value = coerce(key, types[key], value)
            except BenchError as e:
                raise BenchError(f"{where}: {e}") from None
            node = leaves
            *sections, name = key.split(".")
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = value
        return leaves


def _replace(obj, leaves: dict):
    """`obj` with the typed `leaves` ({field: value | {subfield: ...}}) set, nested sections copied once each."""
    return dataclasses.replace(obj, **{k: _replace(getattr(obj, k), v) if isinstance(v, dict) else v
                                       for k, v in leaves.items()})


def _check_rule(rule: Any, where: str) -> dict:
    if not isinstance(rule, dict):
        raise BenchError(f"{where}: each exclude rule is a mapping, e.g. - {{variant: rope, data.task: chestmnist}}")
    valid = set(all_keys()) | {"variant"}
    for key in rule:
        if key not in valid:
            raise BenchError(f"{where}: unknown key '{key}' in exclude{_near(key, valid)}")
    return rule


def _matches(rule: Mapping[str, Any], cfg: RunConfig) -> bool:
    """Every key of the rule matches, comparing text as `config.flatten` writes it (tuples as "a,b")."""
    for key, want in rule.items():
        have = cfg.label if key == "variant" else _getter(key)(cfg)
        have = ",".join(str(v) for v in have) if isinstance(have, tuple) else str(have)
        wants = want if isinstance(want, list) else [want]
        if not any(have == str(w) for w in wants):
            return False
    return True


@functools.cache
def _getter(key: str):
    return operator.attrgetter(key)


def _near(key: str, valid) -> str:
    near = difflib.get_close_matches(key, list(valid), n=1)
    return f"; did you mean '{near[0]}'?" if near else ""
