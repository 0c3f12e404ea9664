import textwrap

import pytest

from bench.config import run_id
from bench.errors import BenchError
from bench.grid import expand, load_grid


def write(tmp_path, text):
    p = tmp_path / "g.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_axes_variants_seeds_cross_and_baseline_is_shared(tmp_path):
    g = load_grid(write(tmp_path, """
        defaults: {train: {epochs: 1}}
        axes: {data.task: [breastmnist, pneumoniamnist], booster.layer: [0, -1]}
        variants: {baseline: {booster.variant: baseline}, rllm: {booster.variant: rllm}}
        seeds: [0, 1]
    """))
    labels = [c.label for c in g.runs]
    # 2 tasks x 2 seeds x (1 shared baseline + 2 layers)
    assert labels.count("baseline") == 4 and labels.count("rllm") == 8
    assert len(set(g.run_ids())) == len(g.runs) == 12


def test_exclude_include_and_set(tmp_path):
    g = load_grid(write(tmp_path, """
        axes: {data.task: [breastmnist, pneumoniamnist]}
        variants: {baseline: {}, rope: {booster.variant: rllm, booster.pos_emb: rope}}
        seeds: [0]
        exclude: [{variant: rope, data.task: pneumoniamnist}]
        include: [{variant: rope, data.task: pneumoniamnist, train.lr: 0.01}]
    """), {"train.epochs": "1"})
    got = {(c.label, c.data.task, c.train.lr) for c in g.runs}
    assert got == {("baseline", "breastmnist", 0.001), ("baseline", "pneumoniamnist", 0.001),
                   ("rope", "breastmnist", 0.001), ("rope", "pneumoniamnist", 0.01)}
    assert all(c.train.epochs == 1 for c in g.runs)


