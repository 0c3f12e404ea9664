"""Adding a backbone is one registry entry: a made-up one is then a valid vit.arch with its own rules in the
config's error messages, builds with the booster at its site, is priced by the cost estimate exactly as torch
counts its FLOPs, and shows in `bench list`."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench import cli, cost
from bench.config import RunConfig, override, resolve
from bench.data import task_spec
from bench.errors import BenchError
from bench.models.build import build_model
from bench.models.registry import BACKBONES, Backbone


def toy_vit(vit, size, patch, in_chans, num_classes, is_3d):
    return VisionTransformer(img_size=size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
                             embed_dim=48, depth=vit.depth, num_heads=2, mlp_ratio=2.0)


TOY = Backbone(toy_vit, dims=(2,), width=48, heads=2, attention=48, mlp=96, depth=3, sizes=(28,))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(BACKBONES, "toy", TOY)  # the one entry
    return "toy"


def test_a_new_backbone_is_a_choice_with_its_own_rules(toy):
    with pytest.raises(BenchError, match=r"vit.arch='nope' is not one of tiny, .*vivit-l, toy$"):
        override(RunConfig(), {"vit.arch": "nope"})
    assert resolve(override(RunConfig(), {"vit.arch": toy})).vit.depth == 3  # the entry's depth
    with pytest.raises(BenchError, match=r"^vit.arch=toy is a 2D backbone; for a 3D task use one of tiny, small, "
                                         r"base, vit3d-s, .*vivit-l$"):
        resolve(override(RunConfig(), {"vit.arch": toy, "data.task": "adrenalmnist3d"}))
    with pytest.raises(BenchError, match=r"^vit.arch=toy takes data.size 28, not 64; set data.size"):
        resolve(override(RunConfig(), {"vit.arch": toy, "data.size": 64}))
    with pytest.raises(BenchError, match=r"^vit.pretrained: vit.arch=toy has no ImageNet weights; use one of tiny, "
                                         r"small, base or drop"):
        resolve(override(RunConfig(), {"vit.arch": toy, "vit.pretrained": True}))


def test_a_new_backbone_builds_boosted_and_costs_what_torch_counts(toy, tiny_llm):
    cfg = resolve(override(RunConfig(), {"vit.arch": toy, "booster.variant": "rllm",
                                         "booster.source": str(tiny_llm("llama"))}))
    spec = task_spec(cfg.data.task, cfg.data.size)
    model, _ = build_model(cfg, spec)
    assert len(model.backbone.blocks) == 3 + 1 and model.booster is model.backbone.blocks[-1]
    x = torch.randn(2, 1, 28, 28)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as step:
            model(x).sum().backward()
        with torch.no_grad(), FlopCounterMode(display=False) as forward:
            assert model(x).shape == (2, spec.n_classes)
    m = cost.matmuls(cfg)
    assert m.forward == pytest.approx(forward.get_total_flops() / 2, rel=1e-12)
    assert m.train_step == pytest.approx(step.get_total_flops() / 2, rel=1e-12)


def test_a_new_backbone_shows_in_bench_list(toy, tmp_path, capsys):
    grid = tmp_path / "toy.yaml"
    grid.write_text("defaults: {vit: {arch: toy}}\nseeds: [0, 1]\n")
    assert cli.main(["list", "--grid", str(grid), "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[1:2] == ["-"]]
    assert len(rows) == 2 and all(row[5] == toy for row in rows), out
    flops = 2 * cost.run_flops(resolve(override(RunConfig(), {"vit.arch": toy})))
    assert f"cost, whole grid: 2 runs, {flops:.3g} FLOP" in out
