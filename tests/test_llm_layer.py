"""bench.models.llm: one LLM layer cut out of a checkpoint equals the same layer of the whole model.

Tiny random models (hidden 64, 8 layers) of every supported family are saved as sharded safetensors; the block
loaded from them must match `AutoModel.from_pretrained` tensor for tensor and output for output. The same weights
as PyTorch .bin shards (LLaMA-1's format) load the same block, and a LLaMA layer equals Meta's original formulation.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import transformers

from bench.config import BoosterConfig, RunConfig, override, resolve
from bench.errors import BenchError
from bench.models.llm import SUPPORTED, LLMBlock, check_block, llm_hidden_size, load_llm_block, minilm_dir
from bench.models.llm import checkpoint, source

transformers.logging.set_verbosity_error()

H, N_LAYERS, T = 64, 8, 7
ROTARY = ("llama", "qwen2", "mistral")


def booster(source, layer: int, num_layers: int = 1, **knobs) -> BoosterConfig:
    """The booster config of an rllm run on `source`, resolved as every run's is (R-LLM defaults filled in)."""
    sets = {"booster.variant": "rllm", "booster.source": str(source), "booster.layer": layer,
            "booster.num_layers": num_layers, **{f"booster.{k}": v for k, v in knobs.items()}}
    return resolve(override(RunConfig(), sets)).booster


def load(source, layer: int, num_layers: int = 1, seed: int = 0, **knobs) -> LLMBlock:
    return load_llm_block(booster(source, layer, num_layers, **knobs), seed)


def _tiny(family: str):
    """(config, model class to save): task models and base models, so both key prefixes get exercised."""
    t = transformers
    common = dict(vocab_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=4)
    if family == "llama":
        return t.LlamaConfig(hidden_size=H, intermediate_size=96, num_key_value_heads=2, **common), t.LlamaForCausalLM
    if family == "qwen2":
        return t.Qwen2Config(hidden_size=H, intermediate_size=96, num_key_value_heads=2, **common), t.Qwen2Model
    if family == "mistral":
        config = t.MistralConfig(hidden_size=H, intermediate_size=96, num_key_value_heads=2, **common)
        return config, t.MistralForCausalLM
    if family == "gpt2":  # layer-index-dependent attention scaling: the layer must be built with its real index
        return t.GPT2Config(n_embd=H, n_layer=N_LAYERS, n_head=4, n_positions=32, vocab_size=64,
                            scale_attn_by_inverse_layer_idx=True), t.GPT2LMHeadModel
    if family == "opt":
        return t.OPTConfig(hidden_size=H, ffn_dim=128, word_embed_proj_dim=H, max_position_embeddings=32,
                           **common), t.OPTForCausalLM
    if family == "bert":
        return t.BertConfig(hidden_size=H, intermediate_size=128, max_position_embeddings=32, **common), t.BertModel
    raise KeyError(family)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (directory of a sharded save_pretrained checkpoint, total parameter count)."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            config, cls = _tiny(family)
            torch.manual_seed(0)
            model = cls(config)
            with torch.no_grad():  # norms and biases away from 1/0, so every tensor is distinctive
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
            d = tmp_path_factory.mktemp(family)
            model.save_pretrained(d, max_shard_size="100KB")
            assert len(list(d.glob("model-*-of-*.safetensors"))) >= 3, "the fixture must be sharded"
            cache[family] = (d, sum(p.numel() for p in model.parameters()))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def refs(saved):
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = transformers.AutoModel.from_pretrained(saved(family)[0]).eval()
        return cache[family]

    return get


def _ref_layers(ref, family):
    return {"gpt2": lambda: ref.h, "opt": lambda: ref.decoder.layers, "bert": lambda: ref.encoder.layer}.get(
        family, lambda: ref.layers)()


def _ref_forward(ref, family, x, indices, mask, pos_emb):
    """The reference: the whole model's own layers, called with an explicit additive mask and positions."""
    Tn = x.shape[1]
    m = torch.zeros(1, 1, Tn, Tn)
    if mask == "causal":
        m = m.masked_fill(torch.ones(Tn, Tn, dtype=torch.bool).triu(1), torch.finfo(x.dtype).min)
    kw = {"attention_mask": m}
    pos = torch.arange(Tn)[None]
    h = x
    if family in ROTARY:
        if pos_emb == "rope":
            kw["position_embeddings"] = ref.rotary_emb(x, pos)
        else:
            hd = ref.layers[0].self_attn.head_dim
            kw["position_embeddings"] = (torch.ones(1, Tn, hd), torch.zeros(1, Tn, hd))
    elif pos_emb == "rope":
        h = h + {"gpt2": lambda: ref.wpe(pos), "opt": lambda: ref.decoder.embed_positions(None, position_ids=pos),
                 "bert": lambda: ref.embeddings.position_embeddings(pos)}[family]()
    layers = _ref_layers(ref, family)
    for i in indices:
        out = layers[i](h, **kw)
        h = out[0] if isinstance(out, tuple) else out
    return h