@pytest.mark.parametrize("text, message", [
    ("defaults: {train: {epochs: 1}\n", "g.yaml:2"),  # malformed, with its line
    ("axis: {data.task: [breastmnist]}\n", "did you mean 'axes'"),
    ("defaults: {train: {lr: fast}}\n", "train.lr='fast' is not a valid float"),
    ("axes: {data.tsk: [breastmnist]}\n", "did you mean 'data.task'"),
    ("variants: {a: {booster.freeze: frozen}}\n", "variant 'a'.*no meaning for variant=baseline"),
    ("seeds: [0]\nexclude: [{seed: 0}]\n", "has no runs"),
    # issue 34 item 12: taken silently before, now refused naming the line
    ("seeds: [0]\naxes: {data.task: [breastmnist]}\nseeds: [1]\n",
     r"g.yaml:3:1: .*'seeds' is given twice \(first on line 1\)"),
    ("variants:\n  a: {train.lr: 0.1, train.lr: 0.2}\n", r"g.yaml:2:.*'train.lr' is given twice"),
    ("seeds: [0]\nname: ../../escaped\n", r"g.yaml:2: the grid's name '../../escaped' names its report folder"),
    ("name: [a, b]\n", r"g.yaml:1: the grid's name \['a', 'b'\]"),
    ("name: ..\n", r"g.yaml:1: the grid's name '..'"),
    ("seeds: [0]\nruns: []\n", r"g.yaml:2: 'runs' is empty"),
    ("seeds: [0]\n\nvariants:\n", r"g.yaml:3: 'variants' is empty"),
    ("include:\n  - {variant: a}\n  - {data.task: breastmnist}\n", r"g.yaml:3: each include entry names its variant"),
    ("include: {variant: a}\n", r"g.yaml:1: 'include' is a list"),
])
def test_bad_grids_fail_in_one_line(tmp_path, text, message):
    with pytest.raises(BenchError, match=message) as e:
        load_grid(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_unknown_grid_name_lists_the_shipped_ones():
    with pytest.raises(BenchError, match="smoke"):
        load_grid("no-such-grid")


def test_shipped_smoke_grid():
    g = load_grid("smoke")
    assert [c.label for c in g.runs] == ["baseline", "adapters", "rllm"]
    assert len({run_id(c) for c in g.runs}) == 3


# --------------------------------------------------------------- the fast expansion = the plain definition


def reference_expand(spec, sets):
    """The grid's definition, run plainly: every (point, variant, seed) built with config.override from
    scratch, resolved, matched against the exclude rules on config.flatten's text, hashed by config.run_id;
    the first run of each id kept. Slow (about 1.5 ms a run), independent of bench/grid.py's caches."""
    import itertools

    from bench.config import RunConfig, flatten, override, resolve

    base = override(RunConfig(), spec.get("defaults") or {})
    variants = spec.get("variants") or {"": {}}
    axes = spec.get("axes") or {}
    crossed = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    points = [{**entry, **point} for entry in (spec.get("runs") or [{}]) for point in crossed]
    combos = [(p, name, ov, False) for p in points for name, ov in variants.items()]
    for extra in spec.get("include") or []:
        extra = dict(extra)
        name = extra.pop("variant", "")
        combos.append((extra, name, variants.get(name, {}), True))

    def matches(rule, cfg):
        flat = flatten(cfg)
        return all(any(str(cfg.label if k == "variant" else flat[k]) == str(w) for w in (v if isinstance(v, list) else [v]))
                   for k, v in rule.items())

    runs, ids = [], []
    for (point, name, ov, included), seed in itertools.product(combos, spec.get("seeds", [base.seed])):
        cfg = override(override(base, point), ov or {})
        cfg = resolve(override(override(cfg, {"seed": seed, "label": name or cfg.booster.variant}), sets))
        if not included and any(matches(rule, cfg) for rule in spec.get("exclude") or []):
            continue
        rid = run_id(cfg)
        if rid not in ids:
            ids.append(rid)
            runs.append(cfg)
    return runs, ids


def assert_same_expansion(grid, spec, sets=None):
    runs, ids = reference_expand(spec, sets or {})
    assert grid.run_ids() == ids
    assert grid.runs == runs  # same configs (labels included), same order


@pytest.mark.parametrize("name", ["smoke", "ci", "paper", "beyond-paper", "layers",
                                  pytest.param("full", marks=pytest.mark.slow),
                                  pytest.param("scratch28", marks=pytest.mark.slow)])
def test_shipped_grids_expand_as_their_definition(name):
    import yaml

    from bench.grid import _with_recipes, grid_path

    path = grid_path(name)  # its recipes (`extends:`) merged in: tests/test_recipes.py checks that merge
    assert_same_expansion(load_grid(name), _with_recipes(yaml.safe_load(path.read_text()), path))


TRICKY = """
    defaults: {data: {size: 28, mean: [0.5]}, train: {epochs: 1}, booster: {source: minilm-l6}}
    runs:
      - {data.task: breastmnist, data.rgb: true, data.mean: [0.4, 0.5, 0.6]}
      - {data.task: pneumoniamnist}
    axes: {booster.layer: [0, -1, middle, 0.5]}
    variants:
      baseline: {booster.variant: baseline}
      rllm: {booster: {variant: rllm}}                   # a whole section
      same-as-rllm: {booster.variant: rllm}              # same run ids as rllm: collapses into it
      rope: {booster.variant: rllm, booster.pos_emb: rope}
      adapters: {booster.variant: adapters}
    seeds: [0, 1, 2]
    exclude:
      - {data.mean: "0.4,0.5,0.6", variant: rope}        # a tuple field, as flatten writes it
      - {seed: 1, variant: [adapters, baseline]}         # a per-seed rule
      - {booster.layer: middle, data.task: pneumoniamnist}
    include:
      - {variant: rope, data.task: breastmnist, data.rgb: true, data.mean: [0.4, 0.5, 0.6], train.lr: 0.01}
"""


@pytest.mark.parametrize("sets", [{}, {"seed": "7"}, {"label": "x"}, {"booster.variant": "rllm"},
                                  {"train.lr": "0.1", "data.size": "28"}])
def test_tricky_grid_expands_as_its_definition(tmp_path, sets):
    import yaml

    text = textwrap.dedent(TRICKY)
    assert_same_expansion(load_grid(write(tmp_path, text), sets), yaml.safe_load(text), sets)


def test_unnamed_variant_labels_and_run_ids_of_replaced_runs(tmp_path):
    """Unnamed variants are labelled by their variant; a grid copy with runs replaced (as --params tuned does)
    gets the replaced runs' own ids."""
    import dataclasses

    import yaml

    from bench.config import override

    text = "axes: {booster.variant: [baseline, rllm]}\nseeds: [0, 1]\ndefaults: {train: {epochs: 1}}\n"
    grid = load_grid(write(tmp_path, text))
    assert_same_expansion(grid, yaml.safe_load(text))
    assert [c.label for c in grid.runs] == ["baseline", "baseline", "rllm", "rllm"]
    tuned = [override(c, {"train.lr": 0.5}) if c.label == "rllm" else c for c in grid.runs]
    copy = dataclasses.replace(grid, runs=tuned)
    assert copy.run_ids() == [run_id(c) for c in tuned] and copy.run_ids()[:2] == grid.run_ids()[:2]


def test_set_scoped_to_a_variant_reaches_only_its_runs():
    spec = {"defaults": {"data.task": "breastmnist"}, "seeds": [0, 1],
            "variants": {"base": {"booster.variant": "baseline"}, "other": {"booster.variant": "baseline", "train.lr": 0.01}},
            "exclude": [{"variant": "other", "train.epochs": 7}]}
    runs = expand(spec, {"other:train.epochs": "3", "train.weight_decay": "0.1"})
    assert {(c.label, c.train.epochs, c.train.lr, c.train.weight_decay) for c in runs} == {
        ("base", 10, 1e-3, 0.1), ("other", 3, 0.01, 0.1)}
    # the scoped value wins over the variant's own and the grid-wide --set
    assert {c.train.lr for c in expand(spec, {"other:train.lr": "0.5", "train.lr": "0.2"}) if c.label == "other"} == {0.5}
    assert not [c for c in expand(spec, {"other:train.epochs": "7"}) if c.label == "other"]  # excluded all the same
    with pytest.raises(BenchError, match=r"^--set nope:train.lr=\.\.\.: the grid has no variant 'nope' \(its variants: base, other\)"):
        expand(spec, {"nope:train.lr": "0.5"})
    with pytest.raises(BenchError, match=r"--set other:.*train.lrr"):
        expand(spec, {"other:train.lrr": "0.5"})
