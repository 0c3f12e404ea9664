"""Image resampling of the test set, shared by every run of a row and vectorised over replicates.

Every seed of a task is scored on the same test images, so the test set's sampling noise is common to all
seeds: a replicate draws ONE resample of the N test images (N with replacement) and scores every run of the
row on it (variant, comparator, all seeds). Its spread is the image-sampling part of a Δ's variance
(`bench.report.effects` adds it to the seed part); drawing a fresh resample per seed would divide it by the
number of seeds. A resample is a vector of image counts (weights), so ACC is a weighted mean and AUC the
weighted Mann–Whitney statistic (tie groups count one half), equal to medmnist's metric (`bench.metrics.evaluate`)
on the resampled images without materialising them.

Replicates are drawn per (task, size, setting) from numpy's default_rng([SEED, crc32 of that key]), so every
row's numbers are reproducible on their own and do not depend on which other runs a store holds.
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


def image_replicates(scorers: dict, rng: np.random.Generator, replicates: int = REPLICATES) -> dict:
    """{key: (ACC (B,), AUC (B,))}: every scorer under the same B resamples of its (common) N test images."""
    n_img = len(next(iter(scorers.values())).correct)
    out = {k: (np.empty(replicates), np.empty(replicates)) for k in scorers}
    rows_per_chunk = max(1, _CHUNK // n_img)
    for lo in range(0, replicates, rows_per_chunk):
        part = min(rows_per_chunk, replicates - lo)
        draws = rng.integers(n_img, size=(part, n_img)) + n_img * np.arange(part)[:, None]
        counts = np.bincount(draws.ravel(), minlength=part * n_img).reshape(part, n_img)
        weights = np.ascontiguousarray(counts.T, dtype=np.float32 if n_img ** 2 < 2 ** 24 else np.float64)
        for k, scorer in scorers.items():
            acc, auc = scorer.metrics(weights)
            out[k][0][lo:lo + part], out[k][1][lo:lo + part] = acc, auc
    return out
