"""The training loop's rules: lr schedules (against timm's scheduler and closed forms), the epoch order with
repeated augmentation, the best-epoch rule and its tie-break, and train.compile."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import bench.train
from bench.config import RunConfig, TrainConfig, override, resolve
from bench.data import task_spec
from bench.data.loading import load_splits
from bench.train import epoch_order, fit, learning_rate


def _train(**kw) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), **kw)


def test_cosine_epoch_is_deit_driving_timm_cosine_scheduler():
    """DeiT (the paper's 2D code) calls scheduler.step(epoch) after each epoch: epoch e trains at the value set then."""
    from timm.scheduler import CosineLRScheduler

    t = _train(schedule="cosine_epoch", lr=1.25e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=5, epochs=30)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    sched = CosineLRScheduler(opt, t_initial=t.epochs, lr_min=t.min_lr, warmup_t=int(t.warmup_epochs),
                              warmup_lr_init=t.warmup_lr, cycle_limit=1, t_in_epochs=True)
    steps_per_epoch = 4
    for epoch in range(t.epochs):
        expected = opt.param_groups[0]["lr"]
        for j in range(steps_per_epoch):
            assert learning_rate(t, epoch * steps_per_epoch + j, steps_per_epoch) == pytest.approx(expected, rel=1e-12)
        sched.step(epoch)


def test_cosine_per_step_default_is_the_original_schedule_and_honours_warmup_and_min_lr():
    t = _train(lr=1e-3, warmup_epochs=1, epochs=3)
    spe, total, warm = 10, 30, 10
    for step in range(total):  # the schedule every stored run so far trained with
        old = 1e-3 * (step + 1) / warm if step < warm else 0.5e-3 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert learning_rate(t, step, spe) == pytest.approx(old, rel=1e-12)
    t = _train(lr=1e-3, warmup_epochs=1, epochs=3, warmup_lr=1e-4, min_lr=1e-5)
    assert learning_rate(t, 0, spe) == pytest.approx(1e-4 + 0.9e-3 / 10)
    assert learning_rate(t, warm, spe) == pytest.approx(1e-3)
    last = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (total - 1 - warm) / (total - warm)))
    assert learning_rate(t, total - 1, spe) == pytest.approx(last, rel=1e-12) and last < 1.7e-5
    halfway = warm + (total - warm) // 2
    assert learning_rate(t, halfway, spe) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)


def test_constant_schedule_after_warmup():
    t = _train(schedule="constant", lr=1e-5, warmup_epochs=0, epochs=100)
    assert {learning_rate(t, s, 7) for s in range(0, 700, 13)} == {1e-5}
    t = _train(schedule="constant", lr=1e-5, warmup_epochs=1, epochs=100)
    assert learning_rate(t, 0, 10) == pytest.approx(1e-6) and learning_rate(t, 10, 10) == 1e-5


@pytest.mark.parametrize("n, k", [(10, 1), (10, 3), (9, 3), (7, 2)])
def test_repeated_augmentation_order(n, k):
    order = epoch_order(n, k, torch.Generator().manual_seed(0)).tolist()
    assert len(order) == n
    runs = [order[i:i + k] for i in range(0, n, k)]
    assert all(len(set(r)) == 1 for r in runs)  # each drawn image k times in a row
    assert len(set(order)) == math.ceil(n / k) and set(order) <= set(range(n))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bench.data import write_fixture

    root = tmp_path_factory.mktemp("train") / "medmnist"
    write_fixture(root, "breastmnist", 28, n=(32, 16, 16))
    spec = task_spec("breastmnist", 28)
    return spec, load_splits(spec, root, download=False)


def _cfg(**sets) -> RunConfig:
    base = {"vit.arch": "tiny", "vit.depth": 1, "vit.patch": 7, "train.batch_size": 8, "train.eval_batch_size": 64,
            "train.warmup_epochs": 0, "train.schedule": "constant", "train.epochs": 4}
    return resolve(override(RunConfig(), {**base, **sets}))


