"""The report's one comparison engine: every paired Δ of every section goes through here.

A paired Δ is the mean of n per-seed differences (arm − comparator, same seed, same test images). Its variance
has two parts that are estimated so that nothing is counted twice (a two-way decomposition, seeds × images):
  s²/n   the per-seed differences' sample variance over n: the seed's luck AND the seed × image noise (each seed
         sees the test images its own way), since both change from one seed to the next;
  c      the image part shared by every seed: the covariance, over resamples of the test images, between two
         different seeds' Δs (`shared_image_var`). It does not shrink with seeds: it is the floor the test set
         sets (BreastMNIST has 156 test images).
The primary interval is Δ ± t(df) · sqrt(s²/n + c), df by Welch–Satterthwaite with c taken as known, and never
narrower than the seed-only paired t (Δ ± t(n − 1) · s/√n): where the true c is ~0, its estimate is resampling noise
that raises the df faster than the evidence does (coverage 0.93 with 3 seeds in benchmarks/interval_coverage.py's
seed-dominated regime without this). Its p (the larger of the two tests'), its one-sided bounds (TOST) and its MDE
(the larger of the two) come from the same two tests, so the words never contradict the interval.
Without an image part (no predictions, or --replicates 0) it is the seed-only paired t. Benjamini–Hochberg (`bh`),
the pooled estimate across tasks (`pooled`) and the seeds a target MDE needs (`seeds_for`) live here too.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from scipy import optimize, stats

ALPHA, POWER = 0.05, 0.8


def bh(p) -> np.ndarray:
    """Benjamini–Hochberg adjusted p of one family; NaN stays NaN and is no member of the family."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    present = ~np.isnan(p)
    if present.any():
        out[present] = stats.false_discovery_control(p[present], method="bh")
    return out


