"""Paired bootstrap over seeds and test images, vectorised over replicates.

A replicate draws n seeds with replacement from a cell's n paired seeds and, for each drawn seed, N test
images with replacement; the same images score the variant run and its baseline, and the replicate's Δ is
the mean over drawn seeds of metric(variant) − metric(baseline). The 95% interval is the 2.5 and 97.5
percentiles of B replicates. A resample is a vector of image counts (weights), so ACC is a weighted mean
and AUC the weighted Mann–Whitney statistic (tie groups count one half), equal to medmnist's metric
(`bench.metrics.evaluate`) on the resampled images without materialising them.

Replicates are drawn per (task, size, setting, seed set) from numpy's default_rng([SEED, crc32 of that
key]), so every cell's interval is reproducible on its own and cells of one row share their draws.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

SEED = 2024
REPLICATES = 1000
MULTI_LABEL, BINARY = "multi-label, binary-class", "binary-class"
_CHUNK = 1 << 22  # weights per chunk (rows x images), bounds memory for large test sets


@dataclass
class Scorer:
    """One run's test predictions, prepared so any weight matrix scores it in O(rows x images)."""

    correct: np.ndarray  # (N,) per-image accuracy (the mean over labels for multi-label)
    columns: list  # per AUC column: (negatives by score, positives, per positive the negatives below, at or below)

    @classmethod
    def of(cls, task_type: str, y_true: np.ndarray, y_score: np.ndarray) -> Scorer:
        y_score = np.asarray(y_score, dtype=np.float64)
        y_true = np.asarray(y_true).reshape(len(y_score), -1)
        if task_type == MULTI_LABEL:
            positive, score = y_true.astype(bool), y_score
            correct = ((score > 0.5) == positive).mean(1)
        elif task_type == BINARY:
            positive, score = y_true[:, :1] == 1, (y_score[:, -1] if y_score.ndim == 2 else y_score)[:, None]
            correct = ((score > 0.5) == positive)[:, 0].astype(float)
        else:
            positive, score = y_true[:, :1] == np.arange(y_score.shape[1]), y_score
            correct = (score.argmax(1) == y_true[:, 0]).astype(float)
        columns = []
        for k in range(score.shape[1]):
            negatives, positives = np.flatnonzero(~positive[:, k]), np.flatnonzero(positive[:, k])
            negatives = negatives[np.argsort(score[negatives, k], kind="stable")]
            ranked = score[negatives, k]
            columns.append((negatives, positives, np.searchsorted(ranked, score[positives, k], side="left"),
                            np.searchsorted(ranked, score[positives, k], side="right")))
        return cls(correct, columns)

    def metrics(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ACC, AUC) per column of `weights` (N image counts x replicates); AUC averages the classes defined in
        a replicate. AUC is the weighted Mann–Whitney statistic: each positive earns the negatives scored below
        it, tied ones 1/2, read off one cumulative sum of the negatives' counts in score order. Images run along
        axis 0 so the gathers and cumulative sums move whole rows; counts are whole numbers, so float32 is exact
        while every sum stays below 2^24 (N^2 < 2^24), float64 beyond, and the result does not depend on the
        order of the sums."""
        dtype = np.float32 if len(self.correct) ** 2 < 2 ** 24 else np.float64
        weights = weights.astype(dtype, copy=False)
        total = weights.sum(0, dtype=np.float64)
        acc = self.correct @ weights / total
        aucs = []
        for negatives, positives, below, at_or_below in self.columns:
            counted = np.zeros((len(negatives) + 1, weights.shape[1]), dtype)  # row i: the i lowest negatives
            np.cumsum(weights[negatives], axis=0, out=counted[1:])
            pos = weights[positives]
            num = np.einsum("ij,ij->j", pos, 0.5 * (counted[below] + counted[at_or_below]), dtype=np.float64)
            n_pos = pos.sum(0, dtype=np.float64)
            n_neg = total - n_pos
            with np.errstate(invalid="ignore", divide="ignore"):
                aucs.append(np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan))
        with np.errstate(invalid="ignore"):
            auc = np.nanmean(np.stack(aucs, 1), axis=1) if len(aucs) > 1 else aucs[0]
        return acc, auc


def rng_for(key: str) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(key.encode())])


def paired_bootstrap(baselines: list[Scorer], arms: dict[str, list[Scorer]], rng: np.random.Generator,
                     replicates: int = REPLICATES) -> dict[str, dict[str, np.ndarray]]:
    """{arm: {'acc': (B,), 'auc': (B,)}} replicate deltas; seed i of every arm pairs with baselines[i].

    Arms of one row share the draws (common random numbers), so the baseline is scored once per draw.
    """
    n, n_img = len(baselines), len(baselines[0].correct)
    seeds = rng.integers(n, size=(replicates, n)).ravel()
    diffs = {a: {m: np.empty(replicates * n) for m in ("acc", "auc")} for a in arms}
    rows_per_chunk = max(1, _CHUNK // n_img)
    for s in range(n):
        rows = np.flatnonzero(seeds == s)
        for lo in range(0, len(rows), rows_per_chunk):
            part = rows[lo:lo + rows_per_chunk]
            draws = rng.integers(n_img, size=(len(part), n_img)) + n_img * np.arange(len(part))[:, None]
            counts = np.bincount(draws.ravel(), minlength=len(part) * n_img).reshape(len(part), n_img)
            weights = np.ascontiguousarray(counts.T, dtype=np.float32 if n_img ** 2 < 2 ** 24 else np.float64)
            base = baselines[s].metrics(weights)
            for arm, scorers in arms.items():
                for m, v, b in zip(("acc", "auc"), scorers[s].metrics(weights), base):
                    diffs[arm][m][part] = v - b
    return {a: {m: d.reshape(replicates, n).mean(1) for m, d in per.items()} for a, per in diffs.items()}


def interval(deltas: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of the replicates where the metric is defined (NaN: none)."""
    d = deltas[~np.isnan(deltas)]
    if not len(d):
        return np.nan, np.nan
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(lo), float(hi)
