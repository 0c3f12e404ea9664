"""Every private upstream API this package relies on, one small function each.

Libraries change their private names without notice; keeping each use here, behind a function with
its own test (tests/test_upstream.py), makes an upgrade that breaks one fail loudly in one place
instead of silently changing a number somewhere else.
"""

from __future__ import annotations

import sys
from typing import Any


def fused_adamw_devices() -> set[str]:
    """Device types torch has fused AdamW kernels for (CUDA, and the CPU since torch 2.4).

    torch exposes this list only privately; an older torch without it gets CUDA only."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return {"cuda"}
    return set(_get_fused_kernels_supported_devices())


def hf_init_weights(pretrained_cls: type, config: Any, module: Any) -> None:
    """Apply a transformers family's own `_init_weights` to one module of a stand-alone block.

    `_init_weights` is an instance method of the family's PreTrainedModel that reads only `self.config`;
    a stand-in instance with just that attribute avoids building the whole (possibly 7B) model."""
    stand_in = object.__new__(pretrained_cls)
    object.__setattr__(stand_in, "config", config)
    pretrained_cls._init_weights(stand_in, module)


def opt_final_norm(config: Any) -> bool:
    """Whether an OPT config builds a final layer norm (OPT-350m has none): OPTDecoder's rule, which also reads
    the config's private `_remove_final_layer_norm` (a key of old OPT config.json files)."""
    return bool(config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False))


def optuna_storage(study: Any) -> Any:
    """The storage behind an Optuna study (no public accessor exists)."""
    return study._storage


def optuna_trial_id(trial: Any) -> int:
    """The storage-wide id of a Trial or FrozenTrial (the public `number` is per study)."""
    return trial._trial_id


def keep_loky_worker() -> None:
    """Stop loky from replacing this worker process when its memory grows: loky restarts a worker whose RSS
    rose 300 MB above its size after the first task (a leak guard, `_MAX_MEMORY_LEAK_SIZE`), but a bench
    worker grows on purpose, keeping each task's data and LLM layers for its next runs. Call inside the worker."""
    from joblib.externals.loky import process_executor

    if not hasattr(process_executor, "_MAX_MEMORY_LEAK_SIZE"):
        raise RuntimeError("joblib's loky no longer has _MAX_MEMORY_LEAK_SIZE: see bench/upstream.py")
    process_executor._MAX_MEMORY_LEAK_SIZE = sys.maxsize