def _shards_holding(d: Path, prefix_re: str) -> list[str]:
    import re

    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    return sorted({f for k, f in wm.items() if re.match(prefix_re, k)})


FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "opt", "bert"]
LAYER_RE = {"llama": r"model\.layers\.{i}\.", "qwen2": r"layers\.{i}\.", "mistral": r"model\.layers\.{i}\.",
            "gpt2": r"transformer\.h\.{i}\.", "opt": r"model\.decoder\.layers\.{i}\.", "bert": r"encoder\.layer\.{i}\."}


def test_supported_families_listed():
    assert set(SUPPORTED) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_matches_whole_model(family, saved, refs):
    d, n_params = saved(family)
    ref = refs(family)
    torch.manual_seed(1)
    x = torch.randn(2, T, H)
    for layer, idx, mask, pos_emb in [(3, 3, "bidirectional", "none"), (-1, N_LAYERS - 1, "causal", "rope"),
                                      (-8, 0, "bidirectional", "rope"), (5, 5, "causal", "none")]:
        block = load(str(d), layer, mask=mask, pos_emb=pos_emb, llm_norm="none")
        assert isinstance(block, LLMBlock) and block.hidden_size == H
        assert block.info["llm.layers"] == str(idx)
        # every tensor equals the whole model's
        ours, theirs = block.layers[0].state_dict(), _ref_layers(ref, family)[idx].state_dict()
        assert ours.keys() == theirs.keys()
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), k
        block.train()  # dropout is disabled inside the block: train mode == the reference in eval mode
        with torch.no_grad():
            got, want = block(x), _ref_forward(ref, family, x, [idx], mask, pos_emb)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4, msg=f"{family} {layer} {mask} {pos_emb}")
        # only the shard(s) holding the layer were read, and hashed
        shards = _shards_holding(d, LAYER_RE[family].format(i=idx))
        pos_shards = []
        if pos_emb == "rope" and family not in ROTARY:
            key = {"gpt2": "transformer.wpe.weight", "opt": "model.decoder.embed_positions.weight",
                   "bert": "embeddings.position_embeddings.weight"}[family]
            pos_shards = _shards_holding(d, key.replace(".", r"\.") + "$")
        want_hash = ",".join(hashlib.sha256((d / f).read_bytes()).hexdigest() for f in sorted({*shards, *pos_shards}))
        assert block.info["llm.file_hash"] == want_hash
    assert block.info["llm.params"] == n_params
    assert block.info["llm.model_type"] == family
    assert block.info["llm.num_hidden_layers"] == N_LAYERS and block.info["llm.hidden_size"] == H
    assert block.info["llm.source"] == str(d.resolve())
    assert llm_hidden_size(str(d)) == H


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "bert"])
def test_two_layers_equal_two_chained(family, saved, refs):
    d, _ = saved(family)
    x = torch.randn(2, T, H)
    block = load(str(d), -3, num_layers=2, mask="causal", pos_emb="rope", llm_norm="none")
    assert block.info["llm.layers"] == f"{N_LAYERS - 3},{N_LAYERS - 2}" and len(block.layers) == 2
    with torch.no_grad():
        torch.testing.assert_close(block(x), _ref_forward(refs(family), family, x, [5, 6], "causal", "rope"),
                                   atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_pretrained_final_norm(family, saved, refs):
    d, _ = saved(family)
    ref = refs(family)
    final = {"llama": lambda: ref.norm, "gpt2": lambda: ref.ln_f, "opt": lambda: ref.decoder.final_layer_norm}[family]()
    x = torch.randn(2, T, H)
    block = load(str(d), -1, llm_norm="pretrained")
    for k, v in final.state_dict().items():
        assert torch.equal(block.norm.state_dict()[k], v)
    with torch.no_grad():
        torch.testing.assert_close(block(x), final(_ref_forward(ref, family, x, [N_LAYERS - 1], "bidirectional",
                                                                "none")), atol=2e-5, rtol=1e-4)


def test_unit_norm_has_nothing_to_train(saved):
    x = torch.randn(2, T, H) * 3 + 1
    rms = load(str(saved("llama")[0]), 0, llm_norm="unit")
    ln = load(str(saved("gpt2")[0]), 0, llm_norm="unit")
    assert not list(rms.norm.parameters()) and not list(ln.norm.parameters())
    with torch.no_grad():
        torch.testing.assert_close(rms(x).pow(2).mean(-1), torch.ones(2, T), atol=1e-4, rtol=0)
        y = ln(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, T), atol=1e-4, rtol=0)


