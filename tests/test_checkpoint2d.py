"""A DeiT / LM4VisualEncoding training checkpoint as a 2D run's start (bench/models/checkpoint2d.py), the resumed
schedule, and the run id keyed on the file's content."""

import argparse
import shutil

import pytest
import torch
import torch.nn.functional as F
import transformers
from timm.models.vision_transformer import VisionTransformer
from timm.scheduler import CosineLRScheduler

from bench import cli
from bench.config import RunConfig, TrainConfig, override, resolve, run_id
from bench.data import task_spec
from bench.errors import BenchError
from bench.models.build import build_model
from bench.train import learning_rate

WIDTH, DEPTH, HEADS = 192, 2, 3  # vit.arch tiny, 2 blocks: small dims, the reference's key layout


def reference_model_dict(llm_dir=None, seed=0) -> dict:
    """`model` of a checkpoint as LM4VisualEncoding's ViTLLaMA saves it: timm's ViT names (its vit.py uses them),
    FE/FD as llama_dim_mapper1/2 without bias, the LLaMA layer in Meta's names, llama.norm.weight at 1."""
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=1000)
    sd = {k: torch.randn_like(v) for k, v in vit.state_dict().items()}
    if llm_dir is not None:
        c = transformers.AutoConfig.from_pretrained(llm_dir)
        d, kv = c.hidden_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
        shapes = {"attention.wq.weight": (d, d), "attention.wk.weight": (kv, d), "attention.wv.weight": (kv, d),
                  "attention.wo.weight": (d, d), "feed_forward.w1.weight": (c.intermediate_size, d),
                  "feed_forward.w2.weight": (d, c.intermediate_size), "feed_forward.w3.weight": (c.intermediate_size, d),
                  "attention_norm.weight": (d,), "ffn_norm.weight": (d,)}
        sd.update({f"llama.layers.0.{k}": torch.randn(s) for k, s in shapes.items()})
        sd["llama.norm.weight"] = torch.ones(d)
        sd["llama_dim_mapper1.weight"] = torch.randn(d, WIDTH)
        sd["llama_dim_mapper2.weight"] = torch.randn(WIDTH, d)
    return sd


