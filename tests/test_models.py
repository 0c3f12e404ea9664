"""The R-LLM model: shapes, what trains and what stays frozen, every variant end to end, real data."""

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from bench.config import RunConfig, override, resolve
from bench.data import task_spec
from bench.data.loading import load_splits
from bench.models.build import build_model
from bench.train import fit

FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "opt", "bert"]
RESIDUALS = ["in", "out", "hybrid", "none"]


def cfg_for(task="breastmnist", **sets):
    base = {"data.task": task, "vit.arch": "tiny", "vit.depth": 1, "train.epochs": 1, "train.batch_size": 16, "train.warmup_epochs": 0}
    return resolve(override(RunConfig(), {**base, **sets}))


@pytest.mark.parametrize("task", ["breastmnist", "adrenalmnist3d"])
@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_every_family_and_residual(tiny_llm, family, task):
    spec = task_spec(task, 28)
    x = torch.randn(2, spec.n_channels, *([28] * (3 if spec.is_3d else 2)))
    for residual in RESIDUALS:
        cfg = cfg_for(task, **{"booster.variant": "rllm", "booster.source": str(tiny_llm(family)), "booster.residual": residual})
        model, info = build_model(cfg, spec)
        assert model(x).shape == (2, spec.n_classes)
        assert info["llm.model_type"] == family and info["llm.hidden_size"] == 32


def test_residual_wiring_is_what_the_docs_say(tiny_llm):
    spec = task_spec("breastmnist", 28)
    z = torch.randn(2, 50, 192)
    cfg = cfg_for(**{"booster.variant": "rllm", "booster.source": str(tiny_llm("llama"))})
    booster = build_model(cfg, spec)[0].booster
    fe, fl, fd = booster.fe, booster.llm, booster.fd
    expected = {"in": fd(fl(fe(z)) + fe(z)), "out": fd(fl(fe(z))) + z, "hybrid": fd(fl(fe(z)) + fe(z)) + z, "none": fd(fl(fe(z)))}
    for mode, want in expected.items():
        booster.residual = mode
        torch.testing.assert_close(booster(z), want)


def test_capacity_controls_without_an_llm_layer(tiny_llm):
    """adapters = FD(FE z) + z, mlp = FD(FE z) (the paper's +MLP); bias=false drops both biases (the paper's)."""
    spec = task_spec("breastmnist", 28)
    z = torch.randn(2, 50, 192)
    src = str(tiny_llm("llama"))
    for variant, want in {"adapters": lambda fe, fd: fd(fe(z)) + z, "mlp": lambda fe, fd: fd(fe(z))}.items():
        booster = build_model(cfg_for(**{"booster.variant": variant, "booster.source": src}), spec)[0].booster
        assert booster.llm is None and booster.fe.bias is not None
        torch.testing.assert_close(booster(z), want(booster.fe, booster.fd))
        nobias = build_model(cfg_for(**{"booster.variant": variant, "booster.source": src, "booster.bias": False}),
                             spec)[0].booster
        assert nobias.fe.bias is None and nobias.fd.bias is None
        h = z @ nobias.fe.weight.T
        torch.testing.assert_close(nobias(z), h @ nobias.fd.weight.T + (z if variant == "adapters" else 0))


def test_trunc_normal_adapter_init_is_timms(tiny_llm):
    """The paper's 2D code initialises FE/FD like timm's ViT: trunc_normal(std 0.02) weights, zero biases."""
    spec = task_spec("breastmnist", 28)
    cfg = cfg_for(**{"booster.variant": "rllm", "booster.source": str(tiny_llm("llama")),
                     "booster.adapter_init": "trunc_normal", "vit.arch": "small", "vit.depth": 1})
    booster = build_model(cfg, spec)[0].booster
    w = torch.cat([booster.fe.weight.flatten(), booster.fd.weight.flatten()])
    # timm's bounds -2, 2 are absolute, not in sd units: at sd 0.02 nothing is cut, so this is N(0, 0.02)
    assert abs(w.std().item() - 0.02) < 0.0004 and abs(w.mean().item()) < 0.0004
    assert not booster.fe.bias.any() and not booster.fd.bias.any()
    default = build_model(dataclasses.replace(cfg, booster=dataclasses.replace(cfg.booster, adapter_init="default")),
                          spec)[0].booster
    assert abs(default.fe.weight.std().item() - 1 / 384 ** 0.5 / 3 ** 0.5) < 0.001  # torch's U(+-1/sqrt(fan_in))