def test_dtype_casts_weights_and_io(saved):
    d = str(saved("llama")[0])
    x = torch.randn(2, T, H)
    fp32 = load(d, 2)
    bf16 = load(d, 2, dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    with torch.no_grad():
        y = bf16(x)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, fp32(x), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_attention_runs_through_sdpa(family, saved, monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(1)
        return sdpa(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    block = load(saved(family)[0], 0, num_layers=2)
    with torch.no_grad():
        block(torch.randn(2, T, H))
    assert len(calls) == 2  # one attention per layer


def test_rope_frequencies_stay_fp32_when_the_block_is_cast(saved):
    """A cast of the whole model (.to(bf16)) rounds the weights but must not round the rotary frequencies: the
    cast block computes what a block loaded as bf16 (fp32 frequencies from the start) computes."""
    d = saved("llama")[0]
    x = torch.randn(2, T, H)
    cast = load(d, 1, pos_emb="rope").to(torch.bfloat16)
    bf16 = load(d, 1, pos_emb="rope", dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in cast.parameters())
    with torch.no_grad():
        assert torch.equal(cast(x), bf16(x))


@pytest.mark.parametrize("pos_emb", ["rope", "none"])
def test_every_tensor_forward_reads_moves_with_the_block(saved, pos_emb):
    """After .to(device) nothing the forward reads is left on the CPU (a host -> device copy in every step);
    on a machine without a GPU the meta device shows it: a CPU tensor mixed with meta ones is an error."""
    block = load(saved("llama")[0], 1, pos_emb=pos_emb).to("meta")
    y = block(torch.randn(2, T, H, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, T, H)


def test_learned_positions_limit(saved):
    block = load(str(saved("gpt2")[0]), 0, pos_emb="rope")
    block(torch.randn(1, 32, H))  # n_positions = 32
    with pytest.raises(BenchError, match="32 learned positions"):
        block(torch.randn(1, 33, H))


def _single_file(src: Path, dst: Path, rename, extra=None) -> Path:
    """Re-save a sharded fixture as one model.safetensors with renamed keys (plus `extra` tensors)."""
    from safetensors.torch import load_file, save_file

    sd = {}
    for f in sorted(src.glob("model-*.safetensors")):
        sd.update({rename(k): v for k, v in load_file(f).items()})
    sd.update(extra or {})
    dst.mkdir()
    save_file(sd, str(dst / "model.safetensors"), {"format": "pt"})
    shutil.copy(src / "config.json", dst)
    return dst


def test_legacy_single_file_checkpoints(tmp_path, saved):
    # GPT-2 as on the hub: one file, no "transformer." prefix, causal-mask buffers stored with every layer
    src, n_params = saved("gpt2")
    buffers = {f"h.{i}.attn.{b}": torch.ones(1, 1, 32, 32) for i in range(N_LAYERS) for b in ("bias", "masked_bias")}
    d = _single_file(src, tmp_path / "gpt2", lambda k: k.removeprefix("transformer."), buffers)
    kw = dict(pos_emb="rope", llm_norm="pretrained")
    a, b = load(str(d), 2, **kw), load(str(src), 2, **kw)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert a.info["llm.params"] == n_params  # the stored buffers are not parameters
    # BERT as saved by TF-era code: "bert." prefix, LayerNorm gamma/beta
    src, _ = saved("bert")
    d = _single_file(src, tmp_path / "bert", lambda k: "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
                     .replace("LayerNorm.bias", "LayerNorm.beta"))
    a, b = load(str(d), 1, pos_emb="rope"), load(str(src), 1, pos_emb="rope")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


# --------------------------------------------------------------------------- PyTorch .bin checkpoints, LLaMA-1


def save_bin(state_dict: dict, config, d: Path, max_shard_size: str = "1GB") -> Path:
    """A checkpoint as transformers 4 wrote `safe_serialization=False` (5 writes safetensors only): torch.save'd
    pytorch_model.bin, or pytorch_model-0000k-of-0000n.bin shards + pytorch_model.bin.index.json."""
    from huggingface_hub import split_torch_state_dict_into_shards

    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone() for k, v in state_dict.items()}  # own storages: a shard holds only its tensors
    split = split_torch_state_dict_into_shards(sd, filename_pattern="pytorch_model{suffix}.bin",
                                               max_shard_size=max_shard_size)
    for fname, names in split.filename_to_tensors.items():
        torch.save({n: sd[n] for n in names}, d / fname)
    if split.is_sharded:
        (d / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": split.metadata, "weight_map": split.tensor_to_filename}))
    config.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def saved_bin(saved, tmp_path_factory):
    """family -> (.bin shards, one pytorch_model.bin) of the same weights as `saved(family)`."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            from safetensors.torch import load_file

            src = saved(family)[0]
            sd = {}
            for f in sorted(src.glob("model-*.safetensors")):
                sd.update(load_file(f))
            config = transformers.AutoConfig.from_pretrained(src)
            root = tmp_path_factory.mktemp(f"{family}-bin")
            cache[family] = (save_bin(sd, config, root / "sharded", "100KB"), save_bin(sd, config, root / "single"))
        return cache[family]

    return get


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bin_checkpoints_load_the_same_layer_as_safetensors(family, saved, saved_bin):
    src, n_params = saved(family)
    sharded, single = saved_bin(family)
    assert len(list(sharded.glob("pytorch_model-*-of-*.bin"))) >= 3 and not list(sharded.glob("*.safetensors"))
    for layer, kw in [(3, {}), (-1, dict(pos_emb="rope", llm_norm="pretrained")), ("first", dict(dtype="bf16"))]:
        want = load(str(src), layer, **kw)
        for d in (sharded, single):
            got = load(str(d), layer, **kw)
            assert got.state_dict().keys() == want.state_dict().keys()
            for k, v in want.state_dict().items():
                assert torch.equal(got.state_dict()[k], v) and got.state_dict()[k].dtype == v.dtype, (d.name, k)
            assert got.info["llm.params"] == n_params and got.info["llm.layers"] == want.info["llm.layers"]
    # provenance: the .bin shard(s) holding the layer (and the final norm / position table asked for), hashed
    got = load(str(sharded), 2)
    wm = json.loads((sharded / "pytorch_model.bin.index.json").read_text())["weight_map"]
    stem = {"llama": "model.layers.2.", "gpt2": "transformer.h.2."}[family]
    files = sorted({f for k, f in wm.items() if k.startswith(stem)})
    assert got.info["llm.file_hash"] == ",".join(hashlib.sha256((sharded / f).read_bytes()).hexdigest() for f in files)


def test_bin_loaded_tensors_own_their_memory(saved_bin):
    """The block's weights are copies, not views of the shard's mapping: they survive the file and can be trained."""
    d = saved_bin("llama")[1]
    block = load(str(d), 1, freeze="finetune")
    before = {k: v.clone() for k, v in block.state_dict().items()}
    (d / "pytorch_model.bin").rename(d / "moved.bin")
    try:
        for p in block.parameters():
            p.data.add_(1.0)  # writes into a private mapping would be silently copy-on-write; into a copy, fine
        assert all(torch.equal(block.state_dict()[k], v + 1) for k, v in before.items())
    finally:
        (d / "moved.bin").rename(d / "pytorch_model.bin")


def test_bin_that_is_not_a_state_dict(tmp_path, saved):
    d = tmp_path / "odd"
    d.mkdir()
    shutil.copy(saved("llama")[0] / "config.json", d)
    torch.save({"model": {"x": torch.zeros(2)}}, d / "pytorch_model.bin")
    with pytest.raises(BenchError, match="not a state dict of tensors") as e:
        load(str(d), 0)
    assert "\n" not in str(e.value)
    torch.save([torch.zeros(2)], d / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(BenchError, match="cannot read .* as a PyTorch checkpoint .* re-save"):
        load(str(d), 0)


def test_hub_bin_shards_fetch_only_the_layers_shard(tmp_path, saved, saved_bin, monkeypatch):
    import huggingface_hub

    src = saved_bin("llama")[0]
    hub = FakeHub(src, tmp_path)
    monkeypatch.setattr(source, "hf_hub_download", hub)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", _offline_metadata)
    block = load("org/tiny", "last")
    got = [f for _, f, _ in hub.calls]
    assert got[:4] == ["config.json", "model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json"]
    wm = json.loads((src / "pytorch_model.bin.index.json").read_text())["weight_map"]
    assert sorted(got[4:]) == sorted({f for k, f in wm.items() if k.startswith(f"model.layers.{N_LAYERS - 1}.")})
    assert block.info["llm.params"] == saved("llama")[1]  # offline, no safetensors: the index's bytes / fp32's 4
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), load(str(src), -1).state_dict().values(),
                                                  strict=True))


def _meta_permute_back(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo the q/k permutation of transformers' convert_llama_weights_to_hf.py, which reorders each head's rows
    from Meta's interleaved (real, imaginary) pairs to rotate-half's two halves."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _meta_llama_block(w: dict, x: torch.Tensor, n_heads: int, rope: bool, causal: bool) -> torch.Tensor:
    """One TransformerBlock of Meta's LLaMA-1 (facebookresearch/llama model.py, written from the paper's equations
    and that file's structure) + a final RMSNorm of weight 1, in float64, on Meta-layout weights `w` (wq, wk, wv,
    wo, w1, w2, w3, attention_norm, ffn_norm). Rotary as Meta computes it: adjacent pairs as complex numbers times
    exp(i * pos * theta^(-2j/d)); without RoPE, every rotation is 1."""
    eps = 1e-6

    def rms_norm(h, weight):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight

    B, T, D = x.shape
    hd = D // n_heads
    h = rms_norm(x, w["attention_norm"])
    xq, xk, xv = (h @ w[k].T for k in ("wq", "wk", "wv"))
    xq, xk, xv = (t.view(B, T, n_heads, hd) for t in (xq, xk, xv))
    if rope:
        freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        freqs_cis = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64), torch.outer(torch.arange(T).double(), freqs))
    else:
        freqs_cis = torch.ones(T, hd // 2, dtype=torch.complex128)
    freqs_cis = freqs_cis.view(1, T, 1, hd // 2)
    xq = torch.view_as_real(torch.view_as_complex(xq.reshape(B, T, n_heads, -1, 2).contiguous()) * freqs_cis).flatten(3)
    xk = torch.view_as_real(torch.view_as_complex(xk.reshape(B, T, n_heads, -1, 2).contiguous()) * freqs_cis).flatten(3)
    q, k, v = (t.transpose(1, 2) for t in (xq, xk, xv))
    scores = q @ k.transpose(2, 3) / math.sqrt(hd)
    if causal:
        scores = scores + torch.full((T, T), float("-inf"), dtype=scores.dtype).triu(1)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    h = x + out @ w["wo"].T
    g = rms_norm(h, w["ffn_norm"])
    h = h + (torch.nn.functional.silu(g @ w["w1"].T) * (g @ w["w3"].T)) @ w["w2"].T
    return rms_norm(h, torch.ones(D, dtype=h.dtype))


@pytest.fixture(scope="module")
def llama1_bin(tmp_path_factory):
    """A tiny random LLaMA-1-shaped checkpoint (no GQA, RMSNorm eps 1e-6, theta 1e4) as .bin shards."""
    config = transformers.LlamaConfig(hidden_size=H, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                                      num_key_value_heads=4, rms_norm_eps=1e-6, vocab_size=64)
    torch.manual_seed(2)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = save_bin(model.state_dict(), config, tmp_path_factory.mktemp("llama1") / "bin", "60KB")
    assert len(list(d.glob("pytorch_model-*.bin"))) >= 3
    return d


@pytest.mark.parametrize("pos_emb", ["none", "rope"])
@pytest.mark.parametrize("mask", ["bidirectional", "causal"])
def test_llama_layer_equals_metas_original_block(llama1_bin, pos_emb, mask):
    """Our block (transformers' LlamaDecoderLayer on the HF checkpoint, rotate-half rotary) + unit final norm equals
    Meta's own formulation (interleaved complex rotary on the un-permuted weights) of the same layer."""
    sd = {}
    for f in sorted(llama1_bin.glob("pytorch_model-*.bin")):  # the whole checkpoint, read without bench
        sd.update(torch.load(f, weights_only=True))
    layer, heads = 3, 4
    p = f"model.layers.{layer}."
    names = dict(wq="self_attn.q_proj", wk="self_attn.k_proj", wv="self_attn.v_proj", wo="self_attn.o_proj",
                 w1="mlp.gate_proj", w2="mlp.down_proj", w3="mlp.up_proj", attention_norm="input_layernorm",
                 ffn_norm="post_attention_layernorm")
    meta = {k: sd[p + v + ".weight"].double() for k, v in names.items()}
    meta["wq"], meta["wk"] = _meta_permute_back(meta["wq"], heads), _meta_permute_back(meta["wk"], heads)
    block = load(str(llama1_bin), "last", pos_emb=pos_emb, mask=mask, llm_norm="unit")
    assert block.info["llm.layers"] == str(layer)
    x = torch.randn(2, 9, H, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = block(x)
    want = _meta_llama_block(meta, x.double(), heads, rope=pos_emb == "rope", causal=mask == "causal")
    assert (got.double() - want).abs().max() <= 1e-5
    other = _meta_llama_block(meta, x.double(), heads, rope=pos_emb != "rope", causal=mask == "causal")
    assert (got.double() - other).abs().max() > 1e-3  # the rotary matters: the comparison can fail


# ------------------------------------------------------------------------------------------------- memory

MEM_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from bench.config import RunConfig, override, resolve
    from bench.models.llm import load_llm_block

    def booster(source, layer, **knobs):
        sets = {"booster.variant": "rllm", "booster.source": source, "booster.layer": layer, **knobs}
        return resolve(override(RunConfig(), sets)).booster

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    load_llm_block(booster(sys.argv[2], 0))  # warm-up on a tiny model: imports and code paths
    try:
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        before, peak = status("VmRSS"), lambda: status("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    block = load_llm_block(booster(sys.argv[1], 5, **{"booster.llm_norm": "none"}))
    extra = peak() - before
    layer = sum(p.numel() * p.element_size() for p in block.parameters())
    print(json.dumps({"extra": extra, "layer": layer, "layer_params": sum(p.numel() for p in block.parameters())}))
""")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_loading_one_layer_costs_about_its_own_bytes(tmp_path, saved, fmt):
    """16 bf16 layers of hidden 512 in 8 shards, loaded as fp32 (as LLaMA's fp16/bf16 checkpoints are): one layer
    (~13 MiB) must not cost more than 1.5x its bytes. Converting the dtype touches every byte loaded, so loading the
    whole model (even lazily mmapped) would show here as ~300 MiB; with .bin shards, keeping the read pages of the
    shard's mapping would show as 1.5x + the overhead."""
    from safetensors.torch import save_file

    config = transformers.LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=16,
                                      num_attention_heads=8, num_key_value_heads=8, vocab_size=256)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in transformers.LlamaForCausalLM(config).state_dict().items()}
    groups: dict[str, dict] = {}
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    for k, shape in shapes.items():
        i = int(k.split(".")[2]) // 2 if k.startswith("model.layers.") else 8
        groups.setdefault(f"{stem}-{i + 1:05d}-of-00009.{fmt}", {})[k] = shape
    weight_map, total = {}, 0
    for fname, tensors in groups.items():
        sd = {k: torch.full(s, 0.01, dtype=torch.bfloat16) for k, s in tensors.items()}
        if fmt == "safetensors":
            save_file(sd, str(tmp_path / fname), {"format": "pt"})
        else:
            torch.save(sd, tmp_path / fname)
        weight_map.update(dict.fromkeys(tensors, fname))
        total += sum(torch.Size(s).numel() for s in tensors.values())
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (tmp_path / index).write_text(json.dumps({"metadata": {"total_size": 2 * total}, "weight_map": weight_map}))
    config.save_pretrained(tmp_path)

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", MEM_SCRIPT, str(tmp_path), str(saved("llama")[0])], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert total > 16 * r["layer_params"]
    print(f"{fmt}: one layer {r['layer'] / 2**20:.1f} MiB, peak memory +{r['extra'] / 2**20:.1f} MiB")
    assert r["extra"] <= 1.5 * r["layer"], f"loading one layer raised peak memory by {r['extra'] / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm_x():
    return torch.randn(2, 10, 384, generator=torch.Generator().manual_seed(0))


def test_minilm_loads(minilm_x):
    assert (minilm_dir() / "config.json").is_file() and (minilm_dir() / "model.safetensors").is_file()
    block = load("minilm-l6", -1)
    assert block.hidden_size == 384 == llm_hidden_size("minilm-l6")
    with torch.no_grad():
        y = block(minilm_x)
    assert y.shape == minilm_x.shape and torch.isfinite(y).all()
    info = block.info
    assert info["llm.source"] == str(minilm_dir())
    assert info["llm.model_type"] == "bert" and info["llm.layers"] == "5"
    assert info["llm.hidden_size"] == 384 and info["llm.num_hidden_layers"] == 6
    assert abs(info["llm.params"] - 22.7e6) < 0.1e6
    assert info["llm.file_hash"] == hashlib.sha256((minilm_dir() / "model.safetensors").read_bytes()).hexdigest()


def test_minilm_knobs_change_the_output(minilm_x):
    with torch.no_grad():
        base = load("minilm-l6", 2)(minilm_x)
        causal = load("minilm-l6", 2, mask="causal")(minilm_x)
        rope = load("minilm-l6", 2, pos_emb="rope")(minilm_x)
    assert not torch.allclose(base, causal, atol=1e-3)
    torch.testing.assert_close(base[:, -1], causal[:, -1], atol=1e-4, rtol=1e-4)  # the last token sees everything
    assert not torch.allclose(base, rope, atol=1e-3)


def test_minilm_pretrained_norm_is_an_error():
    with pytest.raises(BenchError, match="BERT has no final norm"):
        load("minilm-l6", -1, llm_norm="pretrained")


def test_random_init_is_seeded_and_differs(minilm_x):
    rng = torch.random.get_rng_state()
    a = load("minilm-l6", -1, init="random", seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng), "random init must not move the global RNG"
    b = load("minilm-l6", -1, init="random", seed=0)
    c = load("minilm-l6", -1, init="random", seed=1)
    p = load("minilm-l6", -1)
    sa, sb, sc, sp = (m.state_dict() for m in (a, b, c, p))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.0.attention.self.query.weight"], sc["layers.0.attention.self.query.weight"])
    assert not torch.equal(sa["layers.0.attention.self.query.weight"], sp["layers.0.attention.self.query.weight"])
    w = sa["layers.0.intermediate.dense.weight"]
    assert abs(w.std().item() - 0.02) < 0.002  # BERT's _init_weights: normal(0, initializer_range)
    assert torch.equal(sa["layers.0.output.LayerNorm.weight"], torch.ones(384))
    assert a.info["llm.file_hash"] == "" and a.info["llm.params"] == p.info["llm.params"]
    with torch.no_grad():
        assert not torch.allclose(a(minilm_x), p(minilm_x))


def test_random_init_rope_table_is_random_too(saved):
    d = str(saved("gpt2")[0])
    a = load(d, 1, init="random", pos_emb="rope", seed=3)
    p = load(d, 1, pos_emb="rope")
    assert a.pos_table.shape == p.pos_table.shape and not torch.equal(a.pos_table, p.pos_table)


# --------------------------------------------------------------------------------------------------- errors


def test_unknown_local_source():
    with pytest.raises(BenchError, match="does not exist"):
        load("/no/such/model/dir", 0)


def test_layer_out_of_range():
    for layer, n in [(6, 1), (-7, 1), (5, 2)]:
        for call in (load, lambda *a: check_block(booster(*a))):  # a grid's preflight says what loading would
            with pytest.raises(BenchError, match="has 6 layers") as e:
                call("minilm-l6", layer, n)
            assert "\n" not in str(e.value)


def test_relative_layers_of_a_llama_config_in_loading_checks_and_cost(tmp_path, fixture_root):
    """A LLaMA-7B-deep config (32 layers; config only): first/middle/last/fractions resolve against its depth when
    loading, in `bench run`'s preflight and in `--dry-run`'s offline check, and price as the index they name."""
    from bench.cost import run_flops
    from bench.run import check_offline, preflight

    transformers.LlamaConfig(hidden_size=H, intermediate_size=96, num_hidden_layers=32, num_attention_heads=4,
                             vocab_size=64).save_pretrained(tmp_path / "llama")
    d = tmp_path / "llama"
    for layer, num_layers, want in [("first", 1, "0"), ("middle", 1, "16"), ("last", 1, "31"), ("0.25", 1, "8"),
                                    ("last", 2, "30,31"), ("1.0", 1, "31"), (1, 1, "1")]:  # round(f * (32 - num_layers))
        assert load(d, layer, num_layers, init="random").info["llm.layers"] == want
        check_block(booster(d, layer, num_layers))
    root = fixture_root("breastmnist", n=(8, 4, 4))

    def run(layer, num_layers=1):
        sets = {"booster.variant": "rllm", "booster.source": str(d), "booster.layer": layer,
                "booster.num_layers": num_layers, "booster.init": "random"}  # a config-only folder: no weights
        return resolve(override(RunConfig(), sets))

    preflight([run("middle"), run("last")], root, download=False)
    assert check_offline([run("middle"), run("0.5", 3)], root) == []
    assert run_flops(run("last")) == run_flops(run(31)) == run_flops(run("first")) is not None
    for check in (lambda: check_block(run("last", 33).booster), lambda: check_offline([run("last", 33)], root),
                  lambda: preflight([run("middle", 33)], root)):
        with pytest.raises(BenchError, match="booster.num_layers=33 is more than the 32 layers of"):
            check()


def test_bad_knobs():
    """Field values are refused by the config alone, before any LLM is read; what needs the LLM, by the block."""
    with pytest.raises(BenchError, match="booster.mask='diagonal' is not one of bidirectional, causal"):
        booster("minilm-l6", 0, mask="diagonal")
    with pytest.raises(BenchError, match="num_layers must be >= 1"):
        booster("minilm-l6", 0, 0)
    with pytest.raises(BenchError, match="random-init"):
        booster("minilm-l6", 0, init="random", llm_norm="pretrained")
    with pytest.raises(BenchError, match="revision applies to hub ids only"):
        check_block(booster("minilm-l6", 0, revision="v1"))
    with pytest.raises(ValueError, match="resolved"):  # unresolved, llm_norm=None would silently mean no norm
        load_llm_block(BoosterConfig(variant="rllm", source="minilm-l6"))


def test_pretrained_norm_needs_a_final_norm(tmp_path):
    transformers.OPTConfig(hidden_size=H, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                           do_layer_norm_before=False).save_pretrained(tmp_path)  # OPT-350m style
    with pytest.raises(BenchError, match="no final layer norm"):
        load(str(tmp_path), 0, llm_norm="pretrained")


def test_unsupported_architecture(tmp_path):
    transformers.T5Config(d_model=32, num_layers=2, num_heads=2, d_ff=64, vocab_size=32).save_pretrained(tmp_path)
    with pytest.raises(BenchError, match="t5 model; supported model types: llama, qwen2, mistral, gpt2, opt, bert"):
        load(str(tmp_path), 0)
    with pytest.raises(BenchError, match="supported model types"):
        llm_hidden_size(str(tmp_path))


def test_missing_weights(tmp_path, saved):
    src, _ = saved("llama")
    only_config = tmp_path / "cfg"
    only_config.mkdir()
    shutil.copy(src / "config.json", only_config)
    with pytest.raises(BenchError, match="no model.safetensors"):
        load(str(only_config), 0)
    assert llm_hidden_size(str(only_config)) == H  # config only
    check_block(booster(only_config, 0))  # so is the preflight check

    holed = tmp_path / "holed"
    shutil.copytree(src, holed)
    index = json.loads((holed / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.3.mlp.up_proj.weight"]
    (holed / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(BenchError, match=r"missing weights: .* lacks model\.layers\.3\.mlp\.up_proj\.weight"):
        load(str(holed), 3)
    load(str(holed), 2)  # the other layers are intact

    liar = tmp_path / "liar"  # GPT-2 tensors under a llama config: no llama-named tensors at all
    shutil.copytree(saved("gpt2")[0], liar)
    shutil.copy(src / "config.json", liar / "config.json")
    with pytest.raises(BenchError, match="missing weights"):
        load(str(liar), 0)


# ------------------------------------------------------------------------------------------------------ hub


class FakeHub:
    """hf_hub_download served from a local checkpoint in the hub cache layout (snapshots/<sha>/file)."""

    SHA = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, src: Path, cache: Path):
        self.src, self.snap, self.calls = src, cache / "models--org--tiny" / "snapshots" / self.SHA, []
        self.snap.mkdir(parents=True)

    def __call__(self, repo_id, filename, *, revision=None, **kw):
        from huggingface_hub.errors import EntryNotFoundError

        self.calls.append((repo_id, filename, revision))
        if not (self.src / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        shutil.copy(self.src / filename, self.snap / filename)
        return str(self.snap / filename)


def _offline_metadata(*a, **k):
    raise ConnectionError("offline")


def test_hub_downloads_only_what_the_layer_needs(tmp_path, saved, monkeypatch):
    import huggingface_hub

    src, n_params = saved("llama")
    hub = FakeHub(src, tmp_path)
    monkeypatch.setattr(source, "hf_hub_download", hub)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", _offline_metadata)
    block = load("org/tiny", 4, revision="v1.0")
    got = [f for _, f, _ in hub.calls]
    assert got[:2] == ["config.json", "model.safetensors.index.json"]
    assert sorted(got[2:]) == _shards_holding(src, r"model\.layers\.4\.")
    assert hub.calls[0][2] == "v1.0" and all(r == FakeHub.SHA for _, _, r in hub.calls[1:])  # pinned to the commit
    assert block.info["llm.source"] == f"org/tiny@{FakeHub.SHA}"
    total = json.loads((src / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert block.info["llm.params"] == total // 4 == n_params  # offline: estimated from the index
    local = load(str(src), 4)
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), local.state_dict().values(), strict=True))
    assert block.info["llm.file_hash"] == local.info["llm.file_hash"]

    def online_metadata(repo_id, revision=None, **k):  # what the hub answers from the shards' headers
        assert repo_id == "org/tiny" and revision == FakeHub.SHA
        files = {f: types.SimpleNamespace(tensors={n: types.SimpleNamespace(dtype=v["dtype"], shape=v["shape"])
                                                   for n, v in checkpoint.read_header(f).items()})
                 for f in src.glob("model-*.safetensors")}
        return types.SimpleNamespace(files_metadata=files)

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", online_metadata)
    assert load("org/tiny", -1).info["llm.params"] == n_params

    hub.calls.clear()
    assert llm_hidden_size("org/tiny") == H and [f for _, f, _ in hub.calls] == ["config.json"]
    hub.calls.clear()
    load("org/tiny", 4, init="random")
    assert not any(f.startswith("model-") for _, f, _ in hub.calls), "init=random reads no checkpoint tensors"


def _raiser(exc):
    def download(*a, **k):
        raise exc

    return download


def test_hub_unknown_repo(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    response = types.SimpleNamespace(headers={}, request=None, status_code=404)
    monkeypatch.setattr(source, "hf_hub_download", _raiser(RepositoryNotFoundError("404", response=response)))
    with pytest.raises(BenchError, match="not a local directory, not minilm-l6, and the hub has no repo") as e:
        load("org/does-not-exist", 0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("exc", ["connection", "local-entry"])
def test_hub_unreachable(monkeypatch, exc):
    from huggingface_hub.errors import LocalEntryNotFoundError

    err = ConnectionError("Name or service not known") if exc == "connection" else LocalEntryNotFoundError("x")
    monkeypatch.setattr(source, "hf_hub_download", _raiser(err))
    with pytest.raises(BenchError, match=r"cannot reach the Hugging Face hub .* booster\.source=DIR") as e:
        load("meta-llama/Llama-2-7b-hf", -1)
    assert "download meta-llama/Llama-2-7b-hf --include config.json" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BenchError, match="cannot reach"):
        llm_hidden_size("meta-llama/Llama-2-7b-hf")
