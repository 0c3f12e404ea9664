"""One run, top to bottom: fit on train, select the epoch on val, evaluate test once with its weights.

Nothing about the test split influences any choice: it is touched once, after training, and not at
all when `splits.test` is None (tuning). Knows nothing about grids or files.
"""

from __future__ import annotations

import math
import os
import random
import resource
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from timm.loss import SoftTargetCrossEntropy
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.config import RunConfig, TrainConfig, resolve
from bench.cost import train_mfu
from bench.data import TaskSpec
from bench.data.loading import Splits
from bench.data.augment import Pipeline
from bench.errors import BenchError
from bench.metrics import evaluate, loss_fn, scores_from_logits
from bench.models.backbones import task_logits
from bench.models.build import RLLMViT, build_model
from bench.peak import peak_flops
from bench.upstream import fused_adamw_devices


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf: the run fails, the grid goes on."""


@dataclass
class RunResult:
    metrics: dict  # best_epoch, val/test ACC/AUC, cost, parameter counts, LLM provenance
    history: list[dict]  # one dict per epoch
    y_score: np.ndarray | None  # test probabilities at the selected epoch (N x C)
    y_true: np.ndarray | None  # test labels as in the npz (N x L)
    model: RLLMViT | None = None  # with the selected epoch's weights (saved by the runner when save_weights)


def pick_device(name: str | None = None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise BenchError(f"--device {name}: there is no GPU {device.index}, torch sees {n} (cuda:0"
                         + (f" to cuda:{n - 1}" if n > 1 else "") + "; CUDA_VISIBLE_DEVICES narrows them); use one of "
                         "those or --device cuda")
    return device


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles, oneDNN's bf16 kernels); elsewhere torch
    converts bf16 to fp32 and back, slower than fp32 itself."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def precision(device: torch.device) -> str:
    """The autocast dtype of a run on `device`: bf16 where the GPU computes it natively (compute capability >= 8.0:
    A100, H100, L40S, RTX 30xx+), fp16 with a GradScaler on older tensor-core GPUs (V100, T4: there bf16 is only
    emulated, several times slower), fp32 on GPUs without tensor cores; on CPU bf16 where it is native
    (`cpu_bf16_native`: the record's models train 2.0-2.5x faster per step, with the same val AUC curves;
    benchmarks/README.md), else fp32."""
    if device.type == "cpu":
        return "bf16" if cpu_bf16_native() else "fp32"
    if device.type != "cuda":
        return "fp32"
    with torch.cuda.device(device):
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16"
        return "fp16" if torch.cuda.get_device_capability() >= (7, 0) else "fp32"


def autocast(device: torch.device, dtype: str):
    """`precision`'s autocast on `device` (fp32 master weights: only the matmuls run in bf16 / fp16), reusable; a null
    context at fp32."""
    if dtype == "fp32":
        return nullcontext()
    if device.type == "cpu" and dtype == "bf16":
        return _CPUBf16()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


class _CPUBf16:
    """bf16 autocast on CPU, with scaled_dot_product_attention on its math backend (bmm and softmax, bf16 under
    autocast): torch's CPU flash-attention backward is ~8x slower in bf16 than in fp32 at the record's 17 tokens (43%
    of a step); the math path makes bf16 ~2x faster than fp32 there instead of ~1.4x (benchmarks/README.md, "The CPU path").
    fp32 keeps the flash kernel, which is faster there."""

    def __enter__(self):
        self._stack = ExitStack()
        self._stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        self._stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


def set_determinism(on: bool) -> None:
    """train.deterministic: torch's deterministic algorithms (an op without one raises), cuDNN without autotuning,
    and cuBLAS's fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts: set here before a run's first
    matmul, or in the environment). Off again for a run without it."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: RLLMViT, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (or Adam, whose decay is L2) without decay on biases, norms and embeddings; a fine-tuned LLM layer
    at lr * lr_mult.

    Frozen parameters are left out, so they carry no gradients and no optimizer state.
    """
    llm_ids = {id(p) for p in model.llm_parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and not name.endswith(("pos_embed", "cls_token"))
        groups.setdefault((decay, id(p) in llm_ids), []).append(p)
    lr_mult = cfg.booster.lr_mult or 1.0
    param_groups = [
        {"params": ps, "weight_decay": cfg.train.weight_decay if decay else 0.0, "lr_scale": lr_mult if is_llm else 1.0}
        for (decay, is_llm), ps in groups.items()
    ]
    optimizer = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.train.optimizer]
    return optimizer(param_groups, lr=cfg.train.lr, fused=_fused_adamw(device))


def _fused_adamw(device: torch.device) -> bool:
    """Fused Adam(W) wherever torch has the kernels: CUDA, and the CPU too (torch >= 2.4), where the default would be
    the single-tensor loop (~6x slower on ViT-tiny's 5M parameters: 200 ms vs 35 ms a step on 2 cores)."""
    return device.type in fused_adamw_devices()


def learning_rate(t: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The lr of optimizer step `step` (0-based, of this run) under `train.schedule`.

    The schedule is train.start_epoch + train.epochs long and the run trains its epochs from train.start_epoch on
    (the tail of it when resuming a checkpoint's schedule; all of it from 0).
    cosine        per step: linear warm-up from warmup_lr over warmup_epochs, then cosine to min_lr
    cosine_epoch  per epoch, as DeiT drives timm's CosineLRScheduler (the paper's 2D code): the cosine runs over
                  all epochs (warm-up included, t_initial = the schedule's length), and `scheduler.step(e)` after
                  epoch e sets the lr of epoch e + 1, so epoch e trains at the schedule's value for e - 1 and the
                  first epoch trained at the scheduler's initial lr (warmup_lr with a warm-up, else lr), also when
                  it starts at start_epoch > 0 (the reference's resume: a fresh scheduler, not the checkpoint's)
    constant      lr throughout, after the linear warm-up if warmup_epochs > 0
    """
    total = t.start_epoch + t.epochs
    if t.schedule == "cosine_epoch":
        first = step // steps_per_epoch == 0
        if first and t.warmup_epochs > 0:
            return t.warmup_lr
        e = 0 if first else t.start_epoch + step // steps_per_epoch - 1
        if e < t.warmup_epochs:
            return t.warmup_lr + e * (t.lr - t.warmup_lr) / t.warmup_epochs
        return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * e / total))
    step += t.start_epoch * steps_per_epoch
    warmup = round(t.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return t.warmup_lr + (t.lr - t.warmup_lr) * (step + 1) / warmup
    if t.schedule == "constant":
        return t.lr
    progress = (step - warmup) / max(1, total * steps_per_epoch - warmup)
    return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(n: int, repeats: int, generator: torch.Generator) -> torch.Tensor:
    """The training images of one epoch, in order: a permutation; with `repeats` = k (DeiT's repeated
    augmentation), the first n/k images of a permutation, each k times in a row, n in all."""
    perm = torch.randperm(n, generator=generator)
    return perm if repeats == 1 else perm.repeat_interleave(repeats)[:n]


@dataclass
class Engine:
    """Everything one training step touches. `fit` builds one per run; benchmarks/train_throughput.py and
    benchmarks/gpu_mfu.py time this same object, so the benchmarks measure the real step."""

    model: RLLMViT
    forward: Callable  # the model, or its torch.compile wrapper (train.compile)
    optimizer: torch.optim.Optimizer
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # on the pipeline's targets, in fp32
    autocast: object  # `autocast(device, precision(device))`
    pipeline: Pipeline  # uint8 batches -> model inputs (and targets), on the device
    scaler: torch.amp.GradScaler | None = None  # fp16 only: loss scaling against underflowing gradients

    def step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, lr: float,
             generator: torch.Generator | None, chunk: int | None = None) -> torch.Tensor:
        """One optimizer step on the batch `x[idx]`, `y[idx]` (uint8 images and labels already on the device),
        augmented on the device by the pipeline (outside autocast: its resampling stays fp32), in micro-batches of
        `chunk` with gradient accumulation (mixup / cutmix then mix within each micro-batch).

        Returns the batch's mean loss as a detached device tensor: nothing here waits for the device (no
        `.item()`, no host copies), so the host queues the next step while the device runs this one.
        """
        batch = len(idx)
        chunk = chunk or batch
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        for j in range(0, batch, chunk):
            sub = idx[j : j + chunk]
            inputs, targets = self.pipeline.train(x[sub], y[sub], generator)
            with self.autocast:
                logits = self.forward(inputs)  # fp32: the head runs outside autocast (FP32Linear)
            loss = self.criterion(logits, targets)
            scaled = loss * (len(sub) / batch)
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total = scaled.detach() if total is None else total + scaled.detach()
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return total


def build_engine(cfg: RunConfig, spec: TaskSpec, device: torch.device) -> tuple[Engine, dict]:
    """The model (on `device`, compiled if train.compile), its optimizer, loss, autocast and input pipeline for a
    resolved config; also the LLM provenance `build_model` returns."""
    model, llm_info = build_model(cfg, spec)
    model.to(device)
    forward = torch.compile(model) if cfg.train.compile else model
    optimizer = make_optimizer(model, cfg, device)
    pipeline = Pipeline(cfg, spec, *model_io(model, spec))
    # soft targets (mixup / cutmix) carry the label smoothing already, as with timm's Mixup + SoftTargetCrossEntropy
    smoothing = cfg.train.label_smoothing
    criterion = SoftTargetCrossEntropy() if pipeline.soft_targets else loss_fn(spec.task_type, smoothing)
    dtype = precision(device)
    scaler = torch.amp.GradScaler(device.type) if dtype == "fp16" else None
    return Engine(model, forward, optimizer, criterion, autocast(device, dtype), pipeline, scaler), llm_info


def model_io(model: RLLMViT, spec: TaskSpec) -> tuple[int, int]:
    """(input side, number of outputs) of the built model: its patch embedding's image size (224 in paper mode; a
    volume's side in 3D) and its head's width (1000 with vit.head=pretrained, where soft targets must span every
    output), read from the model so the pipeline feeds whatever was built."""
    backbone = model.backbone
    size = spec.size if spec.is_3d else backbone.patch_embed.img_size[0]
    return size, getattr(backbone, "num_classes", spec.n_classes)


@torch.inference_mode()
def predict(model, pipeline: Pipeline, images: torch.Tensor, batch_size: int, autocast, n_classes: int
            ) -> torch.Tensor:
    """The task's `n_classes` logits of each image (the first K of a pretrained 1000-way head: `task_logits`)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        inputs = pipeline.eval(images[i : i + batch_size])
        with autocast:
            out.append(task_logits(model(inputs).float(), n_classes))
    return torch.cat(out)


def fit(
    cfg: RunConfig,
    splits: Splits,
    spec: TaskSpec,
    device: torch.device,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
    micro_batch: int | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> RunResult:
    """Train one config. `on_epoch(epoch, val_auc)` may raise to stop (pruning);
    `micro_batch` splits each batch with gradient accumulation (same effective batch, less memory)."""
    cfg = resolve(cfg)
    t = cfg.train
    set_determinism(t.deterministic)
    seed_everything(cfg.seed)
    engine, llm_info = build_engine(cfg, spec, device)
    model, forward, autocast, pipeline = engine.model, engine.forward, engine.autocast, engine.pipeline
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    x_train, y_train = splits.train.images.to(device), splits.train.labels.to(device)
    x_val = splits.val.images.to(device)
    y_val = splits.val.labels.numpy()
    if t.audit_test and splits.test is None:
        raise BenchError("train.audit_test evaluates the test split every epoch; it cannot run without it "
                         "(bench tune never loads test: drop train.audit_test there)")
    audit = (splits.test.images.to(device), splits.test.labels.numpy()) if t.audit_test else None
    n = len(x_train)
    batch = min(t.batch_size, n)
    steps_per_epoch = n // batch  # drop the ragged last batch: every step sees a full batch
    chunk = micro_batch or batch
    shuffle = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed)

    history, best, best_state, step, train_s = [], None, None, 0, 0.0
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}  # never change: no need to copy
    for epoch in range(t.epochs):
        model.train()
        perm = epoch_order(n, t.repeated_aug, shuffle).to(device)
        loss_sum = torch.zeros((), device=device)
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            lr = learning_rate(t, step, steps_per_epoch)
            loss_sum += engine.step(x_train, y_train, perm[i * batch : (i + 1) * batch], lr, aug_gen, chunk)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_s = time.perf_counter() - t0
        train_s += epoch_s
        train_loss = (loss_sum / max(1, steps_per_epoch)).item()
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"train loss is {train_loss} at epoch {epoch}")

        val_logits = predict(forward, pipeline, x_val, t.eval_batch_size, autocast, spec.n_classes)
        val_score = scores_from_logits(spec.task_type, val_logits)
        val_acc, val_auc = evaluate(spec.task_type, y_val, val_score)
        record = dict(epoch=epoch, train_loss=train_loss, val_acc=val_acc, val_auc=val_auc, lr=lr, epoch_s=epoch_s)
        if audit is not None:  # the protocol audit: recorded for the report, never used for any choice below
            record["test_acc"], record["test_auc"] = evaluate(spec.task_type, audit[1], scores_from_logits(
                spec.task_type, predict(forward, pipeline, audit[0], t.eval_batch_size, autocast, spec.n_classes)))
        history.append(record)
        key = (_finite(val_auc), _finite(val_acc))
        if best is None or key > best[0]:  # best val AUC, ties broken by val ACC, earliest wins
            best = (key, epoch)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen}
        if progress:
            progress(epoch, record)
        if on_epoch:
            on_epoch(epoch, val_auc)

    model.load_state_dict(best_state, strict=False)
    best_epoch = best[1]
    img_per_s = steps_per_epoch * batch * len(history) / train_s if train_s > 0 else None
    metrics = dict(
        best_epoch=best_epoch,
        val_acc=history[best_epoch]["val_acc"],
        val_auc=history[best_epoch]["val_auc"],
        test_acc=None,
        test_auc=None,
        epochs_run=len(history),
        train_s=train_s,
        train_img_per_s=img_per_s,
        mfu=train_mfu(cfg, img_per_s, peak_flops(device, precision(device))),
        peak_mem_bytes=_peak_mem(device),
        params_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        params_frozen=sum(p.numel() for p in model.parameters() if not p.requires_grad),
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        micro_batch=chunk,
        **llm_info,
    )
    y_score = y_true = None
    if splits.test is not None:
        y_true = splits.test.labels.numpy()
        x_test = splits.test.images.to(device)
        test_logits = predict(forward, pipeline, x_test, t.eval_batch_size, autocast, spec.n_classes)
        y_score = scores_from_logits(spec.task_type, test_logits)
        metrics["test_acc"], metrics["test_auc"] = evaluate(spec.task_type, y_true, y_score)
    return RunResult(metrics, history, y_score, y_true, model)


def _finite(x: float) -> float:
    return x if x is not None and math.isfinite(x) else -math.inf


def _peak_mem(device: torch.device) -> int:
    """CUDA: the run's peak allocated bytes; CPU: the process's peak RSS (covers earlier runs in the process)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
