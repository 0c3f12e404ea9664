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


def gguf_header_reader(path: Any) -> Any:
    """A `gguf.GGUFReader` of `path` that skips over the contents of array fields (a tokenizer's vocabulary,
    scores and merges): a layer needs the scalar metadata and the tensors only, and GGUFReader parses arrays one
    element at a time (4 of the 4.3 s it takes to open SmolLM2-135M). A skipped array reads as empty.

    Overrides the private `GGUFReader._get_field_parts`, whose return value is (size, parts, data indices, types)."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    class HeaderReader(GGUFReader):
        def _get_field_parts(self, orig_offs, raw_type):
            if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            itype, n = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
            etype, offs = GGUFValueType(itype[0]), orig_offs + 12
            scalar = self.gguf_scalar_to_np.get(etype)
            if scalar is not None:
                offs += int(np.dtype(scalar).itemsize) * int(n[0])
            elif etype == GGUFValueType.STRING:
                order = "big" if self.byte_order == "S" else "little"
                view = memoryview(self.data)
                for _ in range(int(n[0])):
                    offs += 8 + int.from_bytes(view[offs:offs + 8], order)
            else:  # arrays of arrays: gguf's own element-wise walk
                return super()._get_field_parts(orig_offs, raw_type)
            if offs > len(self.data):
                raise ValueError("array field runs past the end of the file")
            return offs - orig_offs, [itype, n], [], [GGUFValueType.ARRAY, etype]

    return HeaderReader(path)


def gguf_unpermute(architecture: str, config: dict, name: str, weights: Any) -> Any:
    """A GGUF tensor as transformers holds it: transformers' own per-architecture GGUF tensor processor, which
    undoes llama.cpp's q/k row permutation for its RoPE layout (llama, and mistral, which llama.cpp writes as
    llama). `TENSOR_PROCESSORS` is an undocumented table of transformers' GGUF loader."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
    return processor.process(weights=weights, name=name).weights
