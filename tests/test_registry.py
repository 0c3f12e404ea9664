"""Adding a backbone is one registry entry: a made-up one is then a valid vit.arch with its own rules in the
config's error messages, builds with the booster at its site, is priced by the cost estimate exactly as torch
counts its FLOPs, and shows in `bench list`; so is a variant."""

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
from bench.models.registry import BACKBONES, VARIANTS, Backbone, Variant, capacity_control


def toy_vit(vit, size, patch, in_chans, num_classes, is_3d):
    return VisionTransformer(img_size=size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
                             embed_dim=48, depth=vit.depth, num_heads=2, mlp_ratio=2.0)


TOY = Backbone(f"{__name__}:toy_vit", dims=(2,), width=48, heads=2, attention=48, mlp=96, depth=3, sizes=(28,))


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


# ------------------------------------------------------------------- a variant is one registry entry too

MADE_UP = Variant("width", "hybrid", note="FD(FE z + FE z) + z: a made-up control")
DEEP = Variant("layers", note="a made-up variant with LLM layers")


@pytest.fixture
def made_up(monkeypatch):
    monkeypatch.setitem(VARIANTS, "made-up", MADE_UP)  # the one entry
    return "made-up"


@pytest.fixture
def deep(monkeypatch):
    monkeypatch.setitem(VARIANTS, "deep", DEEP)
    return "deep"


def test_a_new_variant_is_a_choice_with_its_rules_and_its_registry_properties(made_up, tiny_llm):
    assert (MADE_UP.needs_llm, MADE_UP.has_layer, MADE_UP.is_baseline) == (True, False, False)
    with pytest.raises(BenchError, match=r"booster.variant='nope' is not one of baseline, adapters, mlp, rllm, "
                                         r"made-up$"):
        override(RunConfig(), {"booster.variant": "nope"})
    with pytest.raises(BenchError, match=r"^variant=made-up needs booster.source"):
        resolve(override(RunConfig(), {"booster.variant": made_up, "booster.source": None}))
    with pytest.raises(BenchError, match=r"^booster.freeze has no meaning for variant=made-up \(no LLM layer\)"):
        resolve(override(RunConfig(), {"booster.variant": made_up, "booster.source": "minilm-l6",
                                       "booster.freeze": "finetune"}))
    assert capacity_control("hybrid") == "adapters"  # still the out-wired one: FD is linear, the inner residual goes


def test_a_new_variant_builds_and_costs_what_torch_counts(made_up, tiny_llm):
    cfg = resolve(override(RunConfig(), {"vit.depth": 2, "booster.variant": made_up,
                                         "booster.source": str(tiny_llm("llama"))}))
    model, _ = build_model(cfg, task_spec(cfg.data.task, cfg.data.size))
    assert model.booster.llm is None and model.booster.residual == "hybrid"  # the entry's wiring
    x = torch.randn(2, 1, 28, 28)
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad(), FlopCounterMode(display=False) as forward:
        model(x)
    assert cost.matmuls(cfg).forward == pytest.approx(forward.get_total_flops() / 2, rel=1e-12)
    assert cost.saved_params(cfg) == sum(p.numel() for p in model.parameters())


def test_a_new_variant_shows_in_a_grid_and_bench_list(made_up, tiny_llm, tmp_path, capsys):
    src = tiny_llm("llama")
    grid = tmp_path / "made.yaml"
    grid.write_text(f"defaults: {{booster: {{source: {src}}}}}\n"
                    f"variants: {{baseline: {{booster.variant: baseline}}, mine: {{booster.variant: {made_up}}}}}\n")
    assert cli.main(["list", "--grid", str(grid), "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    rows = {row[2]: row for row in (line.split() for line in out.splitlines()) if row[1:2] == ["-"]}
    assert set(rows) == {"baseline", "mine"}, out
    # llm, layer: a variant without an LLM layer names no LLM (it takes only its width; issue 34 item 18)
    assert rows["mine"][6:8] == ["-", "-"] and rows["baseline"][6:8] == ["-", "-"]
    flops = cost.run_flops(resolve(override(RunConfig(), {"booster.variant": "baseline"})))
    flops += cost.run_flops(resolve(override(RunConfig(), {"booster.variant": made_up, "booster.source": str(src)})))
    assert f"cost, whole grid: 2 runs, {flops:.3g} FLOP" in out


def test_a_new_layer_variant_is_priced_listed_and_described_as_one(deep, tiny_llm, tmp_path, capsys):
    from bench.run.dispatch import describe

    src = tiny_llm("llama")
    sets = {"vit.depth": 2, "booster.source": str(src), "booster.freeze": "finetune", "label": "mine"}
    cfg = resolve(override(RunConfig(), {**sets, "booster.variant": deep}))
    as_rllm = resolve(override(RunConfig(), {**sets, "booster.variant": "rllm"}))
    frozen = resolve(override(RunConfig(), {**sets, "booster.variant": deep, "booster.freeze": "frozen"}))
    assert cost.saved_params(cfg) == cost.saved_params(as_rllm) > cost.saved_params(frozen)  # its trained layer
    assert cost.run_flops(cfg) == cost.run_flops(as_rllm) > cost.run_flops(frozen)
    assert describe(cfg) == f"mine breastmnist@28 {src.name}@-1 seed=0"
    grid = tmp_path / "deep.yaml"
    grid.write_text(f"defaults: {{booster: {{source: {src}}}}}\nvariants: {{mine: {{booster.variant: {deep}}}}}\n")
    assert cli.main(["list", "--grid", str(grid), "--results", str(tmp_path / "results")]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.split()[1:3] == ["-", "mine"])
    assert row[6:8] == [src.name[:22], "-1"]


@pytest.mark.parametrize("residual", ["in", "out", "hybrid", "none"])
def test_a_capacity_control_is_its_layer_variant_with_the_layer_the_identity(residual):
    """capacity_control(residual), derived from the wirings, computes what the layer variant wired by `residual`
    computes with FL = identity, once FE is scaled for the inner residual (FL(h) + h = 2h)."""
    from torch import nn

    from bench.models.booster import Booster

    torch.manual_seed(0)
    z = torch.randn(2, 5, 8)
    layered = Booster(8, 4, "rllm", residual, nn.Identity())
    control = Booster(8, 4, capacity_control(residual))
    scale = 2.0 if residual in ("in", "hybrid") else 1.0
    with torch.no_grad():
        control.fe.weight.copy_(scale * layered.fe.weight)
        control.fe.bias.copy_(scale * layered.fe.bias)
        control.fd.load_state_dict(layered.fd.state_dict())
    torch.testing.assert_close(control(z), layered(z))
    assert capacity_control(residual) == {"in": "mlp", "none": "mlp", "out": "adapters", "hybrid": "adapters"}[residual]
