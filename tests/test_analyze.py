"""`bench analyze`: MedMNIST-C corruptions as the package makes them, token activation maps and their scores
against values computed by hand, MedMNIST-C's mBE/rBE against the package's Evaluator, a real BreastMNIST grid
analysed end to end (and shown by the report), and the report's independence from model code."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench import cli, store
from bench.analyze import corrupt
from bench.analyze.tokens import concentration, token_norms, top_overlap
from bench.errors import BenchError
from bench.store import layout

pytest.importorskip("medmnistc", reason="the `robustness` extra: pip install --no-deps medmnistc wand")
try:  # medmnistc imports, but its corruptions draw through wand, which needs ImageMagick's library
    corrupt.corruptions("breastmnist")
except BenchError as e:
    pytest.skip(str(e), allow_module_level=True)

ROOT = Path(__file__).parents[1]


# ----------------------------------------------------------------------------- the report builds no model
def test_the_report_imports_no_model_training_or_data_loading_code():
    code = ("import importlib, pkgutil, sys, bench.report as r\n"
            "for m in pkgutil.walk_packages(r.__path__, 'bench.report.'): importlib.import_module(m.name)\n"
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.split())
    assert "bench.report.robustness" in loaded and "bench.report.tokens" in loaded  # the walk did import them
    # what bench.config reads is allowed: the task metadata and the torch-free tables of what can be built
    metadata = ("bench.models", "bench.models.registry", "bench.models.families")
    banned = {m for m in loaded if m == "torch" or m.startswith(("bench.train", "bench.analyze", "bench.data.loading",
                                                                  "bench.data.augment"))
              or (m.startswith("bench.models") and m not in metadata)}
    assert not banned
    for path in (ROOT / "bench" / "report").glob("*.py"):  # nor inside a function
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert name in metadata or not name.startswith(("bench.train", "bench.models", "bench.analyze")), \
                    (path, name)  # the report asks the torch-free registry what a variant is
                assert not name.startswith("bench.data") or name == "bench.data.info", (path, name)


# ----------------------------------------------------------------------------- corruptions
def test_a_corruption_equals_the_package_dataset_managers_own_output(tmp_path, shared_data, monkeypatch):
    """The package's DatasetManager, run on a stand-in for medmnist's dataset class holding the real test images,
    writes the same images as `corrupt` (seed 0): pixelate (deterministic), then speckle noise (numpy's global
    generator, whose stream starts at the seed for the first random corruption in both)."""
    import medmnist
    from medmnistc import dataset_manager
    from medmnistc.corruptions.registry import CORRUPTIONS_DS

    images = np.load(shared_data / "breastmnist.npz")["test_images"][:12]

    class Stand:
        def __init__(self, **kw):
            self.imgs, self.labels = images, np.zeros((len(images), 1), int)

    monkeypatch.setattr(medmnist, "BreastMNIST", Stand, raising=False)
    chosen = ("pixelate", "speckle_noise")
    monkeypatch.setattr(dataset_manager, "CORRUPTIONS_DS",
                        {"breastmnist": {k: CORRUPTIONS_DS["breastmnist"][k] for k in chosen}})
    manager = dataset_manager.DatasetManager(str(tmp_path), str(tmp_path / "c"), random_seed=0)
    manager.create_single_dataset("breastmnist")
    for name in chosen:
        theirs = np.load(tmp_path / "c" / "breastmnist" / f"{name}.npz")["test_images"]
        ours = corrupt.corrupt(images, "breastmnist", name, seed=0)
        assert ours.shape == (5, *images.shape)
        np.testing.assert_array_equal(ours.reshape(theirs.shape), theirs)
    assert not np.array_equal(ours[0], images) and not np.array_equal(ours[4], ours[0])  # it did corrupt


def test_motion_blur_keeps_the_images_shape_and_grey_rgb_layout(shared_data):
    grey = np.load(shared_data / "breastmnist.npz")["test_images"][:3]
    rgb = np.load(shared_data / "retinamnist.npz")["test_images"][:3]
    assert corrupt.corrupt(grey, "breastmnist", "motion_blur").shape == (5, 3, 28, 28)
    blurred = corrupt.corrupt(rgb, "retinamnist", "motion_blur")
    assert blurred.shape == (5, 3, 28, 28, 3)
    # a blur: neighbouring pixels differ less than in the image
    assert np.abs(np.diff(blurred[4].astype(float), axis=2)).mean() < np.abs(np.diff(rgb.astype(float), axis=2)).mean()


# ----------------------------------------------------------------------------- token maps and scores
def test_token_norms_of_a_hand_built_model():
    """A 1-block ViT whose block is the identity (its attention and MLP outputs zeroed), patch embedding c * (sum of
    the patch's pixels) and no position embedding: a patch token is c * S_p, its norm |S_p| * ||c||; an mlp booster
    FD(FE z) with FE = I, FD = 2 I doubles it."""
    from timm.models.vision_transformer import VisionTransformer

    from bench.models.booster import Booster
    from bench.models.build import RLLMViT

    vit = VisionTransformer(img_size=8, patch_size=4, in_chans=1, embed_dim=4, depth=1, num_heads=1, num_classes=2)
    c = torch.tensor([1.0, -2.0, 0.5, 3.0])
    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
        vit.patch_embed.proj.weight.copy_(c[:, None, None, None].expand(4, 1, 4, 4))
        vit.blocks[0].norm1.weight.fill_(1)
        vit.blocks[0].norm2.weight.fill_(1)
    booster = Booster(4, 4, "mlp", None, bias=False)
    with torch.no_grad():
        booster.fe.weight.copy_(torch.eye(4))
        booster.fd.weight.copy_(2 * torch.eye(4))
    x = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 1, 8, 8) / 10 - 3
    sums = x.reshape(2, 2, 4, 2, 4).sum(dim=(2, 4)).numpy()  # (image, patch row, patch col)
    expected = np.abs(sums) * float(c.norm())

    before, after = token_norms(RLLMViT(vit, None, frozen_llm=False).eval(), x)
    np.testing.assert_allclose(before, expected, rtol=1e-5)
    np.testing.assert_array_equal(after, before)  # no booster: the same place
    vit2 = VisionTransformer(img_size=8, patch_size=4, in_chans=1, embed_dim=4, depth=1, num_heads=1, num_classes=2)
    vit2.load_state_dict(vit.state_dict())
    before, after = token_norms(RLLMViT(vit2, booster, frozen_llm=False).eval(), x)
    np.testing.assert_allclose(before, expected, rtol=1e-5)
    np.testing.assert_allclose(after, 2 * expected, rtol=1e-5)


def test_concentration_and_overlap_of_constructed_maps():
    m = np.ones((1, 10, 10))
    m[0, 0, :] = 9  # 10 tokens (the top 10% of 100) hold 90 of 180
    assert concentration(m)[0] == pytest.approx(0.5)
    assert concentration(np.ones((1, 7, 7)))[0] == pytest.approx(5 / 49)  # flat: top ceil(4.9) = 5 of 49
    cam = np.zeros((1, 10, 10))
    cam[0, 0, :5] = 1  # half of m's top tokens
    cam[0, 5, :5] = 1
    assert top_overlap(m, cam)[0] == pytest.approx(0.5)
    assert np.isnan(top_overlap(m, np.zeros((1, 10, 10)))[0])


def test_mbe_and_rbe_equal_the_package_evaluator():
    from medmnistc.eval import Evaluator

    from bench.analyze.robustness import _score
    from bench.data import task_spec
    from bench.report.robustness import per_run

    spec = task_spec("breastmnist", 28)
    rng = np.random.default_rng(1)
    n, names = 40, ["pixelate", "speckle_noise", "brightness_up"]
    labels = rng.integers(0, 2, (n, 1))
    sets = [("clean", 0, np.zeros(n))] + [(c, s, np.zeros(n)) for c in names for s in range(1, 6)]
    logits = torch.tensor(rng.normal(size=(n * len(sets), 2)) + labels.repeat(len(sets), 0) * [0, 0.8])
    rows = _score(spec, "breastmnist", labels, logits, sets).to_pandas().assign(run_id="r")
    ours = per_run(rows).loc["r"]

    probs = logits.double().softmax(-1).numpy()
    ev = Evaluator("breastmnist", labels.tolist(), names, "", "", "binary-class")
    ev.evaluate_clean(probs[:n])
    for i, c in enumerate(names):
        ev.evaluate(probs[n + 5 * n * i: n + 5 * n * (i + 1)], c)
    ev.output_log = {}
    ev.populate_summary()
    assert ours["mbe"] == pytest.approx(ev.output_log["metrics"]["be"], rel=1e-12)
    assert ours["rbe"] == pytest.approx(ev.output_log["metrics"]["rbe"], rel=1e-12)


# ----------------------------------------------------------------------------- a real grid, end to end
GRID = """\
name: analyze-ci
defaults:
  data: {{task: breastmnist, size: 28}}
  vit: {{arch: tiny, patch: 7, depth: 1}}
  booster: {{source: {llm}, layer: -1}}
  train: {{epochs: 1, batch_size: 64, eval_batch_size: 256, warmup_epochs: 0}}
variants:
  baseline: {{booster.variant: baseline}}
  mlp: {{booster.variant: mlp}}
  rllm: {{booster.variant: rllm}}
  random-init: {{booster.variant: rllm, booster.init: random}}
seeds: [0, 1]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llm, one_thread):
    """(grid file, data root, results): the real BreastMNIST grid trained once with save_weights."""
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "breastmnist.npz").is_file():
        pytest.skip(f"real MedMNIST files not found at {SHARED_DATA}")
    base = tmp_path_factory.mktemp("analyze")
    llm = Path(shutil.copytree(tiny_llm("llama"), base / "llm"))
    root = SHARED_DATA
    grid = base / "analyze-ci.yaml"
    grid.write_text(GRID.format(llm=llm))
    results = base / "results"
    assert cli.main(["run", "--grid", str(grid), "--data-root", str(root), "--results", str(results),
                     "--set", "save_weights=true"]) == 0
    return grid, root, results


