"""`bench analyze robustness`: every saved 2D run of a grid tested again on MedMNIST-C's corruptions of its test set.

Each task's test images are corrupted once (`bench.analyze.corrupt`: the package's corruptions, severities 1-5,
seed `seed`) and every run of the task is evaluated on the clean and on each corrupted copy, with its own input
pipeline and precision, as its test pass was. One row per (corruption, severity) goes into the store beside the run
(<results>/analyze/robustness/<run_id>.parquet): ACC and AUC as medmnist defines them, and MedMNIST-C's balanced
error (1 - balanced accuracy at threshold 0.5, the package's own `Evaluator` metric) with AlexNet's reference error
for the same corruption, from which the report computes MedMNIST-C's mean balanced error and relative balanced error.

A run whose stored analysis was made of the same training with the same images, corruptions and seed is skipped
(--force redoes it), so an interrupted call resumes. `images` (evenly spaced test images) and `names` (a subset of
corruptions) trade the resolution of the numbers for time; the report says which were used.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from bench.analyze import corrupt
from bench.analyze.runs import analysed, load_probe, progress, sample, saved_runs, test_split
from bench.errors import BenchError
from bench.store import write_analysis

KIND = "robustness"
CLEAN = "clean"
COLUMNS = pa.schema([("corruption", pa.string()), ("severity", pa.int64()), ("acc", pa.float64()),
                     ("auc", pa.float64()), ("error", pa.float64()), ("alexnet_error", pa.float64())])


def robustness(results: Path, expected: pd.DataFrame | None = None, *, tasks: list[str] | tuple = (),
               names: list[str] | tuple = (), images: int | None = None, seed: int = 0, data_root=None,
               device: str = "auto", force: bool = False, log=progress) -> list[str]:
    """Analyse every saved ok 2D run of `expected` (None: the whole store); returns the run ids written."""
    from bench.data import resolve_root
    from bench.train import pick_device

    results = Path(results)
    sample(10, images)  # a bad --images is an error before any work
    runs = saved_runs(results, expected, KIND, tasks)
    for task in runs["task"].unique():
        corrupt.corruptions(task)  # every task is one MedMNIST-C covers, before any work
        unknown = sorted(set(names) - set(corrupt.corruptions(task)))
        if unknown and len(unknown) == len(set(names)):
            raise BenchError(f"--corruption {', '.join(unknown)}: none is one of MedMNIST-C's for {task} "
                             f"({', '.join(corrupt.corruptions(task))})")
    root, dev = resolve_root(data_root), pick_device(device)
    written = []
    for (task, size), task_runs in runs.groupby(["task", "size"], sort=True):
        chosen = [c for c in corrupt.corruptions(task) if not names or c in names]
        todo = [rid for rid in task_runs["run_id"]
                if force or not analysed(results, KIND, rid, _meta(results, rid, images, chosen, seed))]
        log(f"{task}@{size}: {len(task_runs)} saved runs, {len(task_runs) - len(todo)} already analysed, "
            f"{len(todo)} to do; corruptions: {', '.join(chosen)}")
        if not todo:
            continue
        t0 = time.perf_counter()
        test = test_split(_spec(task, size), root, task_runs)
        index = sample(len(test), images)
        sets = _corrupted_sets(test.images[index].numpy(), task, chosen, seed)
        labels = test.labels[index].numpy()
        log(f"  corrupted {len(index)} test images x {len(chosen)} corruptions x 5 severities in "
            f"{time.perf_counter() - t0:.1f} s")
        stacked = np.concatenate([imgs for _, _, imgs in sets])
        for rid in todo:
            t0 = time.perf_counter()
            probe = load_probe(results, rid, dev)
            logits = probe.logits(stacked)
            table = _score(probe.spec, task, labels, logits, sets)
            meta = {**_meta(results, rid, images, chosen, seed), "n_images": str(len(index))}
            write_analysis(results, KIND, rid, table.replace_schema_metadata(meta))
            written.append(rid)
            log(f"  {rid} ({probe.row['label']}, seed {probe.row['seed']}): {len(stacked)} images in "
                f"{time.perf_counter() - t0:.1f} s")
    return written


def _spec(task: str, size: int):
    from bench.data import task_spec

    return task_spec(task, int(size))


def _corrupted_sets(images: np.ndarray, task: str, chosen: list[str], seed: int) -> list[tuple[str, int, np.ndarray]]:
    """[(corruption, severity, uint8 images N x C x H x W)], the clean images first (severity 0)."""
    hwc = images.transpose(0, 2, 3, 1) if images.shape[1] == 3 else images[:, 0]  # the package's PIL layout
    sets = [(CLEAN, 0, images)]
    for name in chosen:
        for s, done in zip(corrupt.SEVERITIES, corrupt.corrupt(hwc, task, name, seed)):
            sets.append((name, s, done.transpose(0, 3, 1, 2) if done.ndim == 4 else done[:, None]))
    return sets


def _score(spec, task: str, labels: np.ndarray, logits, sets) -> pa.Table:
    from medmnistc.eval import Evaluator

    from bench.metrics import evaluate, scores_from_logits

    scores = scores_from_logits(spec.task_type, logits)
    # MedMNIST-C's balanced error, by the package's own Evaluator (threshold 0.5 per label, as its default)
    evaluator = Evaluator(task, labels.tolist(), [], "", "", spec.task_type)
    threshold = [0.5] * labels.shape[1] if spec.task_type.startswith("multi-label") else 0.5
    clean_ref, refs = corrupt.alexnet_errors(task)
    rows, at = [], 0
    for name, severity, imgs in sets:
        part = scores[at: at + len(imgs)]
        at += len(imgs)
        acc, auc = evaluate(spec.task_type, labels, part)
        error = float(evaluator.evaluation_metric(evaluator.true_labels, part, threshold))
        rows.append({"corruption": name, "severity": severity, "acc": acc, "auc": auc, "error": error,
                     "alexnet_error": clean_ref if name == CLEAN else refs[name]})
    return pa.Table.from_pylist(rows, schema=COLUMNS)


def _meta(results: Path, run_id: str, images: int | None, chosen: list[str], seed: int) -> dict[str, str]:
    """What makes a stored analysis this one: the training it probed and the inputs it used."""
    from importlib.metadata import version

    from bench.store import read_run

    row = read_run(results, run_id) or {}
    return {"started_at": str(row.get("started_at")), "images": "all" if images is None else str(images),
            "corruptions": ",".join(chosen), "seed": str(seed), "package": f"medmnistc {version('medmnistc')}"}

