"""What every `bench doctor` check shares: its result line, the options it runs under, the LLaMA shapes its steps
build (config-only, nothing downloaded)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                num_hidden_layers=32, vocab_size=32000, rms_norm_eps=1e-5, max_position_embeddings=4096)
TINY_LLAMA = dict(hidden_size=128, intermediate_size=344, num_attention_heads=4, num_key_value_heads=4,
                  num_hidden_layers=2, vocab_size=256, rms_norm_eps=1e-5, max_position_embeddings=512)

@dataclasses.dataclass
class Check:
    name: str
    status: str  # ok | FAIL | skip
    detail: str


@dataclasses.dataclass(frozen=True)
class Options:
    device: str | None = None  # auto | cpu | cuda | cuda:N
    grid: str | None = None
    sets: tuple[tuple[str, object], ...] = ()
    data_root: str | None = None
    backend: str = "local"  # local | dask | slurm
    scheduler: str | None = None
    slurm: object | None = None  # bench.run.slurm.SlurmOptions the SLURM check submits (--test-only); default: defaults
    quick: bool = False  # a tiny LLM layer and model: checks the checks (tests), its figures mean nothing
    steps: int | None = None  # timed steps of the paper-mode step (default: 10 on GPU, 1 on CPU)
    batch: int | None = None  # its batch (default: 32 on GPU, 1 on CPU)


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def write_llama_config(folder: Path, shape: dict) -> Path:
    """A config-only LLaMA folder: enough for booster.init=random (and for bench.cost to read the shape)."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    transformers.LlamaConfig(**shape).save_pretrained(folder)
    return folder
