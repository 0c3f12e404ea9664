"""The cost estimate: bench.cost's matmul FLOPs equal torch's FlopCounterMode on the real models, LLM shapes
come from config.json (or the shipped table) and are never guessed, and `bench list` prices a grid."""

from __future__ import annotations

import json
import re

import pytest

from bench import cli, cost
from bench.config import RunConfig, override, resolve
from bench.data import task_spec
from bench.grid import load_grid


def counted(cfg, batch: int = 2) -> tuple[float, float]:
    """(training step, forward) FLOPs per image that torch.utils.flop_counter counts on the real model.

    Attention runs through SDPA's math backend, so its products are plain batched matmuls that the counter
    sees (the fused CPU kernel is not in its table)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from bench.models.build import build_model

    spec = task_spec(cfg.data.task, cfg.data.size)
    model, _ = build_model(cfg, spec)
    channels = 3 if cfg.data.rgb or spec.n_channels == 3 else 1
    x = torch.randn(batch, channels, *([spec.size] * (3 if spec.is_3d else 2)))
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as step:
            model(x).sum().backward()
        with torch.no_grad(), FlopCounterMode(display=False) as forward:
            model(x)
    return step.get_total_flops() / batch, forward.get_total_flops() / batch


def config(**sets) -> RunConfig:
    return resolve(override(RunConfig(), sets))


@pytest.mark.parametrize("family, sets", [
    ("none", {"vit.arch": "tiny", "vit.depth": 2}),  # 2D ViT at 28 px, patch 4: baseline
    ("llama", {"vit.arch": "small", "vit.depth": 1, "vit.paper_mode": True, "booster.variant": "rllm",
               "booster.layer": 0, "booster.num_layers": 2}),  # 224 px, patch 16, two frozen GQA layers (input gradients only)
    ("bert", {"data.task": "adrenalmnist3d", "vit.arch": "tiny", "vit.depth": 1,
              "booster.variant": "rllm", "booster.freeze": "finetune"}),  # a 3D ViT, a trained BERT layer
])
def test_formula_equals_torch_flop_counter(family, sets, tiny_llm):
    if family != "none":
        sets["booster.source"] = str(tiny_llm(family))
    cfg = config(**sets)
    m = cost.matmuls(cfg)
    step, forward = counted(cfg)
    assert m.forward == pytest.approx(forward, rel=1e-12)
    assert m.train_step == pytest.approx(step, rel=1e-12)


def test_adapters_and_frozen_vs_finetuned_layers(tiny_llm):
    """FE/FD are trained (3x); a frozen layer costs 2x its forward in a step, a fine-tuned one 3x."""
    src = str(tiny_llm("llama"))
    base = cost.matmuls(config())
    adapters = cost.matmuls(config(**{"booster.variant": "adapters", "booster.source": src}))
    frozen = cost.matmuls(config(**{"booster.variant": "rllm", "booster.source": src}))
    tuned = cost.matmuls(config(**{"booster.variant": "rllm", "booster.source": src, "booster.freeze": "finetune"}))
    tokens, width, hidden = 7 * 7 + 1, 192, 32
    fe_fd = 2 * 2 * tokens * width * hidden
    assert adapters.train_step - base.train_step == 3 * fe_fd
    layer = frozen.forward - adapters.forward
    assert tuned.forward == frozen.forward
    attention = 2 * 2 * tokens * tokens * hidden
    assert frozen.train_step - adapters.train_step == 2 * (layer - attention) + 3 * attention
    assert tuned.train_step - adapters.train_step == 3 * layer


def test_the_papers_model_matches_the_mfu_benchmark():
    """ViT-S at 224 + LLaMA-7B's last layer frozen: 192.42 GFLOP per training image, the figure
    benchmarks/gpu_mfu.py checked against FlopCounterMode on a real step (benchmarks/README.md)."""
    cfg = config(**{"vit.arch": "small", "vit.paper_mode": True, "booster.variant": "rllm",
                    "booster.source": "huggyllama/llama-7b"})
    assert cost.matmuls(cfg).train_step / 1e9 == pytest.approx(192.42, abs=0.005)


def test_mfu_is_training_flops_per_second_over_the_peak():
    """The record's 2D model (ViT-tiny/6, patch 7 at 28 px: 17 tokens, width 192, MLP 768, 2 classes) by hand, at
    250 img/s against a 400 GFLOP/s peak; no figure without an img/s or a peak."""
    cfg = config(**{"vit.arch": "tiny", "vit.depth": 6, "vit.patch": 7})
    t, d = 17, 192
    block = 3 * (2 * t * 12 * d * d) + 3 * (2 * 2 * t * t * d)  # qkv + proj + MLP (12 d^2 per token), QK^T and AV
    per_image = 6 * block + 2 * (2 * 16 * 7 * 7 * d) + 3 * (2 * d * 2)  # blocks, patch embedding, head
    assert cost.train_mfu(cfg, 250.0, 400e9) == pytest.approx(250 * per_image / 400e9, rel=1e-12)
    assert cost.train_mfu(cfg, None, 400e9) is None and cost.train_mfu(cfg, 250.0, None) is None


def test_a_run_is_its_epochs_of_training_images_val_passes_and_one_test_pass():
    cfg = config(**{"train.epochs": 3, "train.batch_size": 100})
    m = cost.matmuls(cfg)
    n = task_spec("breastmnist", 28).n_samples  # 546 train, 78 val, 156 test
    assert cost.run_flops(cfg) == 3 * (500 * m.train_step + n["val"] * m.forward) + n["test"] * m.forward
    assert cost.run_flops(override(cfg, {"train.repeated_aug": 3})) == cost.run_flops(cfg)  # same images per epoch
    audit = cost.run_flops(override(cfg, {"train.audit_test": True}))
    assert audit - cost.run_flops(cfg) == 2 * n["test"] * m.forward


def test_lai_3d_backbones():
    """vit3d: 7^3 patches + CLS through 8 blocks with 512-wide attention; vivit-s: 7 groups of 7^2 patches
    (+ CLS each) through 4 spatial blocks, 7 + 1 tokens through 4 temporal ones, the booster on those 8."""
    def block(t, d):
        return 2 * t * d * 3 * 512 + 2 * t * 512 * d + 4 * t * d * d, 4 * t * t * 512

    base = {"data.task": "organmnist3d", "data.rgb": True}
    vit3d = cost.backbone(config(**base, **{"vit.arch": "vit3d-m"}))
    lin, att = block(344, 1024)
    embed, head = 2 * 343 * 3 * 64 * 1024, 2 * 1024 * 11
    # the embedding's Linear follows a LayerNorm with weights: its input gradient is computed too (trained, 3x)
    assert (vit3d.matmuls.trained, vit3d.matmuls.one_gradient, vit3d.matmuls.attention) == (8 * lin + head + embed, 0,
                                                                                          8 * att)
    assert vit3d.booster_tokens == 344
    vivit = cost.backbone(config(**base, **{"vit.arch": "vivit-s"}))
    (sl, sa), (tl, ta) = block(50, 512), block(8, 512)
    assert vivit.matmuls.trained == 7 * 4 * sl + 4 * tl + 2 * 512 * 11 + 2 * 343 * 3 * 64 * 512
    assert vivit.matmuls.attention == 7 * 4 * sa + 4 * ta and vivit.booster_tokens == 8


def test_llm_shapes_from_config_files_else_the_shipped_table_never_guessed(tmp_path, tiny_llm, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    minilm = cost.llm_shape("minilm-l6")
    assert (minilm.model_type, minilm.hidden, minilm.intermediate, minilm.heads, minilm.layers) == ("bert", 384, 1536, 12, 6)
    llama = cost.llm_shape(str(tiny_llm("llama")))
    assert (llama.hidden, llama.intermediate, llama.heads, llama.kv_heads, llama.layers, llama.gated) == (32, 64, 4, 2, 2, True)
    assert cost.llm_shape("Qwen/Qwen2.5-0.5B") == cost.SHIPPED_LLMS["Qwen/Qwen2.5-0.5B"]
    assert cost.llm_shape("someone/unknown-llm") is None
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    assert cost.llm_shape(str(odd)) is None  # a model type this module does not know: unknown, not guessed
    cfg = config(**{"booster.variant": "rllm", "booster.source": "someone/unknown-llm"})
    c = cost.grid_cost([cfg, config()])
    assert c.unknown == {"someone/unknown-llm": 1} and c.flops == cost.run_flops(config())


def test_bench_list_prints_the_cost_and_its_assumption(tmp_path, capsys):
    results = tmp_path / "results"
    assert cli.main(["list", "--grid", "full", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    grid = load_grid("full")
    hours = cost.grid_cost(grid.runs).gpu_hours(cost.GPUS["H200"], 0.4)
    assert f"cost, to run: {len(grid.runs)} runs" in out and f"cost, whole grid: {len(grid.runs)} runs" in out
    assert f"{hours:,.0f} GPU-hours ({hours / 24:,.1f} GPU-days) on one H200, 989 TFLOP/s bf16 dense, at 40% " \
           "utilisation (assumed)" in out
    assert hours > 24 * 7  # weeks, not hours: the reason to print it
    assert cli.main(["list", "--grid", "smoke", "--results", str(results), "--gpu", "A100", "--utilisation", "0.5"]) == 0
    assert re.search(r"on one A100, 312 TFLOP/s bf16 dense, at 50% utilisation \(assumed\)", capsys.readouterr().out)
    assert cli.main(["list", "--grid", "smoke", "--results", str(results), "--utilisation", "40"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--utilisation" in err
    assert not results.exists()
