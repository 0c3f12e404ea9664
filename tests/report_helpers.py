"""Synthetic run rows, kept only for tests/test_tune.py's tuned-vs-default report check (the report tests use real stores)."""

from __future__ import annotations

from pathlib import Path

from bench.config import RunConfig, flatten, override, resolve, run_id
from bench.store import write_history, write_run

LLMS = {"minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", 6, 22_700_000),
        "llama-7b": ("huggyllama/llama-7b", 32, 6_740_000_000)}


def config(task="breastmnist", label="baseline", seed=0, **sets) -> RunConfig:
    """A resolved config; `sets` are dotted overrides, e.g. {'booster.variant': 'rllm'}."""
    cfg = override(RunConfig(), {"data.task": task, "seed": seed, "label": label, **sets})
    return resolve(cfg)


def row(cfg: RunConfig, acc=None, auc=None, status="ok", error=None, label=None) -> dict:
    """The stored row of a run, with the columns the runner writes."""
    flat = flatten(cfg)
    b = cfg.booster
    llm = None if b.variant == "baseline" else LLMS.get(b.source, (b.source, 6, 1_000_000))
    layer = None
    if llm is not None:
        first = b.layer % llm[1]
        layer = ",".join(str(first + i) for i in range(b.num_layers))
    return {
        "run_id": run_id(cfg), "status": status, "error": error,
        "label": cfg.label if label is None else label, "task": cfg.data.task, "size": cfg.data.size,
        "seed": cfg.seed, **{k: v for k, v in flat.items() if k not in ("seed", "label")},
        "best_epoch": 1, "val_acc": acc, "val_auc": auc,
        "test_acc": acc if status == "ok" else None, "test_auc": auc if status == "ok" else None,
        "epochs_run": 2, "wall_s": 1.0, "train_s": 0.8, "train_img_per_s": 100.0, "peak_mem_bytes": 1,
        "params_trainable": 10, "params_frozen": 0 if llm is None else 5, "device": "cpu",
        "llm.source": None if llm is None else llm[0], "llm.file_hash": None, "llm.model_type": None,
        "llm.layers": layer, "llm.hidden_size": None, "llm.num_hidden_layers": None if llm is None else llm[1],
        "llm.params": None if llm is None else llm[2], "data.md5": "x", "data.fixture": True,
        "torch_version": "2.5", "timm_version": "1.0", "transformers_version": "4.48", "medmnist_version": "3.0",
        "git_sha": "abc1234", "hostname": "test", "started_at": "t0", "finished_at": "t1",
    }


def store(results: Path, cfg: RunConfig, acc=None, auc=None, status="ok", error=None, history=True, label=None) -> dict:
    r = row(cfg, acc, auc, status, error, label)
    if history and status == "ok":
        write_history(results, r["run_id"], [
            {"epoch": e, "train_loss": 1.0 / e, "val_acc": acc - 0.02 / e, "val_auc": auc - 0.02 / e,
             "lr": 1e-3, "epoch_s": 0.1} for e in (1, 2, 3)])
    write_run(results, r)
    return r
