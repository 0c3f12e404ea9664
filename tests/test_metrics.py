import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import roc_auc_score

from bench.metrics import TASK_TYPES, evaluate, loss_fn, scores_from_logits


def _case(task_type: str, rng: np.random.Generator, n: int = 300, ties: bool = False):
    """Labels shaped like a medmnist npz (N, L) and scores shaped like scores_from_logits (N, C)."""
    if task_type == "multi-label, binary-class":
        y = (rng.random((n, 14)) < 0.3).astype(np.uint8)
        logits = rng.normal(size=(n, 14)) + 1.5 * y
        score = scores_from_logits(task_type, torch.from_numpy(logits))
    else:
        c = {"binary-class": 2, "ordinal-regression": 5, "multi-class": 9}[task_type]
        y = rng.integers(0, c, (n, 1)).astype(np.uint8)
        logits = rng.normal(size=(n, c))
        logits[np.arange(n), y[:, 0]] += 1.0
        score = scores_from_logits(task_type, torch.from_numpy(logits))
    if ties:
        score = np.round(score, 1)  # many equal scores, within and across classes
    return y, score


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_evaluate_equals_medmnist(task_type, ties):
    rng = np.random.default_rng(0)
    for _ in range(5):
        y, score = _case(task_type, rng, ties=ties)
        acc, auc = evaluate(task_type, y, score)
        assert acc == pytest.approx(getACC(y, score, task_type), abs=1e-9)
        assert auc == pytest.approx(getAUC(y, score, task_type), abs=1e-9)


def test_binary_accepts_one_score_column():
    y, score = _case("binary-class", np.random.default_rng(1))
    assert evaluate("binary-class", y, score[:, 1]) == evaluate("binary-class", y, score)
    assert evaluate("binary-class", y[:, 0], score[:, 1]) == evaluate("binary-class", y, score)


def test_auc_averages_over_defined_classes():
    """medmnist's mean is NaN when a class has no positives; ours is the mean over the others."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, (100, 1))  # class 3 of 4 never occurs
    score = scores_from_logits("multi-class", torch.randn(100, 4, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(getAUC(y, score, "multi-class"))
    expected = np.mean([roc_auc_score(y[:, 0] == k, score[:, k]) for k in range(3)])
    assert evaluate("multi-class", y, score)[1] == pytest.approx(expected, abs=1e-12)
    assert np.isnan(evaluate("binary-class", np.zeros((5, 1)), np.full(5, 0.3))[1])
    score[7, 0] = np.nan  # a diverged model's NaN is not averaged away
    assert np.isnan(evaluate("multi-class", y, score)[1])


def test_scores_from_logits():
    logits = torch.randn(7, 5)
    soft = scores_from_logits("multi-class", logits)
    assert soft.dtype == np.float64 and soft.shape == (7, 5)
    np.testing.assert_allclose(soft.sum(1), 1.0)
    sig = scores_from_logits("multi-label, binary-class", logits)
    np.testing.assert_allclose(sig, torch.sigmoid(logits.double()).numpy())
    with pytest.raises(ValueError):
        scores_from_logits("regression", logits)


def test_loss_fn():
    logits = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8, 1))
    for task_type in ("multi-class", "ordinal-regression"):
        loss = loss_fn(task_type, 0.1)(logits, labels)
        torch.testing.assert_close(loss, F.cross_entropy(logits, labels[:, 0], label_smoothing=0.1))
    multi = torch.randint(0, 2, (8, 5))
    torch.testing.assert_close(
        loss_fn("multi-label, binary-class", 0.0)(logits, multi),
        F.binary_cross_entropy_with_logits(logits, multi.float()),
    )
    torch.testing.assert_close(
        loss_fn("multi-label, binary-class", 0.2)(logits, multi),
        F.binary_cross_entropy_with_logits(logits, multi.float() * 0.8 + 0.1),
    )