@pytest.mark.slow
def test_a_real_grid_analysed_and_reported(trained, tmp_path, capsys):
    grid, root, results = trained
    out = tmp_path / "reports"
    assert cli.main(["report", "--grid", str(grid), "--results", str(results), "--out", str(out),
                     "--replicates", "0"]) == 0
    page = (out / "analyze-ci" / "index.html").read_text()
    assert "Robustness (MedMNIST-C)" not in page and "Token activations" not in page  # only when present

    base = ["--grid", str(grid), "--results", str(results), "--data-root", str(root), "--device", "cpu"]
    assert cli.main(["analyze", "robustness", *base, "--corruption", "pixelate"]) == 0
    rows = store.read_runs(results)
    for _, run in rows.iterrows():
        got = pd.read_parquet(layout.analysis_path(results, "robustness", run["run_id"]))
        assert list(zip(got["corruption"], got["severity"])) == [("clean", 0)] + [("pixelate", s) for s in range(1, 6)]
        clean = got.iloc[0]  # every test image, clean: the run's own test pass
        assert clean["acc"] == pytest.approx(run["test_acc"], abs=1e-9)
        assert clean["auc"] == pytest.approx(run["test_auc"], abs=1e-9)
    capsys.readouterr()
    assert cli.main(["analyze", "robustness", *base, "--corruption", "pixelate"]) == 0  # resumes: nothing to do
    assert "done: 0 runs analysed" in capsys.readouterr().out

    assert cli.main(["analyze", "tokens", *base, "--images", "4"]) == 0
    for _, run in rows.iterrows():
        maps = store.read_analysis_arrays(results, "tokens", run["run_id"])
        assert maps["before"].shape == maps["after"].shape == maps["cam"].shape == (4, 4, 4)  # 28 px / patch 7
        assert (maps["after"] == maps["before"]).all() == (run["booster.variant"] == "baseline")
        scores = pd.read_parquet(layout.analysis_path(results, "tokens", run["run_id"]))
        np.testing.assert_allclose(scores["conc_after"], concentration(maps["after"]))

    assert cli.main(["report", "--grid", str(grid), "--results", str(results), "--out", str(out),
                     "--replicates", "0"]) == 0
    page = (out / "analyze-ci" / "index.html").read_text()
    assert "Robustness (MedMNIST-C)" in page and 'src="robustness_curves.png"' in page
    assert "Token activations" in page and 'src="tokens_breastmnist28.png"' in page
    assert "Paired Δ on corrupted data" in page and "random-init" in page


