"""Shared recipes (`extends:`): a recipe stated once in its own file expands exactly as if it were pasted, and
every shipped grid expands to the runs it had before its recipes were shared."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.grid import ABLATIONS, load_grid

# Per shipped grid: its number of runs and the sha256 of its "label run_id" lines in grid order, computed by the
# loader of main at 571e632, when every grid still pasted its recipes. A new grid adds its entry; an entry that
# changes changes stored runs' ids, which must not happen.
EXPECTED = json.loads((Path(__file__).parent / "grid_ids.json").read_text())
RECORD_STORE = Path(__file__).parents[1] / "reports" / "record" / "store"


def fingerprint(grid) -> dict:
    lines = [f"{c.label} {rid}" for c, rid in zip(grid.runs, grid.run_ids())]
    return {"runs": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()}


@pytest.mark.parametrize("path", sorted(ABLATIONS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_grid_expands_to_its_runs_of_before(path):
    assert path.stem in EXPECTED, f"{path.stem}: a new grid; add {fingerprint(load_grid(str(path)))} to grid_ids.json"
    assert fingerprint(load_grid(str(path))) == EXPECTED[path.stem]


def test_the_record_grid_is_the_committed_store():
    from bench.store import read_runs

    assert sorted(load_grid("record").run_ids()) == sorted(read_runs(RECORD_STORE)["run_id"])


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


RECIPE = """
    data.rgb: true
    vit: {arch: tiny, depth: 2}
    train: {lr: 0.01, epochs: 3, batch_size: 16}
"""


def test_a_recipe_expands_as_if_pasted_under_each_mappings_own_keys(tmp_path):
    write(tmp_path, "recipes/r.yaml", RECIPE)
    write(tmp_path, "recipes/more.yaml", "extends: r.yaml\ntrain.lr: 0.02\nbooster.source: minilm-l6\n")
    shared = write(tmp_path, "shared.yaml", """
        defaults: {extends: recipes/r.yaml, train: {epochs: 1}}
        runs:
          - {extends: [recipes/r.yaml, recipes/more.yaml], data.task: breastmnist, train.batch_size: 8}
          - {data.task: pneumoniamnist}
        variants:
          baseline: {booster.variant: baseline}
          adapters: {extends: recipes/more.yaml, booster.variant: adapters}
        include:
          - {variant: adapters, extends: recipes/more.yaml, data.task: dermamnist, train.lr: 0.03}
        seeds: [0, 1]
    """)
    pasted = write(tmp_path, "pasted.yaml", """
        defaults: {data.rgb: true, vit: {arch: tiny, depth: 2}, train: {lr: 0.01, epochs: 1, batch_size: 16}}
        runs:
          - {data.task: breastmnist, data.rgb: true, vit.arch: tiny, vit.depth: 2, train.lr: 0.02, train.epochs: 3,
             train.batch_size: 8, booster.source: minilm-l6}
          - {data.task: pneumoniamnist}
        variants:
          baseline: {booster.variant: baseline}
          adapters: {data.rgb: true, vit.arch: tiny, vit.depth: 2, train.lr: 0.02, train.epochs: 3, train.batch_size: 16,
                     booster.source: minilm-l6, booster.variant: adapters}
        include:
          - {variant: adapters, data.rgb: true, vit.arch: tiny, vit.depth: 2, train.lr: 0.03, train.epochs: 3,
             train.batch_size: 16, booster.source: minilm-l6, data.task: dermamnist}
        seeds: [0, 1]
    """)
    a, b = load_grid(str(shared)), load_grid(str(pasted))
    assert [c.label for c in a.runs] == [c.label for c in b.runs] and a.run_ids() == b.run_ids()
    assert len(a.runs) == 10  # (2 points x 2 variants + 1 included) x 2 seeds
    assert {c.train.epochs for c in a.runs if c.data.task == "pneumoniamnist" and c.label == "baseline"} == {1}


@pytest.mark.parametrize("recipes, entry, message", [
    ({}, "extends: recipes/nope.yaml", r"runs: extends recipes/nope.yaml, but .*nope.yaml does not exist; fix the path"),
    ({}, "extends: 3", r"'extends' names recipe files, e.g. extends: recipes/deit2d.yaml"),
    ({"recipes/a.yaml": "extends: b.yaml\n", "recipes/b.yaml": "extends: a.yaml\n"}, "extends: recipes/a.yaml",
     r"extends a.yaml, which extends itself \(g.yaml -> a.yaml -> b.yaml -> a.yaml\); remove the loop"),
    ({"recipes/a.yaml": "- train.lr: 1\n"}, "extends: recipes/a.yaml", r"a.yaml: a recipe is a mapping of config keys"),
    ({"recipes/a.yaml": "train.lr: fast\n"}, "extends: recipes/a.yaml", r"train.lr='fast' is not a valid float"),
])
def test_a_bad_recipe_fails_in_one_line(tmp_path, recipes, entry, message):
    for name, text in recipes.items():
        write(tmp_path, name, text)
    grid = write(tmp_path, "g.yaml", f"runs:\n  - {{{entry}, data.task: breastmnist}}\n")
    with pytest.raises(BenchError, match=message) as e:
        load_grid(str(grid))
    assert "\n" not in str(e.value)
