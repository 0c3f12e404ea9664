"""bench.report.engine against independent references: the one-sided bounds against a t-based TOST written here,
the pooled estimates against statsmodels' meta-analysis, the seeds `bench power` asks for against a simulation
with known variance components, the shared image part against a brute-force covariance, and a constructed store
whose runs predict one class getting the flag, the words and `bench list`'s count."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report import engine


def tost_p(d: np.ndarray, low: float, high: float) -> float:
    """Two one-sided t-tests of H0: Δ ≤ low or Δ ≥ high (Schuirmann): the larger one-sided p."""
    n, mean, se = len(d), d.mean(), d.std(ddof=1) / math.sqrt(len(d))
    return max(stats.t.sf((mean - low) / se, n - 1), stats.t.cdf((mean - high) / se, n - 1))


def test_one_sided_bounds_are_where_a_t_based_tost_stops_rejecting():
    d = np.array([0.012, -0.004, 0.019, 0.007, 0.001])
    r = engine.primary(len(d), d.mean(), d.std(ddof=1), True, np.nan)
    # the bounds are the margins at which each one-sided test has p = 0.05 exactly
    assert stats.ttest_1samp(d, r["upper1"], alternative="less").pvalue == pytest.approx(0.05, abs=1e-9)
    assert stats.ttest_1samp(d, r["lower1"], alternative="greater").pvalue == pytest.approx(0.05, abs=1e-9)
    wide = max(r["upper1"], -r["lower1"]) + 1e-4  # equivalent within ±wide: TOST rejects at 5%
    assert tost_p(d, -wide, wide) < 0.05
    up = engine.claim_words(wide, r["lower1"], r["upper1"], r["mde"], "a gain")
    down = engine.claim_words(-wide, r["lower1"], r["upper1"], r["mde"], "a loss")
    assert up.endswith("is ruled out") and down.endswith("is ruled out")
    narrow = min(r["upper1"], -r["lower1"]) - 1e-4  # one side inside the bounds: TOST does not reject
    assert tost_p(d, -narrow, narrow) > 0.05
    inside = r["upper1"] - 1e-4
    said = engine.claim_words(inside, r["lower1"], r["upper1"], r["mde"], "the paper's Δ")
    assert said.endswith("consistent with the data" if inside >= r["mde"] else f"reach (MDE {r['mde']:.3f})")
    small = engine.claim_words(0.001, r["lower1"], r["upper1"], r["mde"], "the paper's Δ", "Table 1, ViT-S")
    assert small == f"the paper's Δ (+0.0010; Table 1, ViT-S) is beyond this design's reach (MDE {r['mde']:.3f})"


def test_one_sided_bounds_with_a_large_image_part_are_welch_satterthwaites():
    d = np.array([0.013, -0.004, 0.021, 0.008])
    image = (3 * d.std(ddof=1)) ** 2
    r = engine.primary(4, d.mean(), d.std(ddof=1), True, image)
    seed = d.var(ddof=1) / 4
    df = 3 * ((seed + image) / seed) ** 2
    t = (r["upper1"] - d.mean()) / math.sqrt(seed + image)
    assert stats.t.sf(t, df) == pytest.approx(0.05, abs=1e-9)


@pytest.mark.parametrize("heterogeneous", [True, False])
def test_pooled_estimates_match_statsmodels(heterogeneous):
    from statsmodels.stats.meta_analysis import combine_effects

    y = np.array([-0.033, -0.009, -0.024, -0.041]) if heterogeneous else np.array([-0.020, -0.018, -0.021, -0.019])
    se = np.array([0.012, 0.006, 0.020, 0.004]) if heterogeneous else np.array([0.012, 0.010, 0.020, 0.015])
    got = engine.pooled(y, se)
    ref = combine_effects(y, se ** 2, method_re="dl")
    frame = ref.summary_frame()
    assert got["k"] == 4 and got["negative"] == 4 and got["positive"] == 0
    assert got["fixed"] == pytest.approx(ref.mean_effect_fe, abs=1e-12)
    assert (got["fixed_low"], got["fixed_high"]) == pytest.approx(
        tuple(frame.loc["fixed effect", ["ci_low", "ci_upp"]]), abs=1e-12)
    if heterogeneous:  # Q > k − 1: DerSimonian–Laird's τ² is positive, statsmodels' as ours
        assert got["tau2"] > 0 and got["tau2"] == pytest.approx(ref.tau2, rel=1e-9)
        assert got["random"] == pytest.approx(ref.mean_effect_re, abs=1e-12)
        assert (got["random_low"], got["random_high"]) == pytest.approx(
            tuple(frame.loc["random effect", ["ci_low", "ci_upp"]]), abs=1e-12)
    else:  # DerSimonian–Laird truncates a negative moment estimate at 0 (statsmodels reports it unclipped)
        assert ref.tau2 < 0 and got["tau2"] == 0 and got["random"] == pytest.approx(got["fixed"], abs=1e-15)
    assert got["fixed_p"] == pytest.approx(2 * stats.norm.sf(abs(ref.mean_effect_fe) / frame.loc["fixed effect", "sd_eff"]))


def test_benjamini_hochberg_matches_statsmodels_and_keeps_missing_out():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, np.nan, 0.04, 0.03, 0.5])
    got = engine.bh(p)
    assert math.isnan(got[1])
    assert got[~np.isnan(p)] == pytest.approx(multipletests(p[~np.isnan(p)], method="fdr_bh")[1], abs=1e-15)


def test_shared_image_part_is_the_mean_covariance_between_seeds():
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 0.01, size=(4000, 1))
    dd = shared + rng.normal(0, 0.02, size=(4000, 5))  # (replicates, seeds)
    c = engine.shared_image_var(np.var(dd.mean(1), ddof=1), np.mean(np.var(dd, axis=0, ddof=1)), 5)
    cov = np.cov(dd, rowvar=False)
    assert c == pytest.approx(cov[~np.eye(5, dtype=bool)].mean(), rel=1e-9)
    assert c == pytest.approx(0.01 ** 2, rel=0.15)


@pytest.mark.parametrize("seed_sd, image_sd, target", [(0.03, 0.006, 0.03), (0.02, 0.0, 0.012), (0.025, 0.009, 0.04)])
def test_seeds_for_a_target_mde_reach_its_power_in_simulation(seed_sd, image_sd, target):
    """Studies with known parts: a shared test-set effect b ~ N(0, c) and per-seed Δs δ + b + N(0, s²), tested as
    the report tests them (reject when Welch–Satterthwaite's t with c known and the seed-only t both reject)."""
    floor, n = engine.seeds_for(target, seed_sd ** 2, image_sd ** 2)
    assert n is not None and floor == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * image_sd,
                                                    rel=1e-5)  # the far tail adds ~1e-6
    rng = np.random.default_rng(11)

    def power(delta: float, studies: int = 8000) -> float:
        d = delta + rng.normal(0, image_sd, size=(studies, 1)) + rng.normal(0, seed_sd, size=(studies, n))
        mean, seed = d.mean(1), d.var(1, ddof=1) / n
        df = (n - 1) * ((seed + image_sd ** 2) / seed) ** 2
        return float(np.mean((np.abs(mean) / np.sqrt(seed + image_sd ** 2) > stats.t.ppf(0.975, df))
                             & (np.abs(mean) / np.sqrt(seed) > stats.t.ppf(0.975, n - 1))))

    assert power(target) == pytest.approx(0.8, abs=0.05)
    assert power(engine.union_mde(n, seed_sd ** 2 / n, image_sd ** 2)) == pytest.approx(0.8, abs=0.03)
    if n > 2:  # one seed fewer does not reach the target
        assert engine.union_mde(n - 1, seed_sd ** 2 / (n - 1), image_sd ** 2) > target


