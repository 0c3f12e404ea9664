"""Coverage of the report's intervals for a paired Δ where the truth is known (prints figures; asserts nothing).

Each simulated run scores the same N test images, drawn from a population where every number has a closed form:
image j has a label y (p = 1/2) and a margin toward its true class, for model m (variant or baseline) and seed i,
    M = mu_m + u_mi + h_j + g_mj + e_mij,   u ~ N(0, seed_sd²), h ~ N(0, 1), g ~ N(0, image_model_sd²), e ~ N(0, noise_sd²)
(u: the seed's luck; h: how hard the image is for everyone; g: how hard it is for that model, whatever the seed;
e: the seed-by-image rest), and the run's score of class 1 is sigmoid((2y − 1) M). Over seeds and the image
population, ACC = Φ(mu / sqrt(V + seed_sd²)) and AUC = Φ(2 mu / sqrt(2 V + 4 seed_sd²)), V = 1 + image_model_sd² +
noise_sd², so the true Δ is their difference between the two models. Per simulated study (n seeds, one test set)
the report's own code gives the intervals (`bench.report.bootstrap`, `bench.report.engine`):
  primary        Δ ± t(df) sqrt(s²/n + c), c the image part the seeds share (`engine.shared_image_var`, from the
                 shared image resamples): the report's CI
  seed-only t    Δ ± t(n − 1) s/√n
  percentile     2.5-97.5 percentiles of the hierarchical bootstrap (seeds resampled, one shared image resample)

The `record` regime is calibrated to the committed record's own variance components (reports/record/effects.csv,
BreastMNIST rllm − baseline, AUC, 5 seeds: per-seed sd s = 0.025, shared image sd sqrt(c) = 0.009, one run's image
sd 0.022, 156 test images); its parameters reproduce them (0.025, 0.009, 0.022 over 80 simulated 5-seed studies).

    .venv/bin/python benchmarks/interval_coverage.py [--studies 1000] [--replicates 1000] [--seeds 3 5 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from bench.report import bootstrap
from bench.report.engine import primary, shared_image_var

REGIMES = {
    "seed-dominated": dict(images=500, seed_sd=0.25, image_model_sd=0.0, noise_sd=0.3),
    "image-dominated": dict(images=156, seed_sd=0.02, image_model_sd=1.5, noise_sd=0.3),
    "record": dict(images=156, seed_sd=0.035, image_model_sd=0.12, noise_sd=0.44),
}
MU = {"variant": 0.9, "baseline": 0.7}


def truth(images: int, seed_sd: float, image_model_sd: float, noise_sd: float) -> tuple[float, float]:
    """The true (ΔACC, ΔAUC): expectations over seeds and the image population."""
    v = 1 + image_model_sd ** 2 + noise_sd ** 2
    acc = {m: stats.norm.cdf(mu / np.sqrt(v + seed_sd ** 2)) for m, mu in MU.items()}
    auc = {m: stats.norm.cdf(2 * mu / np.sqrt(2 * v + 4 * seed_sd ** 2)) for m, mu in MU.items()}
    return acc["variant"] - acc["baseline"], auc["variant"] - auc["baseline"]


def study(rng: np.random.Generator, n: int, replicates: int, images: int, seed_sd: float, image_model_sd: float,
          noise_sd: float) -> dict:
    """One simulated study: n seeds of both models on one test set -> {interval: ((acc lo, hi), (auc lo, hi))}."""
    y = rng.integers(2, size=images)
    h = rng.normal(size=images)
    g = {m: rng.normal(0, image_model_sd, images) for m in MU}
    scorers = {}
    for i in range(n):
        for m, mu in MU.items():
            margin = mu + rng.normal(0, seed_sd) + h + g[m] + rng.normal(0, noise_sd, images)
            scorers[(m, i)] = bootstrap.Scorer.of(bootstrap.BINARY, y, 1 / (1 + np.exp(-(2 * y - 1) * margin)))
    ones = np.ones((images, 1))
    observed = {k: s.metrics(ones) for k, s in scorers.items()}
    reps = bootstrap.image_replicates(scorers, rng, replicates)
    seeds = rng.integers(n, size=(replicates, n))
    out: dict = {"primary": [], "seed-only t": [], "percentile": []}
    for j in range(2):  # acc, auc
        d = np.array([observed[("variant", i)][j][0] - observed[("baseline", i)][j][0] for i in range(n)])
        dd = np.stack([reps[("variant", i)][j] - reps[("baseline", i)][j] for i in range(n)], axis=1)  # (B, n)
        mean, sd = d.mean(), d.std(ddof=1)
        shared = shared_image_var(np.nanvar(np.nanmean(dd, axis=1), ddof=1), np.nanmean(np.nanvar(dd, axis=0, ddof=1)), n)
        p = primary(n, mean, sd, sd > 0, shared)
        out["primary"].append((p["low"], p["high"]))
        half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
        out["seed-only t"].append((mean - half, mean + half))
        hier = np.nanmean(np.take_along_axis(dd, seeds, axis=1), axis=1)
        out["percentile"].append(tuple(np.nanpercentile(hier, [2.5, 97.5])))
    return out


def coverage(n: int, regime: str, studies: int, replicates: int, seed: int = 0) -> dict:
    """{interval: (ACC coverage, AUC coverage)} over `studies` simulated studies of `regime` with n seeds."""
    params = REGIMES[regime]
    true = truth(**params)
    rng = np.random.default_rng([seed, n, list(REGIMES).index(regime)])
    hits: dict = {}
    for _ in range(studies):
        for name, ivs in study(rng, n, replicates, **params).items():
            hits.setdefault(name, []).append([lo <= t <= hi for (lo, hi), t in zip(ivs, true)])
    return {name: tuple(np.mean(h, axis=0)) for name, h in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    args = ap.parse_args()
    print(f"nominal 0.95; {args.studies} studies per line, {args.replicates} image resamples each "
          f"(coverage's Monte Carlo se ~{np.sqrt(0.95 * 0.05 / args.studies):.3f})")
    print(f"{'regime':<16} {'seeds':>5}  {'interval':<12} {'ACC':>6} {'AUC':>6}")
    for regime in args.regimes:
        for n in args.seeds:
            start = time.perf_counter()
            for name, (acc, auc) in coverage(n, regime, args.studies, args.replicates).items():
                print(f"{regime:<16} {n:>5}  {name:<12} {acc:6.3f} {auc:6.3f}")
            print(f"{'':<16} {'':>5}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