@pytest.mark.parametrize(("layer", "num_layers", "want"), [
    ("first", 1, "0"), ("last", 1, "5"), ("middle", 1, "3"), ("0.5", 2, "2,3"), ("last", 2, "4,5"), ("1.0", 1, "5"),
    ("0.2", 1, "1"), (-2, 2, "4,5"),
])
def test_relative_layers_resolve_against_the_llms_depth(layer, num_layers, want):
    """MiniLM's 6 layers: first/middle/last and fractions place the block's start in 0..6-num_layers, halves up."""
    spec = task_spec("breastmnist", 28)
    cfg = cfg_for(**{"booster.variant": "rllm", "booster.source": "minilm-l6",
                     "booster.layer": layer, "booster.num_layers": num_layers})
    assert build_model(cfg, spec)[1]["llm.layers"] == want


def test_runs_differing_only_outside_the_block_share_one_loaded_layer(tiny_llm):
    from bench.models import build

    spec = task_spec("breastmnist", 28)
    rllm = {"booster.variant": "rllm", "booster.source": str(tiny_llm("llama"))}
    build._cached_block.cache_clear()
    a = build_model(cfg_for(**rllm), spec)[0]
    b = build_model(cfg_for(**rllm, **{"booster.residual": "out", "booster.freeze": "finetune", "booster.lr_mult": 0.1}),
                    spec)[0]
    assert (build._cached_block.cache_info().misses, build._cached_block.cache_info().hits) == (1, 1)
    pa, pb = a.llm_parameters(), b.llm_parameters()
    assert pa and all(x is not y and torch.equal(x, y) for x, y in zip(pa, pb, strict=True))  # each run its own copy
    assert not any(p.requires_grad for p in pa) and all(p.requires_grad for p in pb)
    build_model(cfg_for(**rllm, **{"booster.mask": "causal"}), spec)  # a knob inside the block: loaded anew
    assert build._cached_block.cache_info().misses == 2


