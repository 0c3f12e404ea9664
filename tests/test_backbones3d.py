"""Lai et al.'s 3D backbones (vit3d-*, vivit-*): parameter counts equal the reference code's, the forward pass is
the reference's (booster included, where the reference puts it), each trains with and without a booster, and
bench.cost's FLOPs equal torch's FlopCounterMode on them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bench import cost
from bench.config import RunConfig, VitConfig, override, resolve
from bench.data import task_spec
from bench.data.loading import SplitData, load_splits
from bench.models.backbones import build_backbone
from bench.models.booster import Booster
from bench.models.build import RLLMViT, build_model
from bench.models.registry import BACKBONES, archs

ARCHS_3D = [a for a in archs(3) if a not in archs(2)]  # Lai et al.'s: volumes only
from bench.train import fit

WIDTH = {"s": 512, "m": 1024, "l": 2048}
LLAMA_7B = 4096  # the reference's FE/FD: Linear(dim, 4096, bias=False), Linear(4096, dim, bias=False)


def reference_params(arch: str, depth: int, channels: int = 3, size: int = 28, patch: int = 4, classes: int = 2,
                     d_llm: int = 0) -> int:
    """Trainable parameters of 3D_classification/models/vit3d_llama.py (ViTLLama) and vivit_llama.py (VivitLLama) /
    vivit.py, counted from their definitions; `d_llm` adds FE/FD of that width (0: the baseline). The reference's
    R-LLM models also hold a Linear(dim, dim, bias=False) used only by its `llm_out_nn` mode: left out, as we do
    not build it. The frozen LLaMA layer is not trainable, so not counted (main.py counts requires_grad only)."""
    d, inner = WIDTH[arch[-1]], 8 * 64  # heads=8, dim_head=64
    patch_dim = channels * patch**3
    frames, per_frame = size // patch, (size // patch) ** 2
    ln = lambda n: 2 * n
    embed = ln(patch_dim) + patch_dim * d + d + ln(d)  # Rearrange, LayerNorm, Linear, LayerNorm
    attention = ln(d) + d * 3 * inner + inner * d + d  # norm, to_qkv (no bias), to_out (Linear with bias)
    feed_forward = ln(d) + (d * d + d) + (d * d + d)  # LayerNorm, Linear(dim, mlp_dim = dim), Linear(mlp_dim, dim)
    layer = attention + feed_forward
    if arch.startswith("vit3d"):  # pos (1, N + 1, dim), cls, Transformer without a final norm, head LayerNorm + Linear
        total = embed + (frames * per_frame + 1) * d + d + depth * layer + ln(d) + d * classes + classes
    else:  # pos (1, F, N, dim), spatial and temporal cls, two Transformers each ending in a norm, head Linear
        total = embed + frames * per_frame * d + 2 * d + 2 * (depth * layer + ln(d)) + d * classes + classes
    return total + 2 * d * d_llm


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS_3D)
@pytest.mark.parametrize("boosted", [False, True])
def test_parameter_counts_equal_the_reference_code(arch, boosted):
    """Every width, the arch's own depth (vit3d 8; vivit-s 4 + 4, -m 8 + 8, -l 16 + 16 as the reference's
    vivit_llm_large; its baseline vivit_large has 8 + 8), at the paper's 28^3 x 3 channels, with and without
    FE/FD of LLaMA-7B's width. Built on the meta device: no memory for vivit-l's 400M parameters."""
    depth = BACKBONES[arch].depth
    with torch.device("meta"):
        backbone = build_backbone(VitConfig(arch=arch, depth=depth), 28, 3, 2, is_3d=True)
        booster = Booster(backbone.embed_dim, LLAMA_7B, "mlp", bias=False) if boosted else None
        model = RLLMViT(backbone, booster, frozen_llm=False, site=BACKBONES[arch].booster_site)
    assert trainable(model) == reference_params(arch, depth, d_llm=LLAMA_7B if boosted else 0)


@pytest.mark.parametrize("arch, size", [("vit3d-m", 64), ("vivit-s", 64), ("vivit-m", 28)])
def test_parameter_counts_at_64_and_one_channel_with_a_frozen_llm_layer(arch, size, tiny_llm):
    """Through build_model: grey volumes (1 channel), 8^3 tubelets at 64 (vit.patch auto); the frozen LLM layer is
    not trainable, FE/FD (paper: no biases) are."""
    sets = {"data.task": "adrenalmnist3d", "data.size": size, "vit.arch": arch, "vit.depth": 1,
            "booster.variant": "rllm", "booster.source": str(tiny_llm("llama")), "booster.bias": False}
    model, _ = build_model(resolve(override(RunConfig(), sets)), task_spec("adrenalmnist3d", size))
    patch = {28: 4, 64: 8}[size]
    assert trainable(model) == reference_params(arch, 1, channels=1, size=size, patch=patch, d_llm=32)
    llm = model.llm_parameters()
    assert sum(p.numel() for p in llm) > 0 and not any(p.requires_grad for p in llm)


def _tubelets(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, D/p, (H/p)(W/p), p*p*p*C), each tubelet in the reference's (p_h, p_w, p_d, c) order."""
    t = x.unfold(2, p, p).unfold(3, p, p).unfold(4, p, p)  # b c F Gh Gw pd ph pw
    b, _, f, gh, gw = t.shape[:5]
    return t.permute(0, 2, 3, 4, 6, 7, 5, 1).reshape(b, f, gh * gw, -1)


