"""The report's answer to "does the pretrained layer help?": control contrasts, the primary interval, the MDE,
the reproduction rule, and the primary interval's coverage where the truth is known.

The store is run by `bench.run.run_all` on fixture data (ViT depth 1, 1 epoch, the tiny random LLaMA of
conftest, 3 seeds, protocol audit on) with every control of the record grid: baseline, adapters, mlp, rllm,
random-init, finetune and a layer-position arm (rllm-first). Expected values come from the stored rows through
independent computations: pairing by seed written out by hand, a hand-written Benjamini–Hochberg, scipy's
one-sample t, closed forms of the prediction interval, and a Monte Carlo of the interval's promise.
"""

from __future__ import annotations

import importlib.util
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests
import yaml
from scipy import stats

from bench.grid import load_grid
from bench.report import make_report
from bench.report.effects import finding
from bench.report.engine import primary
from bench.report.verdict import classify, prediction_interval
from bench.store import read_runs

SEEDS = (0, 1, 2)
VARIANTS = {"baseline": {"booster.variant": "baseline"}, "adapters": {"booster.variant": "adapters"},
            "mlp": {"booster.variant": "mlp"}, "rllm": {"booster.variant": "rllm"},
            "random-init": {"booster.variant": "rllm", "booster.init": "random"},
            "finetune": {"booster.variant": "rllm", "booster.freeze": "finetune"},
            "rllm-first": {"booster.variant": "rllm", "booster.layer": "first"}}