def test_a_target_below_the_test_set_floor_is_unreachable_at_any_number_of_seeds():
    floor, n = engine.seeds_for(0.02, 0.03 ** 2, 0.009 ** 2)
    assert n is None and floor > 0.02
    assert engine.union_mde(10_000, 0.03 ** 2 / 10_000, 0.009 ** 2) > 0.02  # still above, as far as seeds go


def _single_class_store(tmp_path):
    """baseline and rllm, 3 seeds; every baseline run and one rllm run predict class 0 for every test image."""
    from bench.store import write_run
    from bench.store.layout import predictions_path
    from report_helpers import config, row

    rng = np.random.default_rng(0)
    y = rng.integers(2, size=(40, 1))
    results = tmp_path / "store"
    single = {}
    for seed in range(3):
        for label, variant in (("baseline", "baseline"), ("rllm", "rllm")):
            cfg = config(label=label, seed=seed, **{"booster.variant": variant, "booster.source": "minilm-l6"})
            one = variant == "baseline" or seed == 0
            p1 = rng.uniform(0.05, 0.45, 40) if one else np.clip(0.5 + 0.4 * (y[:, 0] - 0.5) + rng.normal(0, .2, 40),
                                                                 0.01, 0.99)
            score = np.stack([1 - p1, p1], 1)
            acc = float(np.mean((p1 > 0.5) == (y[:, 0] == 1)))
            r = row(cfg, acc=acc, auc=0.6 + 0.01 * seed + (0.1 if not one else 0))
            predictions_path(results, r["run_id"]).parent.mkdir(parents=True, exist_ok=True)
            np.savez(predictions_path(results, r["run_id"]), y_score=score, y_true=y)  # the store's npz layout
            write_run(results, r)
            single[r["run_id"]] = one
    return results, single


