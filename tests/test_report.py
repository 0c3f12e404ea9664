"""bench.report on stores written by the real runner: exact statistics, per-arm pairing, bootstrap, MDE,
Lai et al. verdicts, missing and failed runs, errors and the page.

One module-scoped store: a grid run by `bench.run.run_all` on fixture data (ViT depth 1, 2 epochs, the tiny
random LLaMA of conftest at layers 0 and 1, protocol audit on), one seed of `adapters` failing, and a fourth
seed planned but never run. Expected numbers come from the stored rows, histories and predictions through
independent computations: stdlib statistics, the closed-form t with 2 df, a hand-written Benjamini–Hochberg,
statsmodels' power solver, and a brute-force bootstrap through `bench.metrics.evaluate`.
"""

from __future__ import annotations

import math
import re
import shutil
import statistics
import subprocess

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests
import yaml

from bench.errors import BenchError
from bench.grid import load_grid
from bench.metrics import evaluate
from bench.report import expected_runs, make_report
from bench.report.bootstrap import Scorer
from bench.report.published import load_published
from bench.store import read_history, read_predictions, read_runs
from scipy.stats import t as scipy_t

T975_DF2 = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom
SEEDS = (0, 1, 2)


def p_two_sided_df2(t: float) -> float:
    """Two-sided p of Student's t with 2 df: the CDF is 1/2 + t / (2 sqrt(2 + t^2))."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def bh(ps: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p, by statsmodels."""
    return list(multipletests(ps, method="fdr_bh")[1])