def _ln(x, norm):
    return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, eps=1e-5)  # torch's nn.LayerNorm, as the reference


def _block(blk, x):
    """The reference's x = attn(x) + x; x = ff(x) + x with 8 heads of 64, written out."""
    q, k, v = (_ln(x, blk.norm1) @ blk.attn.qkv.weight.T).chunk(3, dim=-1)
    heads = lambda t: t.unflatten(-1, (8, 64)).transpose(1, 2)
    a = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) * 64**-0.5, dim=-1) @ heads(v)
    x = x + F.linear(a.transpose(1, 2).flatten(2), blk.attn.proj.weight, blk.attn.proj.bias)
    mlp = blk.mlp
    return x + F.linear(F.gelu(F.linear(_ln(x, blk.norm2), mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)


def _reference_forward(bb, booster, x, patch):
    """vit3d_llama.ViTLLama / vivit_llama.VivitLLama's forward with llm_in (FD(FL(FE z) + FE z)), by hand."""
    e = bb.patch_embed
    t = _ln(F.linear(_ln(_tubelets(x, patch), e.norm_in), e.proj.weight, e.proj.bias), e.norm)  # (B, F, N, d)
    b, f, n, d = t.shape
    boost = (lambda z: booster.fd(booster.llm(booster.fe(z)) + booster.fe(z))) if booster else (lambda z: z)
    if hasattr(bb, "spatial_blocks"):  # ViViT
        t = torch.cat([bb.cls_token.expand(b, f, 1, d), t + bb.pos_embed], dim=2).reshape(b * f, n + 1, d)
        for blk in bb.spatial_blocks:
            t = _block(blk, t)
        t = torch.cat([bb.temporal_cls_token.expand(b, 1, d), _ln(t, bb.spatial_norm)[:, 0].reshape(b, f, d)], dim=1)
        for blk in bb.blocks:
            t = _block(blk, t)
        return bb.head(boost(_ln(t, bb.norm))[:, 0])
    t = torch.cat([bb.cls_token.expand(b, 1, d), t.flatten(1, 2)], dim=1) + bb.pos_embed
    for blk in bb.blocks:
        if blk is not booster:
            t = _block(blk, t)
    return bb.head(_ln(boost(t), bb.norm)[:, 0])  # ViT-3D: booster before the head's LayerNorm


@pytest.mark.parametrize("arch", ["vit3d-s", "vivit-s"])
@pytest.mark.parametrize("variant", ["baseline", "rllm"])
def test_forward_is_the_reference_with_the_booster_where_it_puts_it(arch, variant, tiny_llm):
    spec = task_spec("adrenalmnist3d", 28)
    sets = {"data.task": "adrenalmnist3d", "vit.arch": arch, "vit.depth": 2, "booster.variant": variant,
            "booster.source": str(tiny_llm("llama")), "booster.bias": False}
    model = build_model(resolve(override(RunConfig(), sets)), spec)[0].eval()
    bb = model.backbone
    assert (model.booster is not None) == (variant == "rllm")
    assert all(blk.attn.qkv.bias is None and blk.attn.qkv.weight.shape == (3 * 512, 512) for blk in bb.blocks[:2])
    x = torch.rand(2, 1, 28, 28, 28)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 2) and torch.equal(bb.forward_head(bb.forward_features(x)), logits)
        torch.testing.assert_close(logits, _reference_forward(bb, model.booster, x, 4), rtol=1e-4, atol=1e-4)


def _cfg(task: str, arch: str, variant: str, src: str, **sets) -> RunConfig:
    """The paper's 3D recipe (Adam 1e-5 constant, no augmentation, [0, 1] inputs), tiny."""
    base = {"data.task": task, "data.mean": 0.0, "data.std": 1.0, "vit.arch": arch, "vit.depth": 1,
            "train.epochs": 1, "train.batch_size": 4, "train.optimizer": "adam", "train.lr": 1e-5,
            "train.weight_decay": 0.0, "train.schedule": "constant", "train.warmup_epochs": 0, "train.aug": 0,
            "booster.variant": variant, "booster.source": src, "booster.bias": False}
    return resolve(override(RunConfig(), {**base, **sets}))


@pytest.mark.parametrize("arch", ARCHS_3D)
def test_each_backbone_trains_on_a_3d_fixture_with_and_without_the_booster(arch, tiny_llm, fixture_root):
    root = fixture_root("adrenalmnist3d", n=(8, 4, 4))
    spec = task_spec("adrenalmnist3d", 28)
    splits = load_splits(spec, root)
    for variant in ("baseline", "rllm"):
        cfg = _cfg("adrenalmnist3d", arch, variant, str(tiny_llm("llama")))
        r = fit(cfg, splits, spec, torch.device("cpu"))
        assert 0 < r.history[0]["train_loss"] < 100 and r.y_score.shape == (4, 2), variant
        d_llm = 32 if variant == "rllm" else 0
        assert r.metrics["params_trainable"] == reference_params(arch, 1, channels=1, d_llm=d_llm)
        assert (r.metrics["params_frozen"] > 0) == (variant == "rllm")


@pytest.mark.slow
@pytest.mark.parametrize("size", [28, 64])
def test_real_adrenalmnist3d_subset_trains_every_paper_backbone(size, shared_data, tiny_llm):
    """The real file at 28^3 and 64^3 (8^3 tubelets), 16 training volumes, the paper's three backbones at depth 2
    (2 + 2 for ViViT; their full depths take about 2 minutes on 2 CPU cores, 3x this test)."""
    spec = task_spec("adrenalmnist3d", size)
    full = load_splits(spec, shared_data, download=False)
    cut = lambda s, n: SplitData(s.images[:n], s.labels[:n])
    splits = dataclasses.replace(full, train=cut(full.train, 16), val=cut(full.val, 8), test=cut(full.test, 8))
    assert not splits.fixture and splits.train.images.shape[1:] == (1, size, size, size)
    for arch in ("vit3d-m", "vivit-s", "vivit-m"):
        for variant in ("baseline", "rllm"):
            cfg = _cfg("adrenalmnist3d", arch, variant, str(tiny_llm("llama")), **{"data.size": size, "vit.depth": 2,
                                                                                   "train.batch_size": 8})
            r = fit(cfg, splits, spec, torch.device("cpu"))
            assert 0 < r.history[0]["train_loss"] < 100 and 0 <= r.metrics["test_auc"] <= 1, (arch, variant)


def _counted(cfg: RunConfig) -> tuple[float, float]:
    """(training step, forward) FLOPs per volume that torch.utils.flop_counter counts on the real model, attention
    through SDPA's math backend (plain matmuls the counter sees)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    spec = task_spec(cfg.data.task, cfg.data.size)
    model, _ = build_model(cfg, spec)
    x = torch.rand(1, 3 if cfg.data.rgb else 1, *([spec.size] * 3))
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as step:
            model(x).sum().backward()
        with torch.no_grad(), FlopCounterMode(display=False) as forward:
            model(x)
    return step.get_total_flops(), forward.get_total_flops()


@pytest.mark.parametrize("arch, size", [(a, 28) for a in ARCHS_3D] + [("vit3d-s", 64), ("vivit-s", 64)])
@pytest.mark.parametrize("variant", ["baseline", "rllm"])
def test_cost_formula_equals_torch_flop_counter(arch, size, variant, tiny_llm):
    """3 channels (data.rgb, the paper's), FE/FD and a frozen LLaMA-family layer on the booster's tokens."""
    cfg = _cfg("adrenalmnist3d", arch, variant, str(tiny_llm("llama")), **{"data.size": size, "data.rgb": True})
    m = cost.matmuls(cfg)
    step, forward = _counted(cfg)
    assert m.forward == pytest.approx(forward, rel=1e-12)
    assert m.train_step == pytest.approx(step, rel=1e-12)
