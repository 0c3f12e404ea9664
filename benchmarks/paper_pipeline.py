"""Benchmark: training img/s of the paper's 2D step (DeiT's recipe at 224) with our batched pipeline vs the reference
per-sample pipeline, same model, in one run.

    ours       bench.train.Engine.step: the uint8 split resident on the device, `bench.data.augment.Pipeline.train`
               (RandomResizedCrop 0.08-1 bicubic to 224, flip, RandAugment rand-m9-mstd0.5-inc1, ImageNet Normalize,
               RandomErasing 0.25 'pixel', mixup 0.8 / cutmix 1.0 switch 0.5, smoothing 0.1; batched on the device,
               per-sample randomness) -> model -> SoftTargetCrossEntropy -> AdamW
    reference  the paper's code path: each 28-px image as an RGB PIL image (the paper also decodes a JPEG per image;
               left out here, which favours the reference) -> timm `create_transform(224, is_training=True,
               auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic', re_prob=0.25, re_mode='pixel',
               re_count=1)` in DataLoader workers (W, persistent, pinned on CUDA) -> timm `Mixup` (same parameters) on
               the device batch -> the same model, loss, optimizer (and bf16 autocast on CUDA)
    plain      the floor: the same model and step in a plain PyTorch loop on the split resized and normalised once
               (`Pipeline.eval`), one-hot targets: no augmentation, no loader (train_throughput.Plain)
All three at the device's precision (bench.train.precision: bf16 on a CPU with native bf16 too).

Model: timm's vit_small_patch16_224 (3 input channels, 2 classes, random init), and with `--archs small tiny` also
vit_tiny_patch16_224. The three pipelines alternate in blocks of `--steps` steps (`--rounds` times), so each set of
blocks shares the machine's load; reported: img/s per block, the median of each pipeline, the median of the paired
block ratios (the figure judged: goal >= 1.0 on CPU, >= 5x on a GPU), the load average beside every figure. Each
reference block starts its own (non-persistent) workers, as each epoch of the paper's DeiT loader does, and they exit
at its end: persistent workers would prefetch while our block is timed, taking its CPU and handing the reference
ready batches. First, the data pipelines alone (no model): ms per batch, ours vs the reference at W=0.

    .venv/bin/python benchmarks/paper_pipeline.py --archs tiny --batch-size 128 --steps 2 --rounds 3     # CPU
    .venv/bin/python benchmarks/paper_pipeline.py --device cuda --batch-size 128 --steps 20 --archs small tiny
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.config import RunConfig, override, resolve  # noqa: E402
from bench.data import task_spec, write_fixture  # noqa: E402
from bench.data.loading import load_splits  # noqa: E402
from bench.data.augment import Pipeline  # noqa: E402
from bench.train import Engine, autocast, pick_device, precision  # noqa: E402
from train_throughput import Plain  # noqa: E402

DEFAULT_DATA = Path(__file__).parents[1] / "../shared/data/medmnist"
RECIPE = {"vit.paper_mode": True, "data.rgb": True, "data.mean": "0.485,0.456,0.406",
          "data.std": "0.229,0.224,0.225", "train.rrc_scale": "0.08,1.0", "train.interpolation": "bicubic",
          "train.hflip": 0.5, "train.randaug_ops": 2, "train.randaug_magnitude": 9, "train.randaug_std": 0.5,
          "train.erase": 0.25, "train.mixup": 0.8, "train.cutmix": 1.0, "train.mixup_switch": 0.5,
          "train.label_smoothing": 0.1, "train.eval_crop": 0.875, "train.aug": 0, "train.lr": 5e-4 * 128 / 512}


class PilImages(torch.utils.data.Dataset):
    """The split's 28-px images as RGB PIL images through a per-sample transform (module level: picklable)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]).convert("RGB")), int(self.labels[i, 0])


def posterize(img, bits_to_keep, **_):
    """timm's posterize, with 0 bits giving the black image older Pillow gave: Pillow >= 12 refuses bits=0, which timm's
    PosterizeIncreasing asks for at magnitude 10 (N(9, 0.5) reaches it for ~2% of draws); the paper's Pillow did not."""
    from PIL import Image, ImageOps

    return Image.new(img.mode, img.size, 0) if bits_to_keep == 0 else ImageOps.posterize(img, bits_to_keep)


def reference_transform():
    from timm.data import auto_augment, create_transform

    auto_augment.NAME_TO_OP["PosterizeIncreasing"] = posterize  # read when the ops are built, just below
    return create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
                            re_prob=0.25, re_mode="pixel", re_count=1)


