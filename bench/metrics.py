"""MedMNIST's ACC and AUC, vectorised, plus the matching scores and training loss for each task type.

`evaluate` reproduces `medmnist.evaluator.getACC/getAUC` (the numbers the MedMNIST papers report) to
floating-point precision, without its per-class sklearn loop; the test suite checks the equality.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

MULTI_CLASS, BINARY, ORDINAL, MULTI_LABEL = "multi-class", "binary-class", "ordinal-regression", "multi-label, binary-class"
TASK_TYPES = (MULTI_CLASS, BINARY, ORDINAL, MULTI_LABEL)


def _check(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {TASK_TYPES}")


def scores_from_logits(task_type: str, logits: torch.Tensor) -> np.ndarray:
    """float64 (N, C) probabilities: sigmoid per label for multi-label, softmax otherwise."""
    _check(task_type)
    z = logits.detach().double()
    return (z.sigmoid() if task_type == MULTI_LABEL else z.softmax(-1)).cpu().numpy()


def auc_columns(positive: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """ROC AUC of each column of boolean `positive` (N, K) against `y_score` (N, K).

    Mann-Whitney U with average ranks: equal to sklearn's trapezoidal ROC AUC, ties included. Every
    column needs at least one positive and one negative.
    """
    n_pos = positive.sum(0)
    u = (rankdata(y_score, axis=0) * positive).sum(0) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * (len(positive) - n_pos))


def evaluate(task_type: str, y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """(ACC, AUC) as medmnist defines them.

    - binary-class: the last score column is P(positive); ACC thresholds it at 0.5.
    - multi-label: per-label AUC and per-label ACC at threshold 0.5, each averaged over labels.
    - multi-class, ordinal-regression: ACC of the argmax; macro one-vs-rest AUC over score columns.

    `y_true` is (N,) or (N, L) integer labels; `y_score` is (N, C) (binary also accepts (N,)). Where
    AUC is undefined for a class (no positives, or no negatives, in `y_true`), medmnist's mean is NaN
    (sklearn warns and gives NaN for that class); this averages over the classes where it is defined
    instead, and is NaN only when it is defined for none.
    """
    _check(task_type)
    y_score = np.asarray(y_score, dtype=np.float64)
    y_true = np.asarray(y_true).reshape(len(y_score), -1)
    if task_type == MULTI_LABEL:
        positive, score = y_true.astype(bool), y_score
        acc = np.mean((score > 0.5) == positive)
    elif task_type == BINARY:
        positive, score = y_true[:, :1] == 1, (y_score[:, -1] if y_score.ndim == 2 else y_score)[:, None]
        acc = np.mean((score > 0.5) == positive)
    else:
        positive, score = y_true[:, :1] == np.arange(y_score.shape[1]), y_score
        acc = np.mean(score.argmax(1) == y_true[:, 0])
    n_pos = positive.sum(0)
    defined = (n_pos > 0) & (n_pos < len(positive))
    auc = auc_columns(positive[:, defined], score[:, defined]).mean() if defined.any() else np.nan
    return float(acc), float(auc)


def loss_fn(task_type: str, label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Training loss on int64 labels (N, L): cross-entropy on `labels[:, 0]` for single-label tasks
    (ordinal too, as in MedMNIST), BCE-with-logits per label for multi-label. For multi-label,
    `label_smoothing` moves each binary target toward 0.5: y * (1 - s) + s / 2. A model with more outputs than
    classes (vit.head=pretrained keeps 1000) is trained on all of them by cross-entropy, as the paper's code; per
    label BCE takes its first L outputs (the task's labels; the rest get no gradient)."""
    _check(task_type)
    if task_type == MULTI_LABEL:

        def bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            target = labels.float() * (1 - label_smoothing) + label_smoothing / 2  # fp32: 0.95/0.05 stay exact
            return F.binary_cross_entropy_with_logits(logits[:, : labels.shape[1]].float(), target)

        return bce

    def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels[:, 0], label_smoothing=label_smoothing)

    return cross_entropy
