"""Shared fixtures: the real MedMNIST files (when present) and a factory for synthetic ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("BENCH_TEST_DATA") or (Path(__file__).parents[1] / "../shared/data/medmnist")).resolve()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Point XDG_CACHE_HOME (the md5 cache) at a temp dir, so tests never touch ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(autouse=True)
def _fp32_cpu(monkeypatch):
    """In-process training at fp32 on every CPU: the tests' expected values are fp32 computations, and must not
    depend on whether this CPU has native bf16 (bench.train.precision reads torch.cpu's probes). Tests of the bf16
    path patch the probes back; subprocesses (CLI, workers) get the machine's rule."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


@pytest.fixture
def shared_data() -> Path:
    """The read-only directory of real MedMNIST files."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MedMNIST files not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def fixture_root(tmp_path):
    """`make_fixture(task, size=28, **write_fixture_kwargs) -> root`: all fixtures share one tmp root."""
    from bench.data import write_fixture

    root = tmp_path / "medmnist"

    def make_fixture(task: str, size: int = 28, **kw) -> Path:
        write_fixture(root, task, size, **kw)
        return root

    return make_fixture


TINY_LLMS = {  # tiny random configs of every supported family (hidden 32, 2 layers)
    "llama": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_head=4, n_positions=1024, bos_token_id=0, eos_token_id=0)),
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32)),
    "bert": ("BertConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4)),
}


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """`tiny_llm(family) -> dir`: a random checkpoint saved by save_pretrained (made once per session)."""
    import torch
    import transformers

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            cls, kw = TINY_LLMS[family]
            config = getattr(transformers, cls)(vocab_size=64, max_position_embeddings=1024, num_hidden_layers=2, **kw)
            torch.manual_seed(0)
            made[family] = tmp_path_factory.mktemp(f"tiny-{family}")
            transformers.AutoModel.from_config(config).save_pretrained(made[family])
        return made[family]

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tests that train in this process: one torch thread, as a fair share of a busy CI box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mounts():
    """mount(...) -> bool (False without the rights, CAP_SYS_ADMIN); everything mounted is unmounted (last first)
    at teardown. As root a chmod stops no write: a read-only bind mount or a small tmpfs are real faults."""
    import shutil
    import subprocess

    done: list[str] = []

    def mount(*args: str) -> bool:
        if shutil.which("mount") is None:
            return False
        if subprocess.run(["mount", *args], check=False, capture_output=True).returncode != 0:
            return False
        done.append(args[-1])
        return True

    mount.undo = lambda: subprocess.run(["umount", "-l", done.pop()], check=False, capture_output=True)
    yield mount
    while done:
        mount.undo()


CI_TASKS = ("breastmnist", "adrenalmnist3d")  # the fixture tasks of ablations/ci.yaml


@pytest.fixture(scope="module")
def ci_env(tmp_path_factory, tiny_llm):
    """(fixture data root, tiny LLM dir) for the `ci` grid."""
    from bench.data import write_fixture

    base = tmp_path_factory.mktemp("ci-env")
    for task in CI_TASKS:
        write_fixture(base / "medmnist", task, 28, n=(32, 16, 16))
    return base / "medmnist", tiny_llm("llama")