def reference_mixup(n_classes: int):
    from timm.data import Mixup

    return Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch", label_smoothing=0.1,
                 num_classes=n_classes)


def make_model(arch: str, device):
    from timm import create_model

    torch.manual_seed(0)
    return create_model(f"vit_{arch}_patch16_224", pretrained=False, in_chans=3, num_classes=2).to(device)


def make_engine(arch: str, cfg: RunConfig, spec, device) -> Engine:
    """bench's Engine around timm's ViT (the grid's model takes its 3-channel stem from data.rgb in build_model)."""
    from timm.loss import SoftTargetCrossEntropy

    model = make_model(arch, device)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr_scale": 1.0}], lr=cfg.train.lr,
                                  weight_decay=0.05, fused=True)
    return Engine(model, model, optimizer, SoftTargetCrossEntropy(), autocast(device, precision(device)),
                  Pipeline(cfg, spec, 224, 2))


class Reference:
    """The per-sample pipeline feeding the same kind of model through the same kind of step."""

    def __init__(self, arch: str, images: np.ndarray, labels: np.ndarray, batch: int, workers: int, lr: float, device):
        from timm.loss import SoftTargetCrossEntropy

        self.device = device
        self.model = make_model(arch, device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.05, fused=True)
        self.criterion = SoftTargetCrossEntropy()
        self.mixup = reference_mixup(2)
        self.autocast = autocast(device, precision(device))
        self.loader = torch.utils.data.DataLoader(
            PilImages(images, labels, reference_transform()), batch_size=batch, shuffle=True, drop_last=True,
            num_workers=workers, pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
        self._it = None

    def start(self) -> None:
        """Fresh workers for a block (as each epoch of DeiT's loader starts them), so they never prefetch while the
        other pipeline is being timed."""
        self._it = iter(self.loader)

    def stop(self) -> None:
        self._it = None  # its workers exit

    def batch(self):
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def step(self) -> None:
        x, y = self.batch()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        x, y = self.mixup(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.criterion(self.model(x), y)
        loss.backward()
        self.optimizer.step()


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn, steps: int, batch: int, start=None, stop=None) -> tuple[float, float]:
    """(img/s, load1) of `steps` calls of fn, between start() and stop() (timed too)."""
    sync(device)
    t0 = time.perf_counter()
    if start:
        start()
    for _ in range(steps):
        fn()
    sync(device)
    seconds = time.perf_counter() - t0
    if stop:
        stop()
    return steps * batch / seconds, os.getloadavg()[0]


def data_only(engine: Engine, x, y, images, labels, batch: int, device, batches: int) -> tuple[float, float]:
    """Median ms per training batch without the model: ours (`Pipeline.train` on the resident split) vs the
    reference at W=0 (per-sample transforms, collate, copy to the device, Mixup)."""
    gen = torch.Generator(device=device).manual_seed(1)
    order = torch.Generator().manual_seed(1)
    ours, ref = [], []
    loader = torch.utils.data.DataLoader(PilImages(images, labels, reference_transform()), batch_size=batch,
                                         shuffle=True, drop_last=True, num_workers=0)
    mixup = reference_mixup(2)
    batches_ref = iter(loader)
    for i in range(batches):
        idx = torch.randperm(len(x), generator=order)[:batch].to(device)
        sync(device)
        t0 = time.perf_counter()
        engine.pipeline.train(x[idx], y[idx], gen)
        sync(device)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if i % len(loader) == 0 and i:
            batches_ref = iter(loader)
        xb, yb = next(batches_ref)
        mixup(xb.to(device), yb.to(device))
        sync(device)
        ref.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ours), 1000 * statistics.median(ref)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--archs", nargs="+", default=["small"], choices=["small", "tiny"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="steps per block")
    p.add_argument("--rounds", type=int, default=2, help="(ours block, reference block) pairs per model")
    p.add_argument("--workers", type=int, default=2, help="the reference's DataLoader workers")
    p.add_argument("--data-batches", type=int, default=5, help="batches of the data-only comparison (0: skip)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    a = p.parse_args(argv)
    device = pick_device(a.device)
    spec = task_spec("breastmnist", 28)
    root = a.data_root
    if not (root / "breastmnist.npz").is_file():
        import tempfile

        root = Path(tempfile.mkdtemp()) / "medmnist"
        write_fixture(root, "breastmnist", 28, n=(546, 78, 156))
    splits = load_splits(spec, root, download=False, splits=("train",))
    images, labels = splits.train.images[:, 0].numpy(), splits.train.labels.numpy()
    x, y = splits.train.images.to(device), splits.train.labels.to(device)
    cfg = resolve(override(RunConfig(), RECIPE))
    batch = a.batch_size
    print(f"# paper_pipeline  {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {machine()}; device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; load1 {os.getloadavg()[0]:.2f}")
    fixture = ", fixture" if splits.fixture else ""
    print(f"# data: {root / 'breastmnist.npz'} ({len(images)} train images, 28 px{fixture}); batch {batch}; "
          f"{a.rounds} rounds of {a.steps} steps per pipeline; reference workers {a.workers}")
    if a.data_batches:
        engine = make_engine(a.archs[0], cfg, spec, device)
        data_ms = data_only(engine, x, y, images, labels, batch, device, a.data_batches)
        print(f"data pipeline alone (median ms per batch of {batch}, load1 {os.getloadavg()[0]:.1f}): ours "
              f"{data_ms[0]:.1f} ms, reference W=0 {data_ms[1]:.1f} ms ({data_ms[1] / data_ms[0]:.1f}x)", flush=True)
    results = []
    for arch in a.archs:
        engine = make_engine(arch, cfg, spec, device)
        ref = Reference(arch, images, labels, batch, a.workers, cfg.train.lr, device)
        gen = torch.Generator(device=device).manual_seed(0)
        order = torch.Generator().manual_seed(0)
        # every step's index drawn up front and copied to the device once (pinned on CUDA), outside the timed steps,
        # as fit draws an epoch's order once: a step's time is the step's, not a host->device copy
        drawn = torch.stack([torch.randperm(len(x), generator=order)[:batch] for _ in range(1 + a.rounds * a.steps)])
        indices = iter((drawn.pin_memory() if device.type == "cuda" else drawn).to(device))

        def ours_step():
            engine.step(x, y, next(indices), cfg.train.lr, gen)

        def ours_block():
            return timed(device, ours_step, a.steps, batch)

        def ref_block():
            return timed(device, ref.step, a.steps, batch, ref.start, ref.stop)

        plain = Plain(make_engine(arch, cfg, spec, device), x, y, batch)  # the floor: no augmentation, no loader
        plain_steps = iter(range(10**9))

        def plain_block():
            return timed(device, lambda: plain.step(next(plain_steps)), a.steps, batch)

        timed(device, ours_step, 1, batch)  # warm-up: first-call costs
        timed(device, ref.step, 1, batch, ref.start, ref.stop)
        plain_block()
        triples = []
        for r in range(a.rounds):
            blocks = [("o", ours_block), ("f", ref_block), ("p", plain_block)]
            blocks = blocks[r % 3:] + blocks[: r % 3]  # rotate which goes first
            got = {k: fn() for k, fn in blocks}
            o, f, pl = got["o"], got["f"], got["p"]
            triples.append((o, f, pl))
            print(f"  vit-{arch} round {r}: ours {o[0]:7.2f} img/s (load1 {o[1]:.1f}), reference {f[0]:7.2f} img/s "
                  f"(load1 {f[1]:.1f}), plain loop {pl[0]:7.2f} img/s (load1 {pl[1]:.1f}); ours/reference "
                  f"{o[0] / f[0]:.2f}x, ours/plain {o[0] / pl[0]:.2f}x", flush=True)
        med = [statistics.median(t[i][0] for t in triples) for i in range(3)]
        paired = statistics.median(o[0] / f[0] for o, f, _ in triples)
        floor = statistics.median(o[0] / pl[0] for o, _, pl in triples)
        loads = [v[1] for t in triples for v in t]
        results.append((arch, *med, paired, floor, min(loads), max(loads)))
    print(f"\n{precision(device)} on {device.type} (bench.train.precision), all three pipelines")
    print("| model | ours img/s | reference img/s | plain loop img/s | ratio of medians | median of paired ratios "
          "ours/reference | ours/plain (the floor, <= 1) | load1 |")
    print("|---|---|---|---|---|---|---|---|")
    for arch, o, f, pl, paired, floor, lo, hi in results:
        print(f"| vit-{arch} | {o:.2f} | {f:.2f} | {pl:.2f} | {o / f:.2f}x | **{paired:.2f}x** | {floor:.2f}x | "
              f"{lo:.1f}-{hi:.1f} |")
    goal = 5.0 if device.type == "cuda" else 1.0
    ok = all(r[4] >= goal for r in results)
    print(f"\ngoal ours/reference >= {goal:g} on {device.type} (median of paired ratios): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
