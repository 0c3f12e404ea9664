import textwrap

import pytest

from bench.config import run_id
from bench.errors import BenchError
from bench.grid import load_grid


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