def grid_file(tmp, llm, seeds, audit=True, source=None, task="breastmnist", vit="depth: 1, patch: 7", epochs=2):
    spec = {
        "name": "rep", "description": "report tests",
        "defaults": {"data": {"task": task, "size": 28}, "vit": yaml.safe_load("{arch: tiny, " + vit + "}"),
                     "booster": {"source": source or str(llm)},
                     "train": {"epochs": epochs, "batch_size": 16, "eval_batch_size": 256, "warmup_epochs": 0,
                               "audit_test": audit}},
        "axes": {"booster.layer": [0, -1]},
        "variants": {"baseline": {"booster.variant": "baseline"}, "adapters": {"booster.variant": "adapters"},
                     "rllm": {"booster.variant": "rllm"}},
        "seeds": list(seeds),
    }
    path = tmp / f"rep-{len(seeds)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, tiny_llm):
    """(results, report folder, rows) of the grid run for seeds 0-2, reported against a plan with seeds 0-3."""
    import torch

    import bench.train
    from bench.data import write_fixture
    from bench.run import run_all

    base = tmp_path_factory.mktemp("report-store")
    write_fixture(base / "medmnist", "breastmnist", 28, n=(48, 24, 64))
    llm = tiny_llm("llama")
    ran = load_grid(str(grid_file(base, llm, SEEDS)), {})
    plan = load_grid(str(grid_file(base, llm, SEEDS + (3,))), {})
    results = base / "results"
    real_fit = bench.train.fit

    def fit_failing_one_seed(cfg, *a, **k):
        if cfg.booster.variant == "adapters" and cfg.seed == 1:
            raise RuntimeError("disk on fire")
        return real_fit(cfg, *a, **k)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(bench.train, "fit", fit_failing_one_seed)
            run_all(ran.runs, base / "medmnist", results, echo=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    folder = make_report(results, base / "out", name="rep", expected=expected_runs(plan))
    return results, folder, read_runs(results)


def by(rows, variant, layer=None, status="ok"):
    sel = rows[(rows["booster.variant"] == variant) & (rows["status"] == status)]
    if layer is not None:
        sel = sel[sel["booster.layer"].astype(str) == str(layer)]
    return sel.set_index("seed").sort_index()


def test_store_is_the_runners_and_has_failed_and_missing_runs(real_store):
    results, folder, rows = real_store
    assert len(by(rows, "baseline")) == 3 and len(by(rows, "rllm", 0)) == 3 and len(by(rows, "rllm", -1)) == 3
    failed = by(rows, "adapters", status="failed")
    assert list(failed.index) == [1] and "disk on fire" in failed["error"].iloc[0]
    md = (folder / "summary.md").read_text()
    planned, ok = 4 * 4, 3 * 3 + 2  # baseline, adapters, rllm x 2 layers; per seed
    assert f"{planned} planned: {ok} ok, 1 failed, {planned - ok - 1} missing" in md
    for page in ("summary.md", "index.html"):
        assert "disk on fire" in (folder / page).read_text()


def test_means_and_sample_stds_are_exact(real_store):
    _, folder, rows = real_store
    csv = pd.read_csv(folder / "summary.csv").set_index("label")
    for m in ("acc", "auc"):
        base = by(rows, "baseline")[f"test_{m}"]
        assert csv.loc["baseline", f"{m}_n"] == 3
        assert csv.loc["baseline", f"{m}_mean"] == pytest.approx(statistics.mean(base), abs=1e-12)
        assert csv.loc["baseline", f"{m}_std"] == pytest.approx(statistics.stdev(base), abs=1e-12)
        per_seed = [(by(rows, "rllm", 0)[f"test_{m}"][s] + by(rows, "rllm", -1)[f"test_{m}"][s]) / 2 for s in SEEDS]
        assert csv.loc["rllm", f"{m}_mean"] == pytest.approx(statistics.mean(per_seed), abs=1e-12)
        adapters = by(rows, "adapters")[f"test_{m}"]  # the failed seed is not in it
        assert csv.loc["adapters", f"{m}_n"] == 2
        assert csv.loc["adapters", f"{m}_mean"] == pytest.approx(statistics.mean(adapters), abs=1e-12)
    assert (csv.loc["adapters", "failed"], csv.loc["adapters", "missing"]) == (1, 1)


def arm_diffs(rows, layer, m):
    base, var = by(rows, "baseline"), by(rows, "rllm", layer)
    return [var[f"test_{m}"][s] - base[f"test_{m}"][s] for s in SEEDS]


def test_each_arm_is_paired_with_its_own_baseline_exactly(real_store):
    """One row per LLM layer (not their mean), the seed-only paired-t CI and p in closed form, BH per metric family."""
    _, folder, rows = real_store
    eff = pd.read_csv(folder / "effects.csv")
    rllm = eff[eff["label"] == "rllm"].set_index("arm")
    assert sorted(rllm.index) == ["layer=-1", "layer=0"]
    spread = 0  # arms whose seeds differ: the CI and p checks below must run, not only the zero-spread branch
    for m in ("acc", "auc"):
        for layer in (0, -1):
            d = arm_diffs(rows, layer, m)
            got = rllm.loc[f"layer={layer}"]
            mean, sd = statistics.mean(d), statistics.stdev(d)
            assert got[f"{m}_n"] == 3 and got[f"{m}_mean"] == pytest.approx(mean, abs=1e-12)
            if sd == 0:
                assert math.isnan(got[f"{m}_ci_low"]) and math.isnan(got[f"{m}_p_t"])
                continue
            spread += 1
            se = sd / math.sqrt(3)
            assert got[f"{m}_ci_low"] == pytest.approx(mean - T975_DF2 * se, abs=1e-9)
            assert got[f"{m}_ci_high"] == pytest.approx(mean + T975_DF2 * se, abs=1e-9)
            assert got[f"{m}_p_t"] == pytest.approx(p_two_sided_df2(mean / se), abs=1e-9)
        family = eff[f"{m}_p"].dropna().tolist()  # this metric's p-values only (all: vs baseline here)
        assert set(eff["contrast"]) == {"vs baseline"}
        assert eff[f"{m}_p_bh"].dropna().tolist() == pytest.approx(bh(family), abs=1e-12)
    assert spread > 0


def test_minimum_detectable_effect_matches_statsmodels(real_store):
    """MDE of the primary test: power 0.8 at α = 0.05 with its se and df (statsmodels: nobs = df + 1)."""
    from statsmodels.stats.power import TTestPower

    _, folder, rows = real_store
    eff = pd.read_csv(folder / "effects.csv")
    rllm = eff[eff["label"] == "rllm"].set_index("arm")
    for m in ("acc", "auc"):
        for layer in (0, -1):
            got = rllm.loc[f"layer={layer}"]
            sd = statistics.stdev(arm_diffs(rows, layer, m))
            if sd == 0:
                assert math.isnan(got[f"{m}_mde"]) and got[f"{m}_mde_note"] == "no spread"
                continue
            seed, img = sd ** 2 / 3, got[f"{m}_image_shared_sd"] ** 2
            df = 2 * (1 + img / seed) ** 2
            assert got[f"{m}_df"] == pytest.approx(df, rel=1e-9)
            power = TTestPower()
            es = power.solve_power(nobs=df + 1, alpha=0.05, power=0.8, alternative="two-sided")
            seeds_only = power.solve_power(nobs=3, alpha=0.05, power=0.8, alternative="two-sided") * sd
            assert got[f"{m}_mde"] == pytest.approx(max(es * math.sqrt(df + 1) * math.sqrt(seed + img), seeds_only),
                                                    rel=1e-5)
    md = (folder / "summary.md").read_text()
    assert "MDE α=0.05 (AUC)" in md.split("## Paired contrasts\n")[1] and "α = 0.05 unadjusted" in md


def test_weighted_metrics_equal_medmnist_on_resampled_images(real_store):
    results, _, rows = real_store
    rng = np.random.default_rng(7)
    for rid in by(rows, "rllm", 0)["run_id"]:
        p = read_predictions(results, rid)
        scorer = Scorer.of("binary-class", p["y_true"], p["y_score"])
        idx = rng.integers(len(p["y_true"]), size=(5, len(p["y_true"])))
        weights = np.stack([np.bincount(i, minlength=len(p["y_true"])) for i in idx], 1).astype(float)
        acc, auc = scorer.metrics(weights)
        for j, i in enumerate(idx):
            assert (acc[j], auc[j]) == pytest.approx(evaluate("binary-class", p["y_true"][i], p["y_score"][i]), abs=1e-12)


def test_image_part_matches_a_brute_force_shared_resampling(real_store):
    """One resample of the test images per replicate, the same for every seed's two runs, through medmnist's
    metric; the part the seeds share is the mean covariance between two seeds' resampled Δs; the primary interval
    is Δ ± t(df) sqrt(s²/n + c) with Welch–Satterthwaite's df, or the seed-only t."""
    results, folder, rows = real_store
    eff = pd.read_csv(folder / "effects.csv")
    got = eff[(eff["label"] == "rllm") & (eff["arm"] == "layer=0")].iloc[0]
    base, var = by(rows, "baseline"), by(rows, "rllm", 0)
    preds = [(read_predictions(results, var["run_id"][s]), read_predictions(results, base["run_id"][s])) for s in SEEDS]
    n_img = len(preds[0][0]["y_true"])
    rng = np.random.default_rng(123)
    reps = {"acc": [], "auc": []}
    for _ in range(1500):
        i = rng.integers(n_img, size=n_img)
        scores = [[evaluate("binary-class", p["y_true"][i], p["y_score"][i]) for p in pair] for pair in preds]
        reps["acc"].append([v[0] - b[0] for v, b in scores])
        reps["auc"].append([v[1] - b[1] for v, b in scores])
    for k, m in enumerate(("acc", "auc")):
        per_seed = np.array(reps[m])  # (replicates, seeds)
        sd = np.nanstd(np.nanmean(per_seed, axis=1), ddof=1)
        assert sd > 0 and got[f"{m}_image_sd"] == pytest.approx(sd, rel=0.12)
        cov = np.ma.cov(np.ma.masked_invalid(per_seed), rowvar=False).filled(np.nan)
        shared = max(0.0, np.nanmean(cov[~np.eye(len(SEEDS), dtype=bool)]))
        assert got[f"{m}_image_shared_sd"] ** 2 == pytest.approx(shared, abs=0.15 * sd ** 2)
        d = arm_diffs(rows, 0, m)
        seed = statistics.variance(d) / 3
        if seed == 0:
            continue
        img = got[f"{m}_image_shared_sd"] ** 2
        df = 2 * (1 + img / seed) ** 2
        half = max(scipy_t.ppf(0.975, df) * math.sqrt(seed + img), T975_DF2 * math.sqrt(seed))
        assert (got[f"{m}_low"], got[f"{m}_high"]) == pytest.approx((statistics.mean(d) - half, statistics.mean(d) + half),
                                                                  abs=1e-9)
        assert got[f"{m}_high"] - got[f"{m}_low"] >= got[f"{m}_ci_high"] - got[f"{m}_ci_low"]  # never narrower
    md = (folder / "summary.md").read_text()
    assert "default_rng([2024, crc32" in md and "1000 resamples of the test images" in md


def test_verdicts_use_the_papers_protocol_from_the_audit_history(real_store):
    """Table 1 BreastMNIST claims vs a prediction interval for one of our runs under the paper's protocol."""
    results, folder, rows = real_store
    v = pd.read_csv(folder / "verdicts.csv", keep_default_na=False, na_values=["NaN"])
    eff = pd.read_csv(folder / "effects.csv")
    hist = read_history(results, list(rows.loc[rows["status"] == "ok", "run_id"]))
    best = hist.groupby("run_id")[["test_acc", "test_auc"]].max()
    claimed = {"auc": 0.8823 - 0.8617, "acc": 0.8717 - 0.8717}  # Lai et al. Table 1, BreastMNIST, ViT-S
    spread = 0  # verdicts judged on an interval: they must be checked, not only the zero-spread ones
    for m, paper in claimed.items():
        for layer in (0, -1):
            row = v[(v["metric"] == m) & (v["arm"] == f"layer={layer}") & (v["variant"] == "rllm")]
            assert len(row) == 1
            row = row.iloc[0]
            assert row["paper_delta"] == pytest.approx(paper, abs=1e-12) and row["backbone"] == "other (vit.arch=tiny)"
            assert row["scope"] == "analogous setting"
            for named in ("LLM: booster.source=", "backbone: vit.arch=tiny (paper small)", "recipe: "):
                assert named in row["deviations"]
            base, var = by(rows, "baseline"), by(rows, "rllm", layer)
            d = [best.loc[var["run_id"][s], f"test_{m}"] - best.loc[base["run_id"][s], f"test_{m}"] for s in SEEDS]
            mean, sd = statistics.mean(d), statistics.stdev(d)
            assert row["audit_mean"] == pytest.approx(mean, abs=1e-12)
            assert row["audit_value"] == pytest.approx(statistics.mean(best.loc[var["run_id"], f"test_{m}"]), abs=1e-12)
            assert row["honest_value"] == pytest.approx(statistics.mean(var[f"test_{m}"]), abs=1e-12)
            if sd == 0:
                assert row["verdict"] == "no spread" and math.isnan(row["pi_low"])
                continue
            spread += 1
            img1 = eff[(eff["label"] == "rllm") & (eff["arm"] == f"layer={layer}")][f"{m}_image_sd1"].iloc[0] ** 2
            seed = sd ** 2 * (1 + 1 / 3)
            half = scipy_t.ppf(0.975, 2 * ((seed + img1) / seed) ** 2) * math.sqrt(seed + img1)
            assert (row["pi_low"], row["pi_high"]) == pytest.approx((mean - half, mean + half), abs=1e-9)
            assert row["verdict"] == ("consistent" if mean - half <= paper <= mean + half else "contradicted")
    assert spread > 0
    md = (folder / "summary.md").read_text()
    first = md.split("## Runs")[0]  # the first screen: findings, verdicts and the audit, before anything else
    assert first.index("## Does the pretrained layer help?") < first.index("## Reproduction of Lai et al.")
    assert "contradicted = the PI excludes the paper's Δ" in first and "no spread = our n paired Δs" in first
    assert "Reproduction (the paper's own setting in every field): 0 claim checks" in first
    assert "Protocol audit: published vs ours under the paper's protocol vs ours honest" in first
    assert "| 0.8823 |" in first  # Table 1's R-LLM AUC on BreastMNIST beside ours


def test_layer_ablation_is_a_paired_delta_per_layer(real_store):
    _, folder, rows = real_store
    md = (folder / "summary.md").read_text()
    table = md.split("Ablation: LLM layer index")[1].split("###")[0]
    assert "paired Δ test AUC" in table
    for layer, name in ((0, "0"), (-1, "1")):  # the tiny LLaMA has 2 layers: -1 resolves to 1
        assert name in table.splitlines()[2]
        assert f"{statistics.mean(arm_diffs(rows, layer, 'auc')):+.3f}" in table


def test_missing_cells_stay_missing(real_store):
    _, folder, _ = real_store
    md = (folder / "summary.md").read_text()
    assert "missing runs (planned, not stored)" in md
    assert "(n=3; 3/4 runs ok)" in md and "(n=2; 2/4 runs ok)" in md
    summary = md.split("## Paired effects")[0].split("## Summary")[1]
    assert "0.000 ±" not in summary


def test_every_output_is_written_and_html_references_only_existing_files(real_store):
    _, folder, _ = real_store
    for name in ("summary.md", "summary.tex", "summary.csv", "effects.csv", "verdicts.csv", "index.html",
                 "delta_auc.png", "delta_auc.svg", "heatmap_auc.png", "val_auc.png", "layer_auc.png"):
        assert (folder / name).stat().st_size > 0, name
    page = (folder / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert any(r.endswith(".png") for r in refs)
    assert all(":" not in r and (folder / r).is_file() for r in refs), refs
    tex = (folder / "summary.tex").read_text()
    body = [line for line in tex.splitlines() if not line.startswith("%")]
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and all(line.isascii() for line in body)


def test_published_numbers_carry_lai_et_al_tables_1_to_6_with_sources(real_store):
    pub = load_published()
    lai = pub[pub["source"].str.startswith("Lai et al.")]
    assert len(lai) == 178 and set(lai["table"]) == {f"Table {i}" for i in range(1, 7)}
    assert pub[["source", "table", "url", "read_via"]].astype(bool).all().all()
    assert set(pub["url"].str[:8]) == {"https://"}
    flagged = lai[lai["note"] != ""]  # 0.5357 is no count out of Fracture's 240 test volumes
    assert list(flagged["value"]) == [0.5357] and all(round(c / 240, 4) != 0.5357 for c in range(241))
    _, folder, _ = real_store
    md = (folder / "summary.md").read_text()
    cmp = md.split("## Comparison with published numbers")[1]
    assert "| breastmnist | ViT-S | baseline | 0.8717 | 0.8617 | Lai et al., Table 1 |" in cmp
    assert "| breastmnist | ResNet-18 (28) | other | 0.8630 | 0.9010 |" in cmp


def test_empty_or_unrelated_store_is_a_one_line_error(real_store, tmp_path):
    results, _, rows = real_store
    with pytest.raises(BenchError, match="no runs stored") as e:
        make_report(tmp_path / "nothing", tmp_path / "out")
    assert "\n" not in str(e.value)
    other = load_grid("ci", {})
    with pytest.raises(BenchError, match="none of the .* planned runs"):
        make_report(results, tmp_path / "out", expected=expected_runs(other.runs[:1]))
    with pytest.raises(BenchError, match="metric"):
        make_report(results, tmp_path / "out", metric="f1")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(real_store, tmp_path):
    _, folder, _ = real_store
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


@pytest.mark.slow
def test_minilm_layers_on_real_breastmnist(shared_data, tmp_path):
    """Two MiniLM layers x 3 seeds with their baselines on the real BreastMNIST: per-layer paired rows,
    primary and seed-only intervals, the detectable effect and the verdict rows."""
    import torch

    from bench.run import run_all

    grid = load_grid(str(grid_file(tmp_path, None, SEEDS, source="minilm-l6", vit="depth: 2", epochs=1)), {})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_all([c for c in grid.runs if c.booster.variant != "adapters"], shared_data, tmp_path / "results",
                echo=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    folder = make_report(tmp_path / "results", tmp_path / "out", name="minilm")
    eff = pd.read_csv(folder / "effects.csv")
    rllm = eff[eff["label"] == "rllm"]
    assert sorted(rllm["arm"]) == ["layer=-1", "layer=0"] and (rllm["auc_n"] == 3).all()
    assert rllm[["auc_ci_low", "auc_low", "auc_high", "auc_image_sd", "auc_mde"]].notna().all().all()
    v = pd.read_csv(folder / "verdicts.csv")
    assert len(v) == 4 and set(v["verdict"]) <= {"consistent", "contradicted", "inconclusive", "no spread"}
    md = (folder / "summary.md").read_text()
    assert "layer=0" in md and "layer=-1" in md and "paired t, seeds only" in md and "Reproduction verdicts" in md


def test_bootstrap_spread_over_processes_gives_the_same_intervals(real_store, tmp_path, monkeypatch):
    """A big store's bootstrap rows run in worker processes; each row's draws depend only on its key, so the
    intervals equal the one-process report's (here: every row its own job)."""
    import bench.report.effects as effects

    results, folder, _ = real_store
    monkeypatch.setattr(effects, "BOOTSTRAP_ROWS_PER_JOB", 1)
    again = make_report(results, tmp_path, name="rep")
    one, spread = pd.read_csv(folder / "effects.csv"), pd.read_csv(again / "effects.csv")
    boot = [c for c in one.columns if "_image_sd" in c]
    assert one[boot].notna().any().all()
    pd.testing.assert_frame_equal(one[boot], spread[boot])


def test_a_setting_names_a_row_only_where_it_splits_runs_of_one_task():
    """vit.arch differs between two tasks only: no part of a row's name; train.lr differs within a task: named."""
    from bench.report.collect import _setting

    grid = pd.DataFrame({"task": ["breastmnist", "breastmnist", "adrenalmnist3d", "adrenalmnist3d"], "size": 28,
                         "vit.arch": ["small", "small", "vit3d-m", "vit3d-m"], "train.lr": [1e-3, 1e-4, 1e-5, 1e-5]})
    assert list(_setting(grid)) == ["train.lr=0.001", "train.lr=0.0001", "train.lr=1e-05", "train.lr=1e-05"]
    assert list(_setting(grid.assign(**{"train.lr": 1e-3}))) == [""] * 4


def test_replicates_zero_skips_the_bootstrap_and_too_few_is_one_line(real_store, tmp_path, capsys):
    from bench import cli

    results, folder, _ = real_store
    assert cli.main(["report", "--results", str(results), "--out", str(tmp_path), "--replicates", "0"]) == 0
    eff = pd.read_csv(tmp_path / "all" / "effects.csv")
    assert eff["auc_image_sd"].isna().all() and (eff["auc_parts"] == "seeds only").all()
    assert eff["auc_mean"].notna().any() and "no image part (bench report --replicates 0" in (
        tmp_path / "all" / "summary.md").read_text()
    capsys.readouterr()
    assert cli.main(["report", "--results", str(results), "--out", str(tmp_path / "x"), "--replicates", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: --replicates 5") and len(err.strip().splitlines()) == 1


def test_an_out_folder_that_cannot_be_written_is_one_line(real_store, tmp_path, capsys):
    from bench import cli

    results, _, _ = real_store
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["report", "--results", str(results), "--out", str(blocker), "--replicates", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: cannot write the report into") and "--out" in err
    assert len(err.strip().splitlines()) == 1 and blocker.read_text() == "not a folder"
