"""bench.report on synthetic stores: exact statistics, half grids, failed runs, errors and the page.

Expected numbers are computed here by hand (stdlib statistics, the closed-form t distribution with
2 degrees of freedom, a hand-written Benjamini–Hochberg), not with the code under test.
"""

from __future__ import annotations

import math
import re
import shutil
import statistics
import subprocess

import pandas as pd
import pytest
from report_helpers import config, row, store

from bench.errors import BenchError
from bench.report import expected_runs, make_report
from bench.report.published import load_published
from bench.store import write_run

RLLM = {"booster.variant": "rllm"}
# task -> label -> seed -> (acc, auc); seed 3 of dermamnist rllm has no ok baseline (its baseline failed)
VALUES = {
    "breastmnist": {"baseline": {0: (0.70, 0.80), 1: (0.75, 0.82), 2: (0.77, 0.84)},
                    "rllm": {0: (0.72, 0.85), 1: (0.74, 0.88), 2: (0.80, 0.895)},
                    "res_out": {0: (0.71, 0.79)}},
    "dermamnist": {"baseline": {0: (0.60, 0.70), 1: (0.66, 0.71), 2: (0.65, 0.75)},
                   "rllm": {0: (0.61, 0.72), 1: (0.67, 0.745), 2: (0.69, 0.74), 3: (0.50, 0.60)},
                   "res_out": {0: (0.62, 0.69)}},
}
SETS = {"baseline": {}, "rllm": RLLM, "adapters": {"booster.variant": "adapters"},
        "res_out": {**RLLM, "booster.residual": "out"}}
T975_DF2 = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom


def p_two_sided_df2(t: float) -> float:
    """Two-sided p of Student's t with 2 df: the CDF is 1/2 + t / (2 sqrt(2 + t^2))."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def bh(ps: list[float]) -> list[float]:
    order = sorted(range(len(ps)), key=ps.__getitem__)
    out, running = [0.0] * len(ps), 1.0
    for rank in range(len(ps), 0, -1):
        running = min(running, ps[order[rank - 1]] * len(ps) / rank)
        out[order[rank - 1]] = running
    return out


@pytest.fixture(scope="module")
def half_grid(tmp_path_factory):
    """A grid of 27 planned runs: 15 ok, 2 failed (one with a stray metric), 10 never stored."""
    results = tmp_path_factory.mktemp("results")
    planned = []
    for task, labels in VALUES.items():
        for label in ("baseline", "rllm", "adapters", "res_out"):
            for seed in range(4 if label in ("baseline", "rllm") else 3):
                cfg = config(task, label, seed, **SETS[label])
                planned.append(cfg)
                if seed in labels.get(label, {}):
                    store(results, cfg, *labels[label][seed])
    failed = row(config("breastmnist", "rllm", 3, **RLLM), status="failed", error="RuntimeError: CUDA out of memory")
    write_run(results, {**failed, "test_auc": 0.99, "test_acc": 0.99})  # a failed run's numbers never count
    store(results, config("dermamnist", "baseline", 3), status="failed", error="killed by signal 9")
    planned = [c for c in planned if not (c.data.task == "breastmnist" and c.label == "baseline" and c.seed == 3)]
    folder = make_report(results, tmp_path_factory.mktemp("out"), name="half", expected=expected_runs(planned))
    csv = pd.read_csv(folder / "summary.csv").set_index(["task", "label"])
    return folder, csv


def test_means_and_sample_stds_are_exact(half_grid):
    _, csv = half_grid
    for task, labels in VALUES.items():
        for label in ("baseline", "rllm"):
            seeds = labels[label]
            for i, m in enumerate(("acc", "auc")):
                vals = [v[i] for v in seeds.values()]
                assert csv.loc[(task, label), f"{m}_n"] == len(vals)
                assert csv.loc[(task, label), f"{m}_mean"] == pytest.approx(statistics.mean(vals), abs=1e-12)
                assert csv.loc[(task, label), f"{m}_std"] == pytest.approx(statistics.stdev(vals), abs=1e-12)
    one = csv.loc[("breastmnist", "res_out")]
    assert one["auc_n"] == 1 and one["auc_mean"] == pytest.approx(0.79) and math.isnan(one["auc_std"])


def test_paired_deltas_cis_and_bh_pvalues_are_exact(half_grid):
    _, csv = half_grid
    raw, where = [], []
    for task in VALUES:
        base, var = VALUES[task]["baseline"], VALUES[task]["rllm"]
        for i, m in enumerate(("acc", "auc")):
            d = [var[s][i] - base[s][i] for s in (0, 1, 2)]  # seed 3 of dermamnist has no ok baseline
            mean, se = statistics.mean(d), statistics.stdev(d) / math.sqrt(3)
            got = csv.loc[(task, "rllm")]
            assert got[f"delta_{m}_n_pairs"] == 3
            assert got[f"delta_{m}_mean"] == pytest.approx(mean, abs=1e-12)
            assert got[f"delta_{m}_ci_low"] == pytest.approx(mean - T975_DF2 * se, abs=1e-9)
            assert got[f"delta_{m}_ci_high"] == pytest.approx(mean + T975_DF2 * se, abs=1e-9)
            assert got[f"delta_{m}_p"] == pytest.approx(p_two_sided_df2(mean / se), abs=1e-9)
            raw.append(p_two_sided_df2(mean / se))
            where.append((task, m))
    adjusted = bh(raw)  # the single-pair res_out cells add no p-value
    assert len(set(round(p, 6) for p in adjusted)) == 3 and adjusted != raw  # the adjustment is not trivial
    for (task, m), p_bh in zip(where, adjusted):
        assert csv.loc[(task, "rllm"), f"delta_{m}_p_bh"] == pytest.approx(p_bh, abs=1e-9)


def test_one_pair_gives_a_delta_but_no_ci_or_p(half_grid):
    _, csv = half_grid
    got = csv.loc[("breastmnist", "res_out")]
    assert got["delta_auc_n_pairs"] == 1
    assert got["delta_auc_mean"] == pytest.approx(0.79 - 0.80)
    assert all(math.isnan(got[f"delta_auc_{k}"]) for k in ("ci_low", "ci_high", "p", "p_bh"))


def test_missing_cells_stay_missing_and_are_counted(half_grid):
    folder, csv = half_grid
    for task in VALUES:
        cell = csv.loc[(task, "adapters")]
        assert (cell["planned"], cell["ok"], cell["missing"], cell["auc_n"]) == (3, 0, 3, 0)
        assert math.isnan(cell["auc_mean"]) and math.isnan(cell["acc_mean"]) and not cell["best_auc"]
        assert cell["delta_auc_n_pairs"] == 0 and math.isnan(cell["delta_auc_mean"])
    md = (folder / "summary.md").read_text()
    assert "27 planned: 15 ok, 2 failed, 10 missing" in md
    assert "— (0/3 runs ok)" in md and "10 missing runs" in md
    assert "0.000" not in md.split("## Comparison")[0]  # nothing missing was turned into a zero


def test_failed_runs_are_listed_with_their_error_and_not_counted(half_grid):
    folder, csv = half_grid
    assert csv.loc[("breastmnist", "rllm"), "failed"] == 1
    assert csv.loc[("breastmnist", "rllm"), "auc_n"] == 3  # the failed run's 0.99 is not in the mean
    for page in ("summary.md", "index.html"):
        text = (folder / page).read_text()
        assert "RuntimeError: CUDA out of memory" in text and "killed by signal 9" in text
    assert "(n=3; 3/4 runs ok)" in (folder / "summary.md").read_text()
    assert "1 ok variant runs without an ok baseline" in (folder / "summary.md").read_text()


def test_best_per_task_is_marked(half_grid):
    folder, csv = half_grid
    assert csv.loc[("breastmnist", "rllm"), "best_auc"] and not csv.loc[("breastmnist", "baseline"), "best_auc"]
    assert "**0.875 ± 0.023 (n=3; 3/4 runs ok)**" in (folder / "summary.md").read_text()


def test_every_output_is_written_and_html_references_only_existing_files(half_grid):
    folder, _ = half_grid
    for name in ("summary.md", "summary.tex", "summary.csv", "index.html", "delta_auc.png", "delta_auc.svg",
                 "heatmap_auc.png", "val_auc.png"):
        assert (folder / name).stat().st_size > 0, name
    page = (folder / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert any(r.endswith(".png") for r in refs)
    assert all(":" not in r and (folder / r).is_file() for r in refs), refs
    tex = (folder / "summary.tex").read_text()
    body = [line for line in tex.splitlines() if not line.startswith("%")]
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and all(line.isascii() for line in body)


def test_published_numbers_carry_their_source(half_grid):
    folder, _ = half_grid
    pub = load_published()
    assert pub[["source", "table", "url"]].notna().all().all()
    assert set(pub["url"].str[:8]) == {"https://"}
    md = (folder / "summary.md").read_text()
    assert "| breastmnist · 28 | ResNet-18 (28) | 0.863 | 0.901 |" in md
    assert "Not shipped: Lai et al." in md


def test_empty_or_unrelated_store_is_a_one_line_error(tmp_path):
    with pytest.raises(BenchError, match="no runs stored") as e:
        make_report(tmp_path / "nothing", tmp_path / "out")
    assert "\n" not in str(e.value)
    store(tmp_path / "r", config("breastmnist", "baseline", 0), 0.7, 0.8)
    with pytest.raises(BenchError, match="none of the 1 planned runs"):
        make_report(tmp_path / "r", tmp_path / "out", expected=expected_runs([config("dermamnist", "baseline", 0)]))
    with pytest.raises(BenchError, match="metric"):
        make_report(tmp_path / "r", tmp_path / "out", metric="f1")


def test_single_run_and_empty_label(tmp_path):
    results = tmp_path / "r"
    store(results, config("organmnist3d", "", 0, **RLLM), 0.6, 0.9, label="", history=False)
    folder = make_report(results, tmp_path / "out")
    csv = pd.read_csv(folder / "summary.csv")
    assert list(csv["label"]) == ["rllm"] and csv.loc[0, "auc_mean"] == pytest.approx(0.9)
    md = (folder / "summary.md").read_text()
    assert "1 stored (no grid given: every stored run): 1 ok, 0 failed, 0 missing" in md
    assert "Δ test AUC vs baseline: skipped" in md and "Validation AUC per epoch: skipped" in md
    assert "Optuna" not in md


def test_a_label_spanning_several_llm_settings_uses_seeds_as_replicates(tmp_path):
    """Two layers under one label: each seed's value is their mean; n and the pairs count seeds."""
    results, base, a, b = tmp_path / "r", [0.80, 0.82, 0.81], [0.83, 0.86, 0.80], [0.85, 0.84, 0.86]
    for seed in range(3):
        store(results, config("breastmnist", "baseline", seed), 0.7, base[seed], history=False)
        for layer, auc in ((0, a[seed]), (2, b[seed])):
            store(results, config("breastmnist", "rllm", seed, **RLLM, **{"booster.layer": layer}), 0.7, auc,
                  history=False)
    csv = pd.read_csv(make_report(results, tmp_path / "out") / "summary.csv").set_index("label")
    per_seed = [(x + y) / 2 for x, y in zip(a, b)]
    d = [v - w for v, w in zip(per_seed, base)]
    got = csv.loc["rllm"]
    assert (got["ok"], got["auc_n"], got["delta_auc_n_pairs"]) == (6, 3, 3)
    assert got["auc_mean"] == pytest.approx(statistics.mean(per_seed), abs=1e-12)
    assert got["auc_std"] == pytest.approx(statistics.stdev(per_seed), abs=1e-12)
    se = statistics.stdev(d) / math.sqrt(3)
    assert got["delta_auc_mean"] == pytest.approx(statistics.mean(d), abs=1e-12)
    assert got["delta_auc_p"] == pytest.approx(p_two_sided_df2(statistics.mean(d) / se), abs=1e-9)