def save(path, model_dict, epoch=299, resumable=True):
    """A DeiT training checkpoint: `model`, and from training its optimizer, scheduler, scaler, epoch and args."""
    ckpt = {"model": model_dict, "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="vit", lr=5e-4)}
    if resumable:
        ckpt.update(optimizer={"state": {}, "param_groups": []}, lr_scheduler={"last_epoch": epoch}, epoch=epoch)
    torch.save(ckpt, path)
    return path


def cfg_for(path, **sets):
    base = {"data.task": "breastmnist", "data.rgb": True, "vit.arch": "tiny", "vit.depth": DEPTH,
            "vit.paper_mode": True, "vit.head": "pretrained", "vit.checkpoint": str(path), "booster.bias": False}
    return resolve(override(RunConfig(), {**base, **sets}))


def hf_permute(w, heads):
    """transformers' convert_llama_weights_to_hf.py `permute`: Meta's q/k rows to Hugging Face's rotate-half order."""
    rows, cols = w.shape
    return w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def test_reference_rllm_checkpoint_lands_tensor_by_tensor(tmp_path, tiny_llm):
    src = tiny_llm("llama")
    ref = reference_model_dict(src)
    cfg = cfg_for(save(tmp_path / "checkpoint.pth", ref), **{"booster.variant": "rllm", "booster.source": str(src),
                                                             "booster.layer": "last"})
    model, _ = build_model(cfg, task_spec("breastmnist", 28))
    c = transformers.AutoConfig.from_pretrained(src)
    booster = model.booster
    layer = booster.llm.layers[0]
    expected = {f"backbone.{k}": v for k, v in ref.items() if not k.startswith("llama")}
    site = f"backbone.blocks.{DEPTH}."  # the booster sits after the last ViT block
    expected[site + "fe.weight"] = ref["llama_dim_mapper1.weight"]
    expected[site + "fd.weight"] = ref["llama_dim_mapper2.weight"]
    meta = {"self_attn.q_proj.weight": hf_permute(ref["llama.layers.0.attention.wq.weight"], c.num_attention_heads),
            "self_attn.k_proj.weight": hf_permute(ref["llama.layers.0.attention.wk.weight"], c.num_key_value_heads),
            "self_attn.v_proj.weight": ref["llama.layers.0.attention.wv.weight"],
            "self_attn.o_proj.weight": ref["llama.layers.0.attention.wo.weight"],
            "mlp.gate_proj.weight": ref["llama.layers.0.feed_forward.w1.weight"],
            "mlp.down_proj.weight": ref["llama.layers.0.feed_forward.w2.weight"],
            "mlp.up_proj.weight": ref["llama.layers.0.feed_forward.w3.weight"],
            "input_layernorm.weight": ref["llama.layers.0.attention_norm.weight"],
            "post_attention_layernorm.weight": ref["llama.layers.0.ffn_norm.weight"]}
    expected.update({f"{site}llm.layers.0.{k}": v for k, v in meta.items()})
    got = model.state_dict()
    assert sorted(got) == sorted(expected)  # every tensor of the model comes from the file
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    assert cfg.vit.checkpoint_sha256 and not cfg.vit.weights
    assert not any(p.requires_grad for p in booster.llm.parameters())  # still the frozen layer

    # and the layer computes what the reference's Meta-layout layer does (no RoPE, no mask), norm at 1 after it
    x = torch.randn(2, 5, c.hidden_size)
    assert torch.allclose(booster.llm(x), meta_layer(ref, x, c), atol=1e-5)


def meta_layer(ref, x, c):
    """LM4VisualEncoding's TransformerBlock (Meta's tensors, no rotary, full attention), then its RMSNorm (weight 1)."""
    w = {k.removeprefix("llama.layers.0."): v for k, v in ref.items() if k.startswith("llama.layers.0.")}
    eps = c.rms_norm_eps

    def rms(h, weight):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight

    B, T, D = x.shape
    hd = D // c.num_attention_heads
    h = rms(x, w["attention_norm.weight"])
    q = (h @ w["attention.wq.weight"].T).view(B, T, -1, hd).transpose(1, 2)
    k = (h @ w["attention.wk.weight"].T).view(B, T, -1, hd).transpose(1, 2)
    v = (h @ w["attention.wv.weight"].T).view(B, T, -1, hd).transpose(1, 2)
    rep = c.num_attention_heads // c.num_key_value_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    att = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5, dim=-1) @ v
    x = x + att.transpose(1, 2).reshape(B, T, D) @ w["attention.wo.weight"].T
    h = rms(x, w["ffn_norm.weight"])
    x = x + (F.silu(h @ w["feed_forward.w1.weight"].T) * (h @ w["feed_forward.w3.weight"].T)) @ w["feed_forward.w2.weight"].T
    return rms(x, ref["llama.norm.weight"])


def test_reference_vit_checkpoint_starts_the_baseline(tmp_path):
    ref = reference_model_dict()
    model, _ = build_model(cfg_for(save(tmp_path / "checkpoint.pth", ref)), task_spec("breastmnist", 28))
    got = model.state_dict()
    assert sorted(got) == sorted(f"backbone.{k}" for k in ref)
    assert all(torch.equal(got[f"backbone.{k}"], v) for k, v in ref.items())


def test_missing_or_unexpected_key_is_one_line_naming_it(tmp_path):
    ref = reference_model_dict()
    del ref["norm.weight"]
    with pytest.raises(BenchError, match=r"has no norm\.weight") as e:
        build_model(cfg_for(save(tmp_path / "a.pth", ref)), task_spec("breastmnist", 28))
    assert "\n" not in str(e.value)
    ref = reference_model_dict()
    ref["llama_dim_mapper1.weight"] = torch.randn(32, WIDTH)  # an R-LLM file for a baseline
    with pytest.raises(BenchError, match=r"has llama_dim_mapper1\.weight.*booster\.variant=rllm"):
        build_model(cfg_for(save(tmp_path / "b.pth", ref)), task_spec("breastmnist", 28))
    # not strict: what fits is loaded, the rest left out
    model, _ = build_model(cfg_for(tmp_path / "b.pth", **{"vit.checkpoint_strict": False}), task_spec("breastmnist", 28))
    assert torch.equal(model.backbone.head.weight, ref["head.weight"])


def test_a_checkpoint_of_which_nothing_fits_is_refused_even_when_not_strict(tmp_path):
    """Issue 34 item 13c: strict=false with no tensor of the model in the file (another model's names) would train
    from a random init under a row naming the file and its sha256."""
    other = {f"encoder.layer.{k}": v for k, v in reference_model_dict().items()}
    path = save(tmp_path / "other.pth", other)
    with pytest.raises(BenchError, match=r"has none of the model's \d+ tensors") as e:
        build_model(cfg_for(path, **{"vit.checkpoint_strict": False, "vit.head": "task"}), task_spec("breastmnist", 28))
    assert "\n" not in str(e.value)


def test_missing_key_through_the_cli_is_exit_2_one_line(tmp_path, fixture_root, capsys):
    ref = reference_model_dict()
    del ref["blocks.1.mlp.fc2.bias"]
    (tmp_path / "vit small").mkdir()
    path = save(tmp_path / "vit small" / "checkpoint.pth", ref)
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nruns:\n  - {data.task: breastmnist, data.rgb: true, vit.arch: tiny, vit.depth: 2, "
                    "vit.paper_mode: true, vit.head: pretrained, train.epochs: 1}\n"
                    "variants:\n  baseline: {booster.variant: baseline}\n")
    results = tmp_path / "results"
    code = cli.main(["run", "--grid", str(grid), "--set", f"baseline:vit.checkpoint={path}", "--data-root",
                     str(fixture_root("breastmnist")), "--results", str(results)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("bench: error: ") and "blocks.1.mlp.fc2.bias" in err and "Traceback" not in err
    assert not results.exists()


def test_run_id_keys_on_the_content_not_the_path(tmp_path):
    a = save(tmp_path / "a.pth", reference_model_dict())
    b = tmp_path / "elsewhere" / "checkpoint.pth"
    b.parent.mkdir()
    shutil.copy(a, b)
    c = save(tmp_path / "c.pth", reference_model_dict(seed=1))
    assert run_id(cfg_for(a)) == run_id(cfg_for(b)) != run_id(cfg_for(c))
    # a config without a checkpoint keeps the id it had before vit.checkpoint existed
    plain = override(RunConfig(), {"data.task": "breastmnist", "train.resume": True})
    assert run_id(plain) == run_id(RunConfig())


def test_resume_reads_the_epoch_as_the_reference_does(tmp_path):
    ref = reference_model_dict()
    assert cfg_for(save(tmp_path / "a.pth", ref), **{"train.resume": True}).train.start_epoch == 300
    # the reference resumes the schedule only when optimizer, lr_scheduler and epoch are all stored
    assert cfg_for(save(tmp_path / "b.pth", ref, resumable=False), **{"train.resume": True}).train.start_epoch == 0
    assert cfg_for(tmp_path / "a.pth").train.start_epoch == 0  # resume off: the whole schedule


@pytest.mark.parametrize("start, warmup", [(300, 5), (0, 5), (300, 0), (2, 5)])
def test_resumed_schedule_is_timms_cosine_stepped_as_deit(start, warmup):
    """DeiT: a fresh CosineLRScheduler (t_initial = --epochs), epochs start..end-1, step(epoch) after each; the
    checkpoint's scheduler state is not restored (the reference comments it out)."""
    epochs, steps = 100, 3
    t = TrainConfig(epochs=epochs, start_epoch=start, lr=1.25e-4, warmup_epochs=warmup, warmup_lr=1e-6, min_lr=1e-5,
                    schedule="cosine_epoch")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    sched = CosineLRScheduler(opt, t_initial=start + epochs, lr_min=t.min_lr, warmup_lr_init=t.warmup_lr,
                              warmup_t=warmup, cycle_limit=1, t_in_epochs=True)
    for i, epoch in enumerate(range(start, start + epochs)):
        for s in range(steps):
            assert learning_rate(t, i * steps + s, steps) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch
        sched.step(epoch)
    if start == 300 and warmup:  # the published 300-epoch checkpoints: ~2.7e-5 falling to ~1e-5 after epoch 300
        assert learning_rate(t, steps, steps) == pytest.approx(2.68e-5, rel=1e-2)


def test_report_pairs_the_rllm_with_its_baseline_across_starting_checkpoints():
    """Table 1's comparison: R-LLM from ViT-Small-LLaMA against the baseline from ViT-Small, same recipe and seed;
    a baseline of another recipe (here: the DeiT-S start) is not its pair."""
    import pandas as pd

    from bench.report.stats import pairs

    rows = [("b-ckpt", "baseline-2d", "baseline", "vit-small.pth", "aaa", "", True),
            ("r-ckpt", "rllm-2d", "rllm", "vit-llama-small.pth", "bbb", "", True),
            ("b-deit", "baseline-2d", "baseline", "", "", "deit_small_patch16_224.fb_in1k", False)]
    ok = pd.DataFrame([dict(run_id=r, label=label, **{"booster.variant": v, "vit.checkpoint": ck,
                                                      "vit.checkpoint_sha256": sha, "vit.weights": w,
                                                      "train.resume": resume},
                            task="breastmnist", size=28, setting="", seed=0, test_acc=0.8, test_auc=0.9)
                       for r, label, v, ck, sha, w, resume in rows])
    got = pairs(ok)
    assert list(zip(got["run_id"], got["run_id_base"])) == [("r-ckpt", "b-ckpt")]