def _digest(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("freeze", ["frozen", "finetune"])
def test_frozen_layer_is_bit_identical_after_training_finetuned_changes(tiny_llm, fixture_root, freeze, monkeypatch):
    root = fixture_root("breastmnist", n=(32, 16, 16))
    spec = task_spec("breastmnist", 28)
    cfg = cfg_for(**{"booster.variant": "rllm", "booster.source": str(tiny_llm("llama")), "booster.freeze": freeze})
    built = {}

    def spy(cfg, spec):
        model, info = build_model(cfg, spec)
        built["model"] = model
        built["before"] = _digest(model.llm_parameters())
        return model, info

    monkeypatch.setattr("bench.train.build_model", spy)
    result = fit(cfg, load_splits(spec, root), spec, torch.device("cpu"))
    model = built["model"]
    llm = model.llm_parameters()
    others = [p for p in model.parameters() if all(p is not q for q in llm)]
    assert all(p.requires_grad for p in others)
    if freeze == "frozen":
        assert not any(p.requires_grad for p in llm) and all(p.grad is None for p in llm)
        assert _digest(llm) == built["before"]
        assert result.metrics["params_frozen"] == sum(p.numel() for p in llm)
    else:
        assert all(p.requires_grad for p in llm)
        assert _digest(llm) != built["before"]
        assert result.metrics["params_frozen"] == 0


VARIANTS = {
    "baseline": {},
    "adapters": {"booster.variant": "adapters"},
    "rllm": {"booster.variant": "rllm"},
    "finetune": {"booster.variant": "rllm", "booster.freeze": "finetune", "booster.lr_mult": 0.1},
    "random_init": {"booster.variant": "rllm", "booster.init": "random"},
    "rope": {"booster.variant": "rllm", "booster.pos_emb": "rope"},
    "causal": {"booster.variant": "rllm", "booster.mask": "causal"},
    "res_out": {"booster.variant": "rllm", "booster.residual": "out"},
    "res_hybrid": {"booster.variant": "rllm", "booster.residual": "hybrid"},
    "res_none": {"booster.variant": "rllm", "booster.residual": "none"},
    "pretrained_norm": {"booster.variant": "rllm", "booster.llm_norm": "pretrained"},
    "two_layers": {"booster.variant": "rllm", "booster.layer": -2, "booster.num_layers": 2},
    "mlp": {"booster.variant": "mlp", "booster.bias": False},
    "paper_adapters": {"booster.variant": "rllm", "booster.bias": False, "booster.adapter_init": "trunc_normal",
                       "booster.layer": "last"},
}


@pytest.mark.parametrize("task", ["breastmnist", "adrenalmnist3d"])
def test_every_variant_trains_end_to_end(tiny_llm, fixture_root, task):
    root = fixture_root(task, n=(16, 8, 8))
    spec = task_spec(task, 28)
    splits = load_splits(spec, root)
    labels = splits.test.labels[:, 0].numpy()
    for name, sets in VARIANTS.items():
        cfg = cfg_for(task, **{"booster.source": str(tiny_llm("qwen2")), **sets})
        r = fit(cfg, splits, spec, torch.device("cpu"))
        booster, llm = r.model.booster, r.model.llm_parameters()
        assert (booster is None) == (cfg.booster.variant == "baseline"), name  # the variant's model was trained
        assert bool(llm) == (cfg.booster.variant == "rllm"), name
        assert all(p.requires_grad == (cfg.booster.freeze == "finetune") for p in llm), name
        assert math.isfinite(r.history[0]["train_loss"]), name
        # the scores are probabilities and the stored metrics are theirs (binary tasks: medmnist scores P(class 1))
        assert r.y_score.shape == (8, spec.n_classes) and np.allclose(r.y_score.sum(1), 1), name
        assert r.metrics["test_auc"] == pytest.approx(roc_auc_score(labels, r.y_score[:, 1]), abs=1e-12), name
        assert r.metrics["test_acc"] == pytest.approx(accuracy_score(labels, r.y_score[:, 1] > 0.5), abs=1e-12), name


@pytest.mark.slow
def test_real_breastmnist_with_frozen_minilm_layer(shared_data, tmp_path):
    from bench.run import run_one
    from bench.store import read_history, read_run

    cfg = cfg_for(**{"booster.variant": "rllm", "booster.source": "minilm-l6", "vit.depth": 12, "train.epochs": 1,
                     "train.batch_size": 128})
    row = run_one(cfg, shared_data, tmp_path)
    assert row["status"] == "ok", row.get("error")
    stored = read_run(tmp_path, row["run_id"])
    assert stored["llm.model_type"] == "bert" and stored["llm.hidden_size"] == 384 and stored["llm.layers"] == "5"
    assert stored["data.fixture"] == False and stored["params_frozen"] > 1_000_000  # noqa: E712
    losses = read_history(tmp_path, [row["run_id"]])["train_loss"]
    assert len(losses) == 1 and losses.notna().all() and (losses < 10).all()


def test_pretrained_vit_loads_timm_weights_from_a_local_file(tmp_path, monkeypatch):
    """Offline users point BENCH_TIMM_WEIGHTS at timm's file; timm resamples patch and position embeddings."""
    import timm
    from safetensors.torch import save_file

    from bench.config import VitConfig
    from bench.models.backbones import build_backbone
    from bench.models.registry import BACKBONES

    source = timm.create_model(BACKBONES["tiny"].weights.split(".")[0], pretrained=False)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors")
    monkeypatch.setenv("BENCH_TIMM_WEIGHTS", str(tmp_path / "model.safetensors"))
    vit = build_backbone(VitConfig(arch="tiny", pretrained=True), size=28, in_chans=1, num_classes=2, is_3d=False)
    torch.testing.assert_close(vit.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    assert vit.patch_embed.proj.weight.shape == (192, 1, 4, 4) and vit.pos_embed.shape[1] == 50
    assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 2)


def test_pretrained_vit_offline_without_a_file_says_how_to_fix(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from bench.config import VitConfig
    from bench.errors import BenchError
    from bench.models.backbones import build_backbone

    monkeypatch.delenv("BENCH_TIMM_WEIGHTS", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read when huggingface_hub is imported, not from env
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BenchError, match="BENCH_TIMM_WEIGHTS"):
        build_backbone(VitConfig(arch="tiny", pretrained=True), size=28, in_chans=3, num_classes=2, is_3d=False)


def test_paper_mode_is_timms_vit_on_images_upsampled_to_224():
    """vit.paper_mode: a 28-px image is upsampled (bilinear) to 224 and cut into 16-px patches (14x14 + CLS)."""
    import torch.nn.functional as F
    from timm.models.vision_transformer import VisionTransformer

    spec = task_spec("breastmnist", 28)
    model = build_model(cfg_for(**{"vit.paper_mode": True}), spec)[0].eval()
    reference = VisionTransformer(img_size=224, patch_size=16, in_chans=1, num_classes=2, embed_dim=192, depth=1,
                                  num_heads=3).eval()
    reference.load_state_dict(model.backbone.state_dict())  # strict: same shapes, so patch 16 over 224
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        want = reference(F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False))
        assert torch.equal(model(x), want)
        assert not torch.allclose(reference(F.interpolate(x, size=(224, 224), mode="nearest")), want)


def _manual_forward(vit, booster, x, is_3d):
    """Patches + CLS + positions -> the ViT blocks -> FD(FL(FE z) + FE z) -> final norm -> head on CLS, by hand."""
    import torch.nn.functional as F

    w, bias = vit.patch_embed.proj.weight, vit.patch_embed.proj.bias
    t = (F.conv3d if is_3d else F.conv2d)(x, w, bias, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    t = torch.cat([vit.cls_token.expand(len(x), -1, -1), t], dim=1) + vit.pos_embed
    for block in vit.blocks:
        if block is not booster:
            t = block(t)
    if booster is not None:
        h = booster.fe(t)
        t = booster.fd(booster.llm(h) + h)
    return vit.head(vit.norm(t)[:, 0])


@pytest.mark.parametrize("task", ["breastmnist", "adrenalmnist3d"])
@pytest.mark.parametrize("variant", ["baseline", "rllm"])
def test_backbone_interface_and_the_booster_before_the_final_norm(tiny_llm, task, variant):
    spec = task_spec(task, 28)
    cfg = cfg_for(task, **{"vit.depth": 2, "booster.variant": variant, "booster.source": str(tiny_llm("llama"))})
    model = build_model(cfg, spec)[0].eval()
    vit = model.backbone
    assert len(vit.blocks) == 2 + (variant == "rllm") and (model.booster is vit.blocks[-1]) == (variant == "rllm")
    x = torch.randn(2, spec.n_channels, *([28] * (3 if spec.is_3d else 2)))
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(vit(x), logits) and torch.equal(vit.forward_head(vit.forward_features(x)), logits)
        torch.testing.assert_close(logits, _manual_forward(vit, model.booster, x, spec.is_3d))


# ------------------------------------------------------------------------------ vit.weights and vit.head


@pytest.fixture(scope="module")
def deit_tiny_folder(tmp_path_factory):
    """A random deit_tiny_patch16_224 saved where `hf download timm/<tag> --local-dir DIR/<tag>` would put it."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    root = tmp_path_factory.mktemp("timm-weights")
    (root / "deit_tiny_patch16_224.fb_in1k").mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              root / "deit_tiny_patch16_224.fb_in1k" / "model.safetensors")
    return root, source


@pytest.mark.parametrize("head", ["pretrained", "task"])
def test_vit_weights_load_timms_file_and_the_pretrained_head_keeps_1000_outputs(deit_tiny_folder, monkeypatch, head):
    """vit.weights (any timm tag, here without its .fb_in1k) from a local folder: in paper mode (224 px, patch 16)
    every tensor equals the file's, so the ViT computes what timm's own model computes; head=pretrained keeps
    ImageNet's 1000-way classifier (the paper's code), head=task has a new K-way one."""
    from bench.models.backbones import task_logits

    root, source = deit_tiny_folder
    monkeypatch.setenv("BENCH_TIMM_WEIGHTS", str(root))
    spec = task_spec("dermamnist", 28)
    cfg = cfg_for("dermamnist", **{"vit.weights": "deit_tiny_patch16_224", "vit.head": head, "vit.depth": 0,
                                   "vit.paper_mode": True})
    vit = build_model(cfg, spec)[0].backbone.eval()
    want = source.state_dict()
    got = vit.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        if k.startswith("head.") and head == "task":
            assert got[k].shape[0] == spec.n_classes == 7
        else:
            assert torch.equal(got[k], want[k]), k
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        out = vit(x)
        assert out.shape == (2, 1000 if head == "pretrained" else 7)
        if head == "pretrained":
            torch.testing.assert_close(out, source(x))
            # the class scores: the first K logits of the 1000, not the first K columns of a 1000-way softmax
            scores = task_logits(out, 7).softmax(-1)
            torch.testing.assert_close(scores, torch.exp(out[:, :7]) / torch.exp(out[:, :7]).sum(-1, keepdim=True))
            assert not torch.allclose(scores, out.softmax(-1)[:, :7])


def test_vit_weights_at_28_px_resample_the_embeddings(deit_tiny_folder, monkeypatch):
    """Outside paper mode timm resamples the patch (16 -> 4) and position (14x14 -> 7x7) embeddings of the file
    and sums the RGB filters for grey images; the blocks are the file's."""
    root, source = deit_tiny_folder
    monkeypatch.setenv("BENCH_TIMM_WEIGHTS", str(root))
    vit = build_model(cfg_for(**{"vit.weights": "deit_tiny_patch16_224.fb_in1k", "vit.depth": 0}),
                      task_spec("breastmnist", 28))[0].backbone
    assert torch.equal(vit.blocks[7].attn.qkv.weight, source.blocks[7].attn.qkv.weight)
    assert vit.patch_embed.proj.weight.shape == (192, 1, 4, 4) and vit.pos_embed.shape[1] == 50
    assert vit(torch.rand(2, 1, 28, 28)).shape == (2, 2)


def test_vit_weights_missing_offline_is_one_line_before_training(fixture_root, monkeypatch, tmp_path):
    """No file in BENCH_TIMM_WEIGHTS or the hub cache, the hub off: `bench run`'s preflight and --dry-run's check
    fail in one line that says where to put the file; with the hub on, the dry run notes it will be fetched."""
    from huggingface_hub import constants

    from bench.errors import BenchError
    from bench.run import check_offline, preflight

    root = fixture_root("breastmnist", n=(8, 4, 4))
    monkeypatch.setenv("BENCH_TIMM_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = cfg_for(**{"vit.weights": "deit_small_patch16_224.fb_in1k", "vit.arch": "small", "vit.depth": 0})
    for check in (lambda: preflight([cfg], root), lambda: preflight([cfg], root, download=False),
                  lambda: check_offline([cfg], root)):
        with pytest.raises(BenchError, match=r"timm weights deit_small_patch16_224\.fb_in1k are not on this machine"
                                             r".*hf download timm/deit_small_patch16_224\.fb_in1k.*BENCH_TIMM_WEIGHTS="
                           ) as e:
            check()
        assert "\n" not in str(e.value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert any("deit_small_patch16_224.fb_in1k are fetched" in n for n in check_offline([cfg], root))


@pytest.mark.parametrize(("sets", "message"), [
    ({"vit.weights": "deit_small_patch16_224.no_such_tag"}, "is not a timm pretrained tag"),
    ({"vit.weights": "no_such_model"}, "is not a timm pretrained tag"),
    ({"vit.weights": "deit_small_patch16_224"}, r"is a 12-block ViT 384 wide, but vit.arch=tiny .* 192 wide"),
    ({"vit.weights": "resnet18.a1_in1k"}, "is a ResNet"),
])
def test_vit_weights_that_do_not_fit_the_arch(fixture_root, sets, message):
    from bench.errors import BenchError
    from bench.run import check_offline, preflight

    root = fixture_root("breastmnist", n=(8, 4, 4))
    cfg = cfg_for(**{"vit.depth": 0, **sets})
    for check in (lambda: check_offline([cfg], root), lambda: preflight([cfg], root),
                  lambda: build_model(cfg, task_spec("breastmnist", 28))):
        with pytest.raises(BenchError, match=message):
            check()
