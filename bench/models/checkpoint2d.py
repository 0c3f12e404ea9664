"""A DeiT / LM4VisualEncoding training checkpoint (`checkpoint.pth`) as the starting weights of a 2D run.

Lai et al.'s 2D runs start with `--resume checkpoint.pth` of LM4VisualEncoding's ImageNet-trained ViT-Small
(baseline) or ViT-Small-LLaMA (R-LLM), loaded strictly into the whole model. The file is a torch pickle of
`model` (the state dict) and, from training, `epoch`, `optimizer`, `lr_scheduler`, `scaler`, `model_ema`, `args`.
Its `model` keys are timm's ViT names (`blocks.N.attn.qkv.weight`, `head.weight`, ...), FE/FD as
`llama_dim_mapper1.weight` / `llama_dim_mapper2.weight` (no bias), and the LLaMA block in Meta's layout:
`llama.layers.I.attention.wq.weight`, ..., `llama.layers.I.feed_forward.w1.weight`, `llama.norm.weight` (the fresh
RMSNorm, frozen at 1). Every tensor is mapped onto our model here; Meta's q/k rows are put in the order Hugging
Face's conversion gives them (per head, the even rows then the odd ones), so the layer equals the one
booster.source holds and rotary position embeddings (booster.pos_emb=rope) keep their meaning.

An R-LLM still builds its layer from booster.source first (its config and tensors; the reference too loads
--llama_path before --resume), so the row's llm.* columns describe that source, and vit.checkpoint_sha256 the file
whose tensors replaced it. Restoring a stored run (bench explain) rebuilds its start, so it needs the file where
the row says it was.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
from pathlib import Path

import torch
from torch import nn

from bench.errors import BenchError, one_line

# Hugging Face LlamaDecoderLayer tensor -> Meta's name inside llama.layers.I
META_LAYER = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
FE_FD = {"fe": "llama_dim_mapper1", "fd": "llama_dim_mapper2"}
LLAMA_NORM = "llama.norm.weight"
RESUME_KEYS = ("optimizer", "lr_scheduler", "epoch")  # all three, or the reference does not resume the schedule


def read_checkpoint(path: str | Path) -> dict:
    """The file's dict, tensors memory-mapped, unpickled with torch's weights_only loader (argparse's Namespace,
    DeiT's `args`, allowed): a file that needs any other code to load is refused, never executed."""
    path = Path(path).expanduser()
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # a legacy (pre-zip) file cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BenchError(f"vit.checkpoint={path} does not exist; give the path of a checkpoint.pth") from None
    except Exception as e:  # noqa: BLE001 - unpickling refused, truncated file, not a torch file: all one message
        raise BenchError(f"vit.checkpoint={path} cannot be read with torch.load(weights_only=True) ({one_line(e, 160)}); "
                         "re-save its tensors: torch.save({'model': ckpt['model'], 'epoch': ckpt['epoch']}, path)"
                         ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise BenchError(f"vit.checkpoint={path} is not a DeiT training checkpoint: it has no 'model' state dict")
    return ckpt


@functools.cache
def _inspect(path: str, size: int, mtime_ns: int) -> tuple[str, int | None]:
    with open(path, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    ckpt = read_checkpoint(path)
    epoch = ckpt.get("epoch") if all(k in ckpt for k in RESUME_KEYS) else None
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise BenchError(f"vit.checkpoint={path} stores epoch={epoch!r}, not an epoch number")
    return sha, epoch


def inspect_checkpoint(path: str) -> tuple[str, int | None]:
    """(sha256 of the file, the epoch it stores when the reference would resume from it, else None); cached per
    process by (path, size, mtime)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BenchError(f"vit.checkpoint={path} does not exist; give the path of a checkpoint.pth "
                         "(docs/cli.md: the paper's starting checkpoints)")
    st = p.stat()
    return _inspect(str(p.resolve()), st.st_size, st.st_mtime_ns)


def head_rows(path: str) -> int:
    """The number of outputs of the checkpoint's classifier (vit.head=pretrained keeps them all)."""
    head = read_checkpoint(path)["model"].get("head.weight")
    if head is None:
        raise BenchError(f"vit.checkpoint={path} has no head.weight; vit.head=pretrained needs the checkpoint's "
                         "classifier: use vit.head=task")
    return int(head.shape[0])


def _hf_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta's q/k projection rows in Hugging Face's order: per head, the even rows, then the odd ones."""
    rows, cols = w.shape
    w = w.reshape(heads, rows // heads, cols)
    return torch.cat((w[:, 0::2], w[:, 1::2]), dim=1).reshape(rows, cols)


def reference_names(model: nn.Module) -> dict[str, str]:
    """{our state-dict key: the checkpoint key it comes from} for every tensor of `model` (an RLLMViT)."""
    backbone = model.backbone
    booster = model.booster
    site = next((name + "." for name, m in backbone.named_modules() if m is booster), None)
    out = {}
    for key in model.state_dict():
        name = key.removeprefix("backbone.")
        if site is None or not name.startswith(site):
            out[key] = name
            continue
        inner = name[len(site):]
        part, _, rest = inner.partition(".")
        if part in FE_FD:
            out[key] = f"{FE_FD[part]}.{rest}"
        elif inner.startswith("llm.layers."):
            idx, _, tensor = inner.removeprefix("llm.layers.").partition(".")
            out[key] = f"llama.layers.{idx}.{META_LAYER.get(tensor, tensor)}"
        elif inner == "llm.norm.weight":
            out[key] = LLAMA_NORM
        else:
            out[key] = f"llama.{inner.removeprefix('llm.')}"
    return out


def load_start(model: nn.Module, path: str, strict: bool = True) -> None:
    """Copy the checkpoint's `model` tensors onto `model` (an RLLMViT built from the run's config), in place.

    strict: a checkpoint tensor with no place in the model, or a model tensor the checkpoint lacks, is a one-line
    BenchError naming it; a shape that differs always is, and so is a checkpoint of which no tensor fits. The LLaMA
    layer's `llama.norm.weight` goes into a pretrained final norm, or must be 1 where the model's norm is
    booster.llm_norm=unit (parameter-free)."""
    sd = read_checkpoint(path)["model"]
    llm = model.booster.llm if model.booster is not None else None
    if llm is not None and any(k.startswith("llama.layers.") for k in sd):
        kinds = {type(layer).__name__ for layer in llm.layers}
        if kinds != {"LlamaDecoderLayer"}:
            raise BenchError(f"vit.checkpoint={path} holds a LLaMA layer (Meta's layout); booster.source builds "
                             f"{', '.join(sorted(kinds))}: use a LLaMA model (e.g. huggyllama/llama-7b)")
    names = reference_names(model)
    ours = model.state_dict()
    consumed = set(names.values())
    if LLAMA_NORM in sd and LLAMA_NORM not in consumed and llm is not None and not list(llm.norm.parameters()):
        if not bool((sd[LLAMA_NORM] == 1).all()):
            raise BenchError(f"vit.checkpoint={path}: {LLAMA_NORM} is not all 1, but booster.llm_norm="
                             "unit/none has no weight to hold it")
        consumed.add(LLAMA_NORM)
    missing = sorted(k for k, ref in names.items() if ref not in sd)
    unexpected = sorted(set(sd) - consumed)
    if strict and (missing or unexpected):
        what = (f"has no {names[missing[0]]} for the model's {missing[0].removeprefix('backbone.')}" if missing
                else f"has {unexpected[0]}, which the model has no place for")
        more = len(missing) + len(unexpected) - 1
        raise BenchError(f"vit.checkpoint={path} {what}" + (f" (and {more} more)" if more else "")
                         + f"; {_hint(missing, unexpected, names)}")
    mapped = {}
    for key, ref in names.items():
        if ref not in sd:
            continue
        t = sd[ref]
        if key.endswith("self_attn.q_proj.weight") or key.endswith("self_attn.k_proj.weight"):
            cfg = llm.layers[0].self_attn.config
            heads = cfg.num_attention_heads if "q_proj" in key else cfg.num_key_value_heads
            t = _hf_rows(t, heads)
        if tuple(t.shape) != tuple(ours[key].shape):
            raise BenchError(f"vit.checkpoint={path}: {ref} is {tuple(t.shape)} but the model's "
                             f"{key.removeprefix('backbone.')} is {tuple(ours[key].shape)}; {_shape_hint(ref)}")
        mapped[key] = t
    if not mapped:  # not strict, and nothing fits: the run would train from scratch while its row names the file
        first = next(iter(names.values()))
        raise BenchError(f"vit.checkpoint={path} has none of the model's {len(names)} tensors (no {first}, ...; it "
                         f"holds {len(sd)} others): vit.checkpoint_strict=false would train from a random init while "
                         "the run names this checkpoint; give a checkpoint of this model (timm ViT names)")
    with torch.no_grad():
        model.load_state_dict(mapped, strict=False)


def _hint(missing: list[str], unexpected: list[str], names: dict[str, str]) -> str:
    if any(names[k].endswith(".bias") and names[k].startswith(tuple(FE_FD.values())) for k in missing):
        return "the reference's FE/FD have no bias: set booster.bias=false"
    if any(k.startswith("llama") for k in unexpected):
        return ("it is an R-LLM (ViT-LLaMA) checkpoint: start booster.variant=rllm from it, or set "
                "vit.checkpoint_strict=false to leave its LLM tensors out")
    if any(names[k].startswith("llama") for k in missing):
        return "it has no LLM layer (a plain ViT checkpoint): start the baseline from it, or an R-LLM from a ViT-LLaMA one"
    return "the checkpoint is not of this model (vit.arch, vit.depth, booster.variant); set vit.checkpoint_strict=false to load what fits"


def _shape_hint(ref: str) -> str:
    if ref == "pos_embed" or ref.startswith("patch_embed."):
        return "the checkpoint was trained at 224 px, patch 16: set vit.paper_mode=true"
    if ref.startswith("head."):
        return "set vit.head=pretrained to keep the checkpoint's classifier (the reference)"
    return "vit.arch or booster.source does not match the checkpoint's model"


def describe_start(cfg) -> str:
    """Where a resolved run's weights start, in words: a training checkpoint (with the schedule epochs it trains),
    timm's pretrained weights, or a random init."""
    from bench.models.backbones import weights_tag

    v, t = cfg.vit, cfg.train
    if v.checkpoint:
        p = Path(v.checkpoint)
        where = f"{p.parent.name}/{p.name}" if p.parent.name else p.name
        span = (f"schedule epochs {t.start_epoch}-{t.start_epoch + t.epochs - 1} of {t.start_epoch + t.epochs}"
                if t.start_epoch else "the whole schedule")
        return f"checkpoint {where} (sha256 {v.checkpoint_sha256[:12]}), {span}"
    tag = weights_tag(v)
    return f"timm {tag} (no vit.checkpoint)" if tag else "a random init"