def test_ablations_layer_and_llm_curves_and_optuna(tmp_path):
    optuna = pytest.importorskip("optuna")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    results = tmp_path / "r"
    for seed in (0, 1):
        store(results, config("breastmnist", "baseline", seed), 0.70, 0.80 + seed / 100)
        for layer in (0, 2, -1):
            store(results, config("breastmnist", f"layer{layer}", seed, **RLLM, **{"booster.layer": layer}),
                  0.71, 0.81 + layer / 100 + seed / 100)
        store(results, config("breastmnist", "causal", seed, **RLLM, **{"booster.mask": "causal"}), 0.7, 0.79)
        store(results, config("breastmnist", "llama", seed, **RLLM, **{"booster.source": "llama-7b"}), 0.72, 0.83)
    (results / "optuna").mkdir()
    storage = JournalStorage(JournalFileBackend(str(results / "optuna" / "lr.log")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="lr", storage=storage, direction="maximize")
    study.optimize(lambda t: -abs(t.suggest_float("lr", 1e-4, 1e-1, log=True) - 0.01), n_trials=5)

    folder = make_report(results, tmp_path / "out", name="abl", metric="acc")
    md = (folder / "summary.md").read_text()
    assert "Ablation: mask (booster.mask)" in md and "Ablation: LLM layer index (llm.layers)" in md
    assert "Ablation: LLM (llm)" in md and "Ablation: residual" not in md
    layer_table = md.split("Ablation: LLM layer index")[1].split("###")[0]
    assert "| 0 | 2 | 5 |" in layer_table  # layer -1 of the 6-layer MiniLM resolves to 5
    for stem in ("layer_acc", "llm_size_acc", "delta_acc", "optuna_lr_lr_history"):
        assert (folder / f"{stem}.png").is_file() and (folder / f"{stem}.svg").is_file(), stem


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(half_grid, tmp_path):
    folder, _ = half_grid
    shot = tmp_path / "page.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,2000",
           (folder / "index.html").as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1400)
    top = pixels[:1000]
    assert top.std() > 0.05  # not a blank page
    assert (top.mean(axis=2) < 0.5).mean() > 0.01  # dark text and table rules in the upper half