def test_runs_that_predict_one_class_are_flagged_and_their_acc_is_not_interpreted(tmp_path, capsys):
    from bench import cli
    from bench.report import make_report
    from bench.report.collect import collect

    results, single = _single_class_store(tmp_path)
    grid = collect(results, None).set_index("run_id")
    assert grid["single_class"].to_dict() == single
    folder = make_report(results, tmp_path / "out", name="single", replicates=0)
    eff = pd.read_csv(folder / "effects.csv", keep_default_na=False, na_values=["NaN"])
    row = eff[(eff["contrast"] == "vs baseline") & (eff["label"] == "rllm")].iloc[0]
    assert row["single"] == "4 of 6 runs predict one class"
    assert row["acc_finding"] == "not interpretable (4 of 6 runs predict one class)"
    assert not row["auc_finding"].startswith("not interpretable")
    md = (folder / "summary.md").read_text()
    assert "not interpretable (4 of 6 runs predict one class)" in md.split("## Reproduction")[0]
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g\ndefaults:\n  data: {task: breastmnist, size: 28}\n  booster: {source: minilm-l6}\n"
                         "variants:\n  baseline: {booster.variant: baseline}\n  rllm: {booster.variant: rllm}\n"
                         "seeds: [0, 1, 2]\n")
    assert cli.main(["list", "--grid", str(grid_file), "--results", str(results)]) == 0
    assert "single_class: 4 of 6 ok runs with stored predictions predict one class" in capsys.readouterr().out


def test_bench_power_prints_seeds_and_their_compute_and_refuses_a_bad_target(tmp_path, capsys):
    from bench import cli

    results, _ = _single_class_store(tmp_path)
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g\ndefaults:\n  data: {task: breastmnist, size: 28}\n  booster: {source: minilm-l6}\n"
                         "variants:\n  baseline: {booster.variant: baseline}\n  rllm: {booster.variant: rllm}\n"
                         "seeds: [0, 1, 2]\n")
    args = ["power", "--results", str(results), "--grid", str(grid_file), "--replicates", "0"]
    assert cli.main([*args, "--target-mde", "0.05", "--bh"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("power 0.8, two-sided") and "BH-aware" in out[0]
    auc = next(line for line in out if "rllm vs baseline (baseline) AUC" in line)
    d = [0.6 - 0.6, 0.71 - 0.61, 0.72 - 0.62]  # rllm − baseline AUC per seed, as the store was written
    sd = float(np.std(d, ddof=1))
    assert f"s {sd:.4f}" in auc and "at α 0.05;" in auc  # a family of one test: BH's α/m is α
    _, n = engine.seeds_for(0.05, sd ** 2, np.nan, 0.05)
    assert f": {n} seeds (pilot 3" in auc and f"{2 * n} runs, " in auc and "FLOP" in auc
    acc = next(line for line in out if "rllm vs baseline (baseline) ACC" in line)
    assert "[ACC not interpretable: 4 of 6 runs predict one class]" in acc
    assert cli.main([*args, "--target-mde", "big"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--target-mde big" in err


def test_a_margin_is_stated_against_the_one_sided_bounds_and_a_bad_one_is_refused(tmp_path):
    from bench.errors import BenchError
    from bench.report import make_report

    results, _ = _single_class_store(tmp_path)
    folder = make_report(results, tmp_path / "out", name="margin", replicates=0, margin=0.2)
    eff = pd.read_csv(folder / "effects.csv", keep_default_na=False, na_values=["NaN"])
    r = eff[(eff["contrast"] == "vs baseline") & (eff["label"] == "rllm")].iloc[0]
    up = engine.claim_words(0.2, r["auc_lower1"], r["auc_upper1"], r["auc_mde"], "a gain")
    down = engine.claim_words(-0.2, r["auc_lower1"], r["auc_upper1"], r["auc_mde"], "a loss")
    both = up.endswith("ruled out") and down.endswith("ruled out")
    paper = engine.claim_words(0.8823 - 0.8617, r["auc_lower1"], r["auc_upper1"], r["auc_mde"], "the paper's Δ",
                               "Table 1, ViT-S")  # Lai et al. Table 1, BreastMNIST AUC: R-LLM − ViT-S
    assert r["auc_claim"] == f"{paper}; " + ("equivalent within ±0.2 (TOST, 5%)" if both else f"{up}; {down}")
    assert r["acc_claim"] == ""  # its ACC is not interpretable: nothing to rule out
    with pytest.raises(BenchError, match="--margin -1"):
        make_report(results, tmp_path / "out", name="margin", replicates=0, margin=-1)