def bh(ps: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p, by statsmodels."""
    return list(multipletests(ps, method="fdr_bh")[1])


@pytest.fixture(scope="module")
def controls_store(tmp_path_factory, tiny_llm, one_thread):
    """(results, report folder, ok rows by label and seed) of the grid with every control, 3 seeds, 1 epoch."""
    from bench.data import write_fixture
    from bench.run import run_all

    base = tmp_path_factory.mktemp("controls")
    write_fixture(base / "medmnist", "breastmnist", 28, n=(48, 24, 64))
    spec = {"name": "controls", "description": "every control of an R-LLM arm",
            "defaults": {"data": {"task": "breastmnist", "size": 28}, "vit": {"arch": "tiny", "depth": 1, "patch": 7},
                         "booster": {"source": str(tiny_llm("llama"))},
                         "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 256, "warmup_epochs": 0,
                                   "audit_test": True}},
            "variants": VARIANTS, "seeds": list(SEEDS)}
    path = base / "controls.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_all(load_grid(str(path), {}).runs, base / "medmnist", base / "results", echo=lambda *_: None)
    folder = make_report(base / "results", base / "out", name="controls")
    rows = read_runs(base / "results")
    assert (rows["status"] == "ok").all() and len(rows) == len(VARIANTS) * len(SEEDS)
    return base / "results", folder, {lab: g.set_index("seed").sort_index() for lab, g in rows.groupby("label")}


def diffs(rows: dict, arm: str, comparator: str, m: str) -> list[float]:
    return [rows[arm][f"test_{m}"][s] - rows[comparator][f"test_{m}"][s] for s in SEEDS]


CONTRASTS = [("vs baseline", "rllm", "baseline"), ("vs capacity control", "rllm", "mlp"),
             ("vs random weights", "rllm", "random-init"), ("fine-tuned vs frozen", "finetune", "rllm"),
             ("vs baseline", "rllm-first", "baseline"), ("vs capacity control", "rllm-first", "mlp"),
             ("vs capacity control", "random-init", "mlp"), ("vs capacity control", "finetune", "mlp")]


def test_every_rllm_arm_is_paired_with_each_of_its_controls(controls_store):
    """effects.csv names the comparator; Δ is the mean of the per-seed differences; nothing else is paired."""
    _, folder, rows = controls_store
    eff = pd.read_csv(folder / "effects.csv", keep_default_na=False, na_values=["NaN"])
    got = {(r.contrast, r.label, r.comparator) for r in eff.itertuples()}
    expected = {(c, a, b) for c, a, b in CONTRASTS} | {("vs baseline", v, "baseline") for v in VARIANTS
                                                        if v != "baseline"}
    assert got == expected  # rllm-first has no random-init of its own; adapters controls no residual-in arm
    for contrast, arm, comparator in CONTRASTS:
        row = eff[(eff["contrast"] == contrast) & (eff["label"] == arm) & (eff["comparator"] == comparator)].iloc[0]
        for m in ("acc", "auc"):
            d = diffs(rows, arm, comparator, m)
            assert row[f"{m}_n"] == 3 and row[f"{m}_mean"] == pytest.approx(statistics.mean(d), abs=1e-12)
            if statistics.stdev(d) > 0:
                ci = stats.ttest_1samp(d, 0).confidence_interval(0.95)
                assert (row[f"{m}_ci_low"], row[f"{m}_ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
                assert row[f"{m}_low"] <= row[f"{m}_ci_low"] + 1e-12 and row[f"{m}_high"] >= row[f"{m}_ci_high"] - 1e-12
                assert row[f"{m}_image_sd"] > 0 and row[f"{m}_parts"] == "seeds+images"
    for m in ("acc", "auc"):  # Benjamini–Hochberg within each contrast's family, per metric
        for _, family in eff.groupby("contrast"):
            p = family[f"{m}_p"].dropna()
            assert family.loc[p.index, f"{m}_p_bh"].tolist() == pytest.approx(bh(p.tolist()), abs=1e-12)


def test_first_screen_answers_with_every_control(controls_store):
    """summary.md and index.html open with the findings: one row per R-LLM arm and metric, a word per control."""
    _, folder, rows = controls_store
    md = (folder / "summary.md").read_text()
    first = md.split("## Reproduction of Lai et al.")[0]
    assert "## Does the pretrained layer help?" in first and "Primary 95% interval (CI)" in first
    table = [line for line in first.splitlines() if line.startswith("| breastmnist")]
    assert len(table) == 4  # rllm and rllm-first (the controls are no rows of their own), x ACC and AUC
    eff = pd.read_csv(folder / "effects.csv", keep_default_na=False, na_values=["NaN"]).set_index(
        ["contrast", "label", "comparator"])
    for line in table:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        arm, m = cells[1], cells[2].lower()
        for contrast, cell in zip(("vs baseline", "vs capacity control", "vs random weights", "fine-tuned vs frozen"),
                                  cells[3:]):
            key = {"vs baseline": (contrast, arm, "baseline"), "vs capacity control": (contrast, arm, "mlp"),
                   "vs random weights": (contrast, arm, "random-init"),
                   "fine-tuned vs frozen": (contrast, "finetune", arm)}[contrast]
            if key not in eff.index:
                assert cell == "—" and arm == "rllm-first" and contrast in ("vs random weights", "fine-tuned vs frozen")
                continue
            r = eff.loc[key]
            assert cell.startswith(r[f"{m}_finding"] + ": ")
            mean = statistics.mean(diffs(rows, key[1], key[2], m))
            assert f"{mean:+.3f} " + (f"[{r[f'{m}_low']:+.3f}, " if r[f"{m}_low"] == r[f"{m}_low"] else "(n=3") in cell
            low, high = r[f"{m}_low"], r[f"{m}_high"]
            excludes = low == low and (low > 0 or high < 0)
            if m == "acc" and r["single"]:
                word = f"not interpretable ({r['single']})"
            elif r[f"{m}_p_bh"] < 0.05:
                word = "helps" if r[f"{m}_mean"] > 0 else "hurts"
            elif excludes:
                word = "higher" if r[f"{m}_mean"] > 0 else "lower"
            else:
                word = "no detectable effect"
            assert r[f"{m}_finding"].startswith(word) and cell.startswith(r[f"{m}_finding"])
            shown = re.search(r"\[([-+]\d\.\d{3}), ([-+]\d\.\d{3})\]", cell)  # the interval beside the words
            if shown:  # the words agree with it: an effect only where it excludes 0, 'no detectable' only where not
                lo, hi = float(shown[1]), float(shown[2])
                assert (lo, hi) == pytest.approx((low, high), abs=5e-4)
                if word.startswith(("helps", "hurts", "higher", "lower")):
                    assert low > 0 or high < 0
                if word == "no detectable effect":
                    assert low <= 0 <= high
            family = eff.xs(contrast, level="contrast")[f"{m}_p"].notna().sum()
            assert f"BH family of {family}" in cell
    html = (folder / "index.html").read_text()
    assert html.index("Does the pretrained layer help?</h2>") < html.index("Reproduction of Lai et al. (CVPRW 2024)</h2>")


def test_reproduction_rows_name_their_deviations(controls_store):
    _, folder, _ = controls_store
    v = pd.read_csv(folder / "verdicts.csv", keep_default_na=False, na_values=["NaN"])
    assert set(v["label"]) == {"rllm", "rllm-first"}  # Table 1 has no +MLP or fine-tuned BreastMNIST row
    assert set(v["scope"]) == {"analogous setting"}
    named = v.set_index("label")["deviations"]
    assert named.str.contains("backbone: vit.arch=tiny (paper small)", regex=False).all()
    assert named.str.contains("LLM: booster.source=tiny-llama0 (paper huggyllama/llama-7b)", regex=False).all()
    assert named.str.contains("recipe: ", regex=False).all() and not named.str.contains("size: ", regex=False).any()
    assert named["rllm-first"].str.contains("layer: booster.layer=first (paper -1)", regex=False).all()
    assert not named["rllm"].str.contains("layer: ", regex=False).any()
    assert set(v["verdict"]) <= {"consistent", "contradicted", "no spread"}
    md = (folder / "summary.md").read_text()
    assert "Multiplicity: each check's PI is at 95%, unadjusted" in md


def test_a_render_is_exactly_reproducible(controls_store, tmp_path):
    results, folder, _ = controls_store
    again = make_report(results, tmp_path, name="controls")
    for name in ("effects.csv", "verdicts.csv", "summary.csv", "summary.md", "summary.tex", "index.html",
                 "delta_auc.svg", "heatmap_auc.svg"):
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name


def test_identical_paired_differences_have_no_spread():
    """All runs predict the majority class: every Δ is 0; no interval, no MDE, and words that say why."""
    p = primary(3, 0.0, 0.0, False, 0.0)
    assert math.isnan(p["low"]) and math.isnan(p["mde"]) and p["mde_note"] == "no spread"
    assert finding(0.0, p["low"], p["high"], p["p"], p["mde"], p["mde_note"], 3) == "no detectable effect (MDE — : no spread)"
    assert finding(0.0, p["low"], p["high"], p["p"], p["mde"], p["mde_note"], 3, "6 of 6 runs predict one class") == \
        "not interpretable (6 of 6 runs predict one class)"
    assert primary(1, 0.01, np.nan, False, 1e-4)["mde_note"] == "n < 2"
    assert classify(0.02, *prediction_interval(3, 0.0, 0.0, False, 0.01), 3, False) == "no spread"
    assert classify(0.02, np.nan, np.nan, 1, False) == "inconclusive"


def test_primary_interval_is_the_paired_t_without_an_image_part_and_wider_with_one():
    d = np.array([0.013, -0.004, 0.021, 0.008])
    ci = stats.ttest_1samp(d, 0).confidence_interval(0.95)
    p = primary(4, d.mean(), d.std(ddof=1), True, np.nan)
    assert (p["low"], p["high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert p["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue, abs=1e-12)
    image = (3 * d.std(ddof=1)) ** 2  # image-dominated: Welch–Satterthwaite's df ~ (n-1) * 100
    q = primary(4, d.mean(), d.std(ddof=1), True, image)
    total = d.var(ddof=1) / 4 + image
    df = 3 * (total / (d.var(ddof=1) / 4)) ** 2
    assert q["df"] == pytest.approx(df) and q["high"] - d.mean() == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(total))


def test_a_published_run_equal_to_our_mean_is_consistent():
    d = np.array([0.02, 0.05, -0.01, 0.03, 0.01])
    lo, hi = prediction_interval(5, d.mean(), d.std(ddof=1), True, 0.0)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) * math.sqrt(1 + 1 / 5)
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)
    assert classify(d.mean(), lo, hi, 5) == "consistent"
    assert classify(hi + 1e-6, lo, hi, 5) == "contradicted"
    lo2, hi2 = prediction_interval(5, d.mean(), d.std(ddof=1), True, 0.02)  # the test-sampling part widens it
    assert lo2 < lo and hi2 > hi


def test_prediction_interval_holds_one_more_run_95_percent_of_the_time():
    """Its promise, by Monte Carlo: n runs give the PI, a fresh run falls inside it 95% of the time."""
    rng = np.random.default_rng(5)
    for n in (3, 5):
        runs = rng.normal(0.01, 0.02, size=(8000, n + 1))
        hits = 0
        for r in runs:
            lo, hi = prediction_interval(n, r[:n].mean(), r[:n].std(ddof=1), True, np.nan)
            hits += lo <= r[n] <= hi
        assert hits / len(runs) == pytest.approx(0.95, abs=0.008)


def _coverage_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "interval_coverage.py"
    spec = importlib.util.spec_from_file_location("interval_coverage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["seed-dominated", "image-dominated", "record"])
@pytest.mark.parametrize("n", [3, 5])
def test_primary_interval_covers_the_truth(n, regime):
    """Simulated studies whose true Δ is known in closed form (benchmarks/interval_coverage.py): the primary
    interval covers it 95% of the time, neither less nor more (nothing counted twice), with 3 and 5 seeds, seed- or
    image-dominated or as the record's BreastMNIST cells; 1000 studies: ±0.025 is 3.6 Monte Carlo se."""
    cov = _coverage_module().coverage(n, regime, studies=1000, replicates=200)
    assert 0.925 <= min(cov["primary"]) and max(cov["primary"]) <= 0.975, cov
