"""Saved weights and `bench explain`: a baseline and an R-LLM run trained for real with save_weights (fixture
BreastMNIST, ViT depth 1, a tiny random LLaMA layer, 1 epoch), rebuilt from the store, and their CAM heatmaps
checked against grad-cam called directly here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch

from bench import cli, store
from bench.errors import BenchError
from bench.models import build
from bench.models.restore import load_run_model
from bench.store import layout

GRID = """\
name: explain-ci
defaults:
  data: {{task: breastmnist, size: 28}}
  vit: {{arch: tiny, patch: 7, depth: 1}}
  booster: {{source: {llm}, layer: -1}}
  train: {{epochs: 1, batch_size: 8, eval_batch_size: 64, warmup_epochs: 0}}
variants:
  baseline: {{booster.variant: baseline}}
  rllm: {{booster.variant: rllm}}
seeds: [0]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llm):
    """(grid file, data root, results, LLM dir): the grid run once with save_weights, on a private LLM copy."""
    base = tmp_path_factory.mktemp("explain")
    llm = Path(shutil.copytree(tiny_llm("llama"), base / "llm"))
    root = base / "medmnist"
    from bench.data import write_fixture

    write_fixture(root, "breastmnist", 28, n=(32, 16, 16))
    grid = base / "explain-ci.yaml"
    grid.write_text(GRID.format(llm=llm))
    results = base / "results"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["run", "--grid", str(grid), "--data-root", str(root), "--results", str(results),
                         "--set", "save_weights=true"]) == 0
    finally:
        torch.set_num_threads(threads)
    return grid, root, results, llm


def runs(results: Path) -> dict[str, dict]:
    """{variant: its stored row}."""
    rows = store.read_runs(results)
    return {r["booster.variant"]: store.read_run(results, r["run_id"]) for _, r in rows.iterrows()}


def test_reloaded_model_gives_the_stored_predictions_and_the_frozen_layer_is_not_saved(trained):
    _, root, results, _ = trained
    from bench.data.loading import load_splits
    from bench.train import autocast

    for variant, row in runs(results).items():
        path = layout.weights_path(results, row["run_id"])
        model, _, spec = load_run_model(row, path)
        with safetensors.safe_open(str(path), framework="pt") as f:
            saved = set(f.keys())
        everything = set(model.state_dict())
        llm_keys = {k for k in everything if ".llm." in k}
        assert saved == everything - llm_keys
        assert bool(llm_keys) == (variant == "rllm")
        test = load_splits(spec, root, download=False, splits=("test",)).test
        x = (test.images.float() / 255 - 0.5) / 0.5  # medmnist's ToTensor + Normalize(0.5, 0.5), written out
        with torch.no_grad(), autocast(torch.device("cpu"), row["precision"]):  # as the run's test pass
            y_score = model(x).double().softmax(-1).numpy()
        stored = store.read_predictions(results, row["run_id"])["y_score"]
        np.testing.assert_allclose(y_score, stored, rtol=0, atol=1e-5)


def test_a_changed_frozen_layer_is_refused(trained):
    _, _, results, llm = trained
    row = runs(results)["rllm"]
    checkpoint = llm / "model.safetensors"
    original = checkpoint.read_bytes()
    from safetensors.torch import load_file, save_file

    tensors = load_file(checkpoint)
    key = next(k for k in sorted(tensors) if "layers.1." in k and k.endswith("q_proj.weight"))  # layer -1 of 2
    tensors[key] = tensors[key] + 1e-3
    try:
        save_file(tensors, checkpoint, metadata={"format": "pt"})
        build._cached_block.cache_clear()  # a process keeps loaded layers; a new one would read the new file
        with pytest.raises(BenchError, match="hash differently"):
            load_run_model(row, layout.weights_path(results, row["run_id"]))
    finally:
        checkpoint.write_bytes(original)
        build._cached_block.cache_clear()


def test_explain_writes_heatmaps_equal_to_grad_cam_and_the_report_shows_them(trained, tmp_path):
    grid, root, results, _ = trained
    out = tmp_path / "reports"
    assert cli.main(["explain", "--grid", str(grid), "--results", str(results), "--out", str(out),
                     "--data-root", str(root), "--images", "3", "--device", "cpu"]) == 0
    pngs = sorted((out / "explain-ci" / "explain").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 0
    cams = np.load(pngs[0].with_suffix(".npz"))
    assert cams["baseline"].shape == cams["rllm"].shape == (3, 28, 28)  # the image's size
    assert list(cams["index"]) == [0, 8, 15]  # spread over the 16 test images

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from bench.data.loading import load_splits

    rows = runs(results)
    k = 1
    for variant, row in rows.items():
        model, _, spec = load_run_model(row, layout.weights_path(results, row["run_id"]))
        test = load_splits(spec, root, download=False, splits=("test",)).test
        i = int(cams["index"][k])
        x = (test.images[i : i + 1].float() / 255 - 0.5) / 0.5
        label = int(test.labels[i, 0])

        def to_grid(t):  # drop the class token, patch tokens as a 4 x 4 map (28 px, patch 7)
            return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], 4, 4)

        with GradCAM(model=model, target_layers=[model.backbone.blocks[0].norm1], reshape_transform=to_grid) as cam:
            expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(label)])[0]
        np.testing.assert_allclose(cams[variant][k], expected, rtol=0, atol=1e-5)
        assert int(cams["target"][k]) == label

    assert cli.main(["report", "--grid", str(grid), "--results", str(results), "--out", str(out)]) == 0
    page = (out / "explain-ci" / "index.html").read_text()
    assert f'src="explain/{pngs[0].name}"' in page and "Explanations" in page


@pytest.mark.parametrize("args, message", [
    (["--images", "0"], "--images 0"),
    (["--method", "nope"], "--method nope is not one of gradcam"),
    (["--task", "adrenalmnist3d"], "3D task"),
    (["--task", "pneumoniamnist"], "no ok R-LLM run of pneumoniamnist"),
])
def test_bad_explain_input_is_one_line(trained, tmp_path, capsys, args, message):
    _, root, results, _ = trained
    out = tmp_path / "reports"
    assert cli.main(["explain", "--results", str(results), "--out", str(out), "--data-root", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(out.rglob("*.png"))


def test_a_rerun_without_save_weights_drops_the_stale_weights_and_explain_says_how_to_save_them(trained, tmp_path,
                                                                                              capsys):
    grid, root, results, _ = trained
    copy = Path(shutil.copytree(results, tmp_path / "results"))
    ids = [r["run_id"] for r in runs(copy).values()]
    assert cli.main(["run", "--grid", str(grid), "--data-root", str(root), "--results", str(copy), "--force"]) == 0
    assert not any(layout.weights_path(copy, rid).exists() for rid in ids)  # they were another training's
    capsys.readouterr()
    assert cli.main(["explain", "--results", str(copy), "--out", str(tmp_path / "r"), "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no saved weights" in err and "--set save_weights=true" in err and err.count("\n") == 1
