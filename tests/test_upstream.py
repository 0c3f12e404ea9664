"""The private upstream APIs of bench/upstream.py still exist and still do what we rely on.

An upgrade of torch, transformers or optuna that renames or changes one fails here, by name."""

from __future__ import annotations

import pytest
import torch

from bench import upstream


def test_torch_still_lists_fused_adamw_devices_and_the_cpu_kernel_runs():
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices  # noqa: F401 - must import

    devices = upstream.fused_adamw_devices()
    assert "cuda" in devices and "cpu" in devices  # torch >= 2.4 has CPU kernels; the pin is 2.14
    w = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([w], lr=0.1, fused=True)
    w.grad = torch.ones(4)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((4,), 0.9 - 0.1 * 0.01))  # Adam's first step moves by lr, plus decay


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_transformers_init_weights_on_a_stand_in_initialises_a_lone_layer(family):
    import transformers

    if family == "llama":
        config = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                          num_hidden_layers=1, initializer_range=0.05)
        layer_cls, pre_cls = transformers.models.llama.modeling_llama.LlamaDecoderLayer, transformers.LlamaPreTrainedModel
    else:
        config = transformers.GPT2Config(n_embd=256, n_head=4, n_layer=1, initializer_range=0.05)
        layer_cls, pre_cls = transformers.models.gpt2.modeling_gpt2.GPT2Block, transformers.GPT2PreTrainedModel
    layer = layer_cls(config, layer_idx=0)
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(7.0)  # anything _init_weights does not reach stays visibly wrong
    torch.manual_seed(0)
    for m in reversed(list(layer.modules())):  # children before parents, as transformers' post_init
        upstream.hf_init_weights(pre_cls, config, m)
    for name, p in layer.named_parameters():
        if p.ndim == 2:
            std = 0.05 / (2 * config.n_layer) ** 0.5 if name.endswith("c_proj.weight") else 0.05  # GPT-2 scales c_proj
            assert abs(p.std().item() - std) < 0.1 * std, name
            assert abs(p.mean().item()) < 0.1 * std, name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:  # norm weights
            assert torch.all(p == 1), name


@pytest.mark.parametrize("before, removed", [(True, False), (False, False), (True, True)])
def test_opt_final_norm_is_what_transformers_builds(before, removed):
    import transformers

    config = transformers.OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                    vocab_size=32, word_embed_proj_dim=16, do_layer_norm_before=before,
                                    _remove_final_layer_norm=removed)
    built = transformers.OPTModel(config).decoder.final_layer_norm is not None
    assert upstream.opt_final_norm(config) == built == (before and not removed)


def test_optuna_storage_and_trial_id_reach_the_trial_row():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    storage, tid = upstream.optuna_storage(study), upstream.optuna_trial_id(trial)
    assert isinstance(storage, optuna.storages.BaseStorage) and isinstance(tid, int)
    storage.set_trial_user_attr(tid, "heartbeat", 12.5)
    frozen = study.get_trials()[0]
    assert frozen.user_attrs["heartbeat"] == 12.5 and upstream.optuna_trial_id(frozen) == tid
    storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL


_HOARD = []


def _task(step: str) -> int:
    """A loky worker's task: 'keep' calls keep_loky_worker, 'grow' keeps 400 MB (as a worker's data and LLM
    caches do) for longer than loky's once-a-second memory check; every step returns the worker's pid."""
    import os
    import time

    import numpy as np

    if step == "keep":
        upstream.keep_loky_worker()
    if step == "grow":
        _HOARD.append(np.ones(400 * 2**20 // 8))
        time.sleep(1.5)
    return os.getpid()


@pytest.mark.parametrize("keep", [True, False])
def test_loky_replaces_a_grown_worker_unless_told_to_keep_it(keep):
    """The leak guard is real (without the call the grown worker is replaced) and keep_loky_worker turns it off."""
    from joblib.externals.loky.process_executor import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1) as pool:
        pids = [pool.submit(_task, step).result() for step in ("keep" if keep else "first", "grow", "after")]
    assert (pids[0] == pids[1] == pids[2]) is keep and pids[0] == pids[1]


def _gguf_with_arrays(path):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(2)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" * (i % 5) for i in range(300)])
    w.add_array("tokenizer.ggml.scores", [float(i) for i in range(300)])
    w.add_rope_freq_base(123.0)
    w.add_tensor("blk.0.attn_norm.weight", np.arange(8, dtype=np.float32))
    w.add_tensor("blk.1.attn_q.weight", np.ones((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_header_reader_skips_arrays_and_finds_the_same_tensors(tmp_path):
    import gguf

    path = _gguf_with_arrays(tmp_path / "a.gguf")
    fast, full = upstream.gguf_header_reader(path), gguf.GGUFReader(path)
    assert fast.data_offset == full.data_offset
    assert [(t.name, t.data_offset, t.tensor_type) for t in fast.tensors] == \
        [(t.name, t.data_offset, t.tensor_type) for t in full.tensors]
    assert (fast.tensors[0].data == full.tensors[0].data).all()
    assert fast.fields["llama.rope.freq_base"].contents() == full.fields["llama.rope.freq_base"].contents() == 123.0
    assert len(full.fields["tokenizer.ggml.tokens"].contents()) == 300
    assert fast.fields["tokenizer.ggml.tokens"].contents() == []  # skipped: read as empty


def test_gguf_unpermute_undoes_llama_cpps_q_k_permutation():
    import numpy as np

    heads, kv, dim = 4, 2, 8
    q = np.arange(heads * dim * 16, dtype=np.float32).reshape(heads * dim, 16)
    k = q[: kv * dim]

    def permute(w, n):  # llama.cpp convert_hf_to_gguf.py's LlamaModel.permute
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    config = {"num_attention_heads": heads, "num_key_value_heads": kv}
    assert (upstream.gguf_unpermute("llama", config, "blk.0.attn_q.weight", permute(q, heads)) == q).all()
    assert (upstream.gguf_unpermute("llama", config, "blk.0.attn_k.weight", permute(k, kv)) == k).all()
    assert (upstream.gguf_unpermute("qwen2", config, "blk.0.attn_q.weight", q) == q).all()  # stored as is
