"""The stored run row and per-epoch history, declared once: every column and its type.

The runner writes rows with exactly these columns, readers get them back with these types (a column a
run did not fill is null), and the report and tests name columns from here. The config part is
derived from `bench.config`, so a new config field is a new column without an edit here.
"""

from __future__ import annotations

import functools
import types
import typing

import pyarrow as pa

from bench.config import leaf_types

_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}

# Columns around the config fields, in the order a row shows them.
IDENTITY = {"run_id": pa.string(), "status": pa.string(), "error": pa.string(), "traceback": pa.string(),
            "label": pa.string(), "task": pa.string(), "size": pa.int64()}
METRICS = {
    "best_epoch": pa.int64(),  # selected on val: best val AUC, ties to val ACC, then the earliest
    "val_acc": pa.float64(), "val_auc": pa.float64(), "test_acc": pa.float64(), "test_auc": pa.float64(),
    "epochs_run": pa.int64(), "train_s": pa.float64(), "train_img_per_s": pa.float64(),
    "mfu": pa.float64(),  # train_img_per_s x bench.cost's training FLOPs / the matmul peak at `precision` (bench.peak)
    "peak_mem_bytes": pa.int64(), "params_trainable": pa.int64(), "params_frozen": pa.int64(),
    "device": pa.string(), "micro_batch": pa.int64(),
    "precision": pa.string(),  # the autocast dtype the device got: bf16 (native), fp16 + GradScaler, fp32
}
LLM = {  # what was loaded, whatever the config said (bench.models.llm)
    "llm.source": pa.string(), "llm.file_hash": pa.string(), "llm.model_type": pa.string(),
    "llm.layers": pa.string(), "llm.hidden_size": pa.int64(), "llm.num_hidden_layers": pa.int64(),
    "llm.params": pa.int64(),
    # GGUF files: general.name / organization / license, and the storage type of the layer's weights (e.g. Q4_1)
    "llm.gguf_name": pa.string(), "llm.organization": pa.string(), "llm.license": pa.string(), "llm.quant": pa.string(),
}
DATA = {"data.md5": pa.string(), "data.fixture": pa.bool_(), "data_cached": pa.bool_(), "data_s": pa.float64()}
EXECUTION = {
    "attempt": pa.int64(), "started_at": pa.string(), "started_unix": pa.float64(), "finished_at": pa.string(),
    "wall_s": pa.float64(), "fit_s": pa.float64(), "oom_retry": pa.bool_(), "llm_cached": pa.bool_(),
    "worker_pid": pa.int64(), "worker_run_index": pa.int64(), "torch_threads": pa.int64(),
    "cuda_visible_devices": pa.string(), "slurm_job_id": pa.string(),
}
PROVENANCE = {"torch_version": pa.string(), "timm_version": pa.string(), "transformers_version": pa.string(),
              "medmnist_version": pa.string(), "bench_version": pa.string(), "git_sha": pa.string(),
              "hostname": pa.string()}

HISTORY = pa.schema([
    ("run_id", pa.string()), ("epoch", pa.int64()), ("train_loss", pa.float64()), ("val_acc", pa.float64()),
    ("val_auc", pa.float64()), ("lr", pa.float64()), ("epoch_s", pa.float64()),
    ("test_acc", pa.float64()), ("test_auc", pa.float64()),  # only with train.audit_test (the protocol audit)
])


def _arrow_type(tp) -> pa.DataType:
    """Scalars as themselves; tuples ("0.5,0.5") and index-or-name layers as their text (see config.flatten)."""
    args = tuple(a for a in (tp.__args__ if isinstance(tp, types.UnionType) else (tp,)) if a is not type(None))
    if len(args) > 1 or typing.get_origin(args[0]) is tuple:
        return pa.string()
    return _ARROW[args[0]]


def config_columns() -> dict[str, pa.DataType]:
    """One column per config field (`data.task`, `train.lr`, `seed`, ...), typed by its dataclass field."""
    return {key: _arrow_type(tp) for key, tp in leaf_types().items()}


@functools.cache
def run_schema() -> pa.Schema:
    cols = {**IDENTITY, **{k: v for k, v in config_columns().items() if k not in IDENTITY}, **METRICS, **LLM, **DATA,
            **EXECUTION, **PROVENANCE}
    return pa.schema(list(cols.items()))


def columns() -> list[str]:
    return run_schema().names


def check_row(row: typing.Mapping) -> None:
    """A row may leave columns out (null) but never invent one: that would be a column nobody reads."""
    unknown = set(row) - set(columns())
    if unknown:
        raise ValueError(f"run row has columns outside bench.store.schema: {sorted(unknown)}")