@functools.cache
def noncentrality(df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The noncentrality at which a two-sided t-test with `df` degrees of freedom (inf: z-test) has `power`."""
    if np.isinf(df):
        crit = stats.norm.ppf(1 - alpha / 2)

        def short(nc):
            return stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc) - power
    else:
        crit = stats.t.ppf(1 - alpha / 2, df)

        def short(nc):  # power at noncentrality nc, minus the target
            lower = np.nan_to_num(stats.nct.cdf(-crit, df, nc))  # ~0 for large nc, where scipy can give NaN
            return stats.nct.sf(crit, df, nc) + lower - power

    high = 1.0
    while short(high) < 0:  # power grows with the effect: double until it reaches the target
        high *= 2
    return optimize.brentq(short, 0.0, high, xtol=1e-12)


def _df_key(df: float) -> float:
    return round(float(df), 6) if np.isfinite(df) else np.inf


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest |Δ| a two-sided test with standard error `se` and `df` detects with `power` at `alpha`."""
    return noncentrality(_df_key(df), alpha, power) * se


def mde_factor(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """δ/sd that a two-sided paired t-test with n pairs detects with `power`; NaN for n < 2."""
    return noncentrality(float(n - 1), alpha, power) / np.sqrt(n) if n >= 2 else np.nan


def shared_image_var(mean_var: float, one_var: float, n: int) -> float:
    """c, the image variance shared by the seeds, from the resamples: the variance of the mean Δ over seeds
    (`mean_var`) is one_var/n + (1 − 1/n)·c, with `one_var` the average variance of one seed's Δ; never below 0."""
    if n < 2 or pd.isna(mean_var) or pd.isna(one_var):
        return np.nan
    return max(0.0, (n * mean_var - one_var) / (n - 1))


def welch_df(n: int, seed_var: float, image_var: float) -> float:
    """(n − 1)(1 + c/(s²/n))²: Welch–Satterthwaite's df for s²/n (n − 1 df) plus a known c."""
    return (n - 1) * ((seed_var + image_var) / seed_var) ** 2 if seed_var > 0 else np.inf


def primary(n, mean, sd, spread, image_var, level: float = 0.95, alpha: float = ALPHA) -> dict:
    """The primary interval of a mean paired Δ over n seeds: mean ± t_df · sqrt(sd²/n + image_var).

    `image_var` is c (`shared_image_var`; NaN: not estimated, seeds only). Returns low, high (two-sided at
    `level`), lower1, upper1 (one-sided 95% bounds: the loss and the gain the data exclude), p, df, se,
    mde (α two-sided, power 0.8) and why the MDE is missing."""
    out = dict(low=np.nan, high=np.nan, lower1=np.nan, upper1=np.nan, p=np.nan, df=np.nan, se=np.nan, mde=np.nan,
               mde_note="")
    if n < 2 or pd.isna(sd):
        out["mde_note"] = "n < 2"
        return out
    seed = sd ** 2 / n if spread else 0.0
    img = 0.0 if pd.isna(image_var) else float(image_var)
    if not spread:
        out["mde_note"] = "no spread"
    if seed + img <= 0:
        return out
    df = welch_df(n, seed, img)
    se = np.sqrt(seed + img)
    tests = [(stats.t(df) if np.isfinite(df) else stats.norm(), se)]
    if seed > 0:  # the union with the seed-only paired t
        tests.append((stats.t(n - 1), np.sqrt(seed)))
    half = max(d.ppf(0.5 + level / 2) * e for d, e in tests)
    one = max(d.ppf(0.95) * e for d, e in tests)
    out.update(low=mean - half, high=mean + half, lower1=mean - one, upper1=mean + one,
               p=max(2 * d.sf(abs(mean) / e) for d, e in tests), df=df, se=se)
    if spread:
        out["mde"] = union_mde(n, seed, img, alpha)
    return out


def union_mde(n: int, seed: float, image: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The MDE of the primary test with seed part `seed` (s²/n) and image part `image` (c): the larger of its two
    tests' (Welch–Satterthwaite's t, and the seed-only t with n − 1 df)."""
    ws = mde(np.sqrt(seed + image), welch_df(n, seed, image), alpha, power)
    return max(ws, mde(np.sqrt(seed), n - 1, alpha, power)) if seed > 0 else ws


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """The seed-only paired comparison of two equal-length arrays (a − b): n_pairs, mean, ci_low, ci_high, p;
    the interval and p missing for n < 2 or identical differences."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    sd = d.std(ddof=1) if n >= 2 else np.nan
    spread = n >= 2 and float(np.ptp(d)) > 1e-12
    r = primary(n, d.mean() if n else np.nan, sd, spread, np.nan)
    usable = spread and r["se"] == r["se"]
    return {"n_pairs": n, "mean": d.mean() if n else np.nan, "ci_low": r["low"] if usable else np.nan,
            "ci_high": r["high"] if usable else np.nan, "p": r["p"] if usable else np.nan}


def summarise(d: pd.DataFrame, keys: list[str], col: str) -> pd.DataFrame:
    """n, mean, sd, the seed-only paired-t 95% CI (ci_low, ci_high), p_t and mde_t of the per-seed differences
    `col`, grouped by `keys`, with `spread` (False: identical differences); CI and p missing for n < 2 or
    identical differences."""
    g = d.groupby(keys, sort=True)[col]
    out = pd.DataFrame({"n": g.count(), "mean": g.mean(), "sd": g.std(ddof=1)})
    out.loc[out["n"] == 0, "mean"] = np.nan
    out["spread"] = (g.max() - g.min()) > 1e-12
    rows = [primary(int(r.n), r.mean, r.sd, bool(r.spread), np.nan) for r in out.itertuples()]
    usable = (out["n"] >= 2) & out["spread"]
    for name, key in (("ci_low", "low"), ("ci_high", "high"), ("p_t", "p"), ("mde_t", "mde")):
        out[name] = pd.Series([r[key] for r in rows], index=out.index, dtype=float).where(usable)
    return out


def claim_words(claim: float, lower1: float, upper1: float, mde_: float, what: str, source: str = "") -> str:
    """Where a claimed Δ stands against this design: 'ruled out' (outside the one-sided 95% bounds), 'beyond this
    design's reach' (inside them, but smaller than the MDE: the design cannot tell it from 0) or 'consistent'."""
    if pd.isna(claim) or pd.isna(lower1):
        return ""
    said = f"{what} ({claim:+.4f}{'; ' + source if source else ''})"
    if claim > upper1 or claim < lower1:
        return f"{said} is ruled out"
    if pd.notna(mde_) and abs(claim) < mde_:
        return f"{said} is beyond this design's reach (MDE {mde_:.3f})"
    return f"{said} is consistent with the data"


def pooled(means, ses) -> dict:
    """Inverse-variance pooling of per-task Δs: fixed effect and random effects (DerSimonian–Laird τ²), each
    with its 95% interval and two-sided z p, plus k and the count of Δs of each sign."""
    y, se = np.asarray(means, float), np.asarray(ses, float)
    keep = np.isfinite(y) & np.isfinite(se) & (se > 0)
    y, v = y[keep], se[keep] ** 2
    out = {"k": int(keep.sum()), "positive": int((y > 0).sum()), "negative": int((y < 0).sum()),
           "zero": int((y == 0).sum())}
    if out["k"] < 2:
        return out
    w = 1 / v
    fe = (w * y).sum() / w.sum()
    q = (w * (y - fe) ** 2).sum()
    tau2 = max(0.0, (q - (len(y) - 1)) / (w.sum() - (w ** 2).sum() / w.sum()))
    wr = 1 / (v + tau2)
    re = (wr * y).sum() / wr.sum()
    z = stats.norm.ppf(0.975)
    for name, est, var in (("fixed", fe, 1 / w.sum()), ("random", re, 1 / wr.sum())):
        s = np.sqrt(var)
        out.update({name: est, f"{name}_se": s, f"{name}_low": est - z * s, f"{name}_high": est + z * s,
                    f"{name}_p": 2 * stats.norm.sf(abs(est) / s)})
    out.update(q=q, tau2=tau2)
    return out


def seeds_for(target: float, seed_var: float, image_var: float, alpha: float = ALPHA, power: float = POWER,
              most: int = 10_000) -> tuple[float, int | None]:
    """(floor, n): the MDE no number of seeds gets below (the image part alone, a z-test) and the fewest seeds
    (≥ 2) whose MDE is at most `target`; n None when the target is at or below the floor or past `most` seeds."""
    img = 0.0 if pd.isna(image_var) else float(image_var)
    floor = noncentrality(np.inf, alpha, power) * np.sqrt(img)
    if target <= floor or seed_var <= 0 and img <= 0:
        return floor, None

    def at(n: int) -> float:
        return union_mde(n, seed_var / n, img, alpha, power)

    lo, hi = 2, 2
    while at(hi) > target:
        if hi >= most:
            return floor, None
        lo, hi = hi, min(2 * hi, most)
    while lo < hi:  # the MDE falls with n: the first n at or below the target
        mid = (lo + hi) // 2
        if at(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return floor, hi