def test_best_epoch_is_best_val_auc_ties_to_val_acc_then_earliest(tiny, monkeypatch):
    spec, splits = tiny
    scripted = [(0.60, 0.80), (0.70, 0.85), (0.65, 0.85), (0.70, 0.85)]  # (acc, auc): epochs 1 and 3 tie on both
    expected = 1  # highest AUC (0.85), then highest ACC among those (0.70), then the earliest
    real = bench.train.evaluate
    calls = {"val": 0}

    def scripted_evaluate(task_type, y_true, y_score):
        if len(y_true) == len(splits.val) and calls["val"] < len(scripted):  # the val evaluations, in order
            calls["val"] += 1
            return scripted[calls["val"] - 1]
        return real(task_type, y_true, y_score)

    monkeypatch.setattr(bench.train, "evaluate", scripted_evaluate)
    chosen = fit(_cfg(), splits, spec, torch.device("cpu"))
    assert (chosen.metrics["best_epoch"], chosen.metrics["val_auc"], chosen.metrics["val_acc"]) == (expected, 0.85, 0.70)
    monkeypatch.setattr(bench.train, "evaluate", real)
    # the restored weights are those of that epoch: the same model as a run whose last epoch is that one (a
    # constant lr: the first epochs train alike), so the same test scores
    np.testing.assert_array_equal(chosen.y_score, _last_epoch_scores(_cfg(**{"train.epochs": expected + 1}), tiny))


def test_a_runs_mfu_is_its_training_flops_per_second_over_the_measured_peak(tiny, monkeypatch, one_thread):
    """mfu = train_img_per_s x the step's matmul FLOPs per image (closed form for ViT-tiny depth 1 at 28 px, patch 7:
    17 tokens, width 192, MLP 768, 2 classes) / the CPU peak measured at the run's precision and threads."""
    from bench import peak

    spec, splits = tiny
    asked = []
    monkeypatch.setattr(peak, "cpu_peak", lambda precision, threads: asked.append((precision, threads)) or 2e9)
    m = fit(_cfg(**{"train.epochs": 1}), splits, spec, torch.device("cpu")).metrics
    assert asked == [("fp32", 1)]  # conftest: in-process runs are fp32
    t, d = 17, 192
    trained = 2 * t * (3 * d * d + d * d + 2 * 4 * d * d) + 4 * t * t * d + 2 * d * 2  # block linears, QK/AV, head: 3x
    embed = 2 * 16 * 49 * d  # the patch embedding: no input gradient, 2x
    assert m["mfu"] == pytest.approx(m["train_img_per_s"] * (3 * trained + 2 * embed) / 2e9, rel=1e-12)


def _last_epoch_scores(cfg, tiny):
    """Test scores of the weights at the end of the last epoch (val selection forced onto it)."""
    spec, splits = tiny
    real = bench.train.evaluate
    n = {"val": 0}

    def last_wins(task_type, y_true, y_score):
        if len(y_true) == len(splits.val) and n["val"] < cfg.train.epochs:
            n["val"] += 1
            return (0.0, float(n["val"]))  # strictly increasing val AUC: the last epoch is chosen
        return real(task_type, y_true, y_score)

    bench.train.evaluate = last_wins
    try:
        return fit(cfg, splits, spec, torch.device("cpu")).y_score
    finally:
        bench.train.evaluate = real


@pytest.mark.slow
def test_compile_trains_the_same_model(tiny):
    spec, splits = tiny
    eager = fit(_cfg(**{"train.epochs": 2}), splits, spec, torch.device("cpu"))
    compiled = fit(_cfg(**{"train.epochs": 2, "train.compile": True}), splits, spec, torch.device("cpu"))
    np.testing.assert_allclose([h["train_loss"] for h in compiled.history], [h["train_loss"] for h in eager.history],
                               rtol=1e-4)
    np.testing.assert_allclose(compiled.y_score, eager.y_score, atol=1e-4)
