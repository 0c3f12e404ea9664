"""A stored run's trained model: its weights as one safetensors file, and the model rebuilt from them.

The file holds every tensor of the model's state dict except a frozen LLM layer's: that layer is what its
source says it is, so it is rebuilt from the source (`build_model`) and only referenced in the file's metadata
(source, revision, layer indices, and the sha256 of its tensors). Loading checks that hash, so a checkpoint
that changed since the run (a new hub revision, a rewritten folder) is an error, never a silently other model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from bench.config import from_flat, resolve, run_id
from bench.data import TaskSpec, task_spec
from bench.errors import BenchError, one_line
from bench.models.build import RLLMViT, build_model


def frozen_tensors(model: RLLMViT) -> dict[str, torch.Tensor]:
    """The state-dict entries of the frozen LLM layer (none when there is no layer, or it was fine-tuned)."""
    booster = model.booster
    if booster is None or booster.llm is None or not model.frozen_llm:
        return {}
    prefix = next(name for name, m in model.named_modules() if m is booster.llm) + "."
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: equal exactly when the tensors are ("" for none)."""
    if not tensors:
        return ""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return h.hexdigest()


def weights_bytes(model: RLLMViT, row: dict) -> bytes:
    """The safetensors file of a trained run (`row`: its stored row so far, with run_id and started_at)."""
    frozen = frozen_tensors(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in frozen}
    meta = {
        "run_id": row["run_id"], "started_at": row["started_at"],  # which training of the run these weights are
        "frozen_sha256": tensor_hash(frozen),
        "frozen_keys": json.dumps(sorted(frozen)),
        **{k: str(row.get(k) or "") for k in ("booster.source", "booster.revision", "llm.source", "llm.layers")},
    }
    return safetensors.torch.save(tensors, metadata=meta)


def load_run_model(row: dict, path: Path, device: torch.device | str = "cpu"
                   ) -> tuple[RLLMViT, RunConfig, TaskSpec]:
    """The trained model of a stored ok run (eval mode, on `device`) from its row and its weights file at `path`
    (bench.store.layout.weights_path), with its resolved config (whose input pipeline feeds it) and task spec.

    The model is `build_model` of the row's config with the saved tensors loaded over it (every tensor of the
    model but the frozen LLM layer's, strictly); the frozen layer is rebuilt from its source and must hash as
    it did when the run was trained."""
    rid = row["run_id"]
    if row["status"] != "ok":
        raise BenchError(f"run {rid} is stored as {row['status']} ({row['error']}); only ok runs have a model")
    if not Path(path).is_file():
        raise BenchError(f"run {rid} ({row['label']}, {row['task']}) has no saved weights ({path}): rerun it with "
                         "`bench run ... --set save_weights=true --force`")
    # A null is a field the row predates or one that is None by default (or reset by resolve): its default.
    cfg = resolve(from_flat({k: v for k, v in row.items() if v is not None}))
    if run_id(cfg) != rid:
        raise BenchError(f"the stored config of run {rid} resolves to run id {run_id(cfg)}: it was written by "
                         "another version of bench; rerun it with --set save_weights=true --force")
    spec = task_spec(cfg.data.task, cfg.data.size)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (OSError, safetensors.SafetensorError) as e:
        raise BenchError(f"cannot read {path} ({one_line(e)}): rerun run {rid} with --set save_weights=true --force"
                         ) from None
    if (meta.get("run_id"), meta.get("started_at")) != (rid, row["started_at"]):
        raise BenchError(f"{path} holds the weights of another training (run {meta.get('run_id')}, started "
                         f"{meta.get('started_at')}), not of the stored run {rid} (started {row['started_at']}): "
                         "rerun it with --set save_weights=true --force")
    model, _ = build_model(cfg, spec)
    frozen = frozen_tensors(model)
    if sorted(frozen) != json.loads(meta.get("frozen_keys", "[]")) or tensor_hash(frozen) != meta.get("frozen_sha256", ""):
        raise BenchError(f"the frozen LLM layer of run {rid} ({meta.get('llm.source') or cfg.booster.source}, layers "
                         f"{meta.get('llm.layers')}) is not the one it was trained with: its tensors hash differently "
                         "now; restore that checkpoint (booster.source / booster.revision) or rerun the run")
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # a shape that differs
        raise BenchError(f"{path} does not fit the model run {rid}'s config builds ({one_line(e, 200)})") from None
    if sorted(missing) != sorted(frozen) or unexpected:
        odd = sorted(set(missing) - set(frozen)) + sorted(unexpected)
        raise BenchError(f"{path} does not fit the model run {rid}'s config builds (e.g. {odd[:3]}): rerun it with "
                         "--set save_weights=true --force")
    return model.to(device).eval(), cfg, spec