@pytest.mark.slow
def test_saved_weights_size_is_the_saved_files_parameter_count(trained):
    import safetensors

    from bench.config import from_flat, resolve
    from bench.cost import saved_params

    _, _, results = trained
    for _, run in store.read_runs(results).iterrows():
        row = store.read_run(results, run["run_id"])
        cfg = resolve(from_flat({k: v for k, v in row.items() if v is not None}))
        with safetensors.safe_open(str(layout.weights_path(results, run["run_id"])), framework="pt") as f:
            n = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118
        assert saved_params(cfg) == n, run["label"]


@pytest.mark.slow
def test_analyze_errors_are_one_line(tmp_path, capsys, trained):
    grid, root, results = trained
    assert cli.main(["analyze", "tokens", "--grid", str(grid), "--results", str(tmp_path / "none"),
                     "--data-root", str(root)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["analyze", "robustness", "--grid", str(grid), "--results", str(results), "--data-root", str(root),
                     "--corruption", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and err.count("\n") == 1
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    assert cli.main(["analyze", "robustness", "--grid", str(grid), "--results", str(results), "--data-root", str(root),
                     "--images", "0"]) == 2
    out = capsys.readouterr()
    assert "--images 0" in out.err and out.err.count("\n") == 1 and not out.out  # refused before any work
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before


@pytest.mark.slow
def test_bench_list_shows_the_disk_the_weights_take(trained, capsys):
    grid, _, results = trained
    capsys.readouterr()
    assert cli.main(["list", "--grid", str(grid), "--results", str(results)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("weights on disk"))
    assert "with --set save_weights=true the 8 runs" in line  # the grid file itself does not save
    files = sum(p.stat().st_size for p in (results / "weights").glob("*.safetensors"))
    amount, unit = line.split(": ")[-1].split()[:2]
    assert float(amount) * {"GB": 1e9, "MB": 1e6}[unit] == pytest.approx(files, rel=0.01)
