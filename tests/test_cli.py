"""`bench` end to end on fixture data: a run's row, history and predictions agree; reruns skip; seeds
reproduce; every user mistake is one line on stderr, exit 2, before anything is written."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from bench import cli, store
from bench.data import write_fixture

BENCH = str(Path(sys.executable).with_name("bench"))
TINY = """
    defaults:
      data: {task: breastmnist, size: 28}
      vit: {arch: tiny, patch: 7, depth: 2}
      booster: {variant: baseline}
      train: {epochs: 3, batch_size: 8, eval_batch_size: 64, warmup_epochs: 0}
    seeds: [0]
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-data") / "medmnist"
    write_fixture(root, "breastmnist", 28, n=(32, 16, 16))
    return root


@pytest.fixture(autouse=True)
def _one_thread_here(one_thread):
    """Every test of this module trains in this process."""


def grid_file(tmp_path: Path, text: str = TINY) -> str:
    p = tmp_path / "tiny.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def run(grid: str, results: Path, data_root: Path | str, *extra: str) -> int:
    return cli.main(["run", "--grid", grid, "--results", str(results), "--data-root", str(data_root), *extra])


def test_run_stores_a_row_history_and_predictions_that_agree(tmp_path, data_root, capsys):
    results = tmp_path / "results"
    grid = grid_file(tmp_path)
    assert run(grid, results, data_root) == 0
    assert "done: 1 ok, 0 failed" in capsys.readouterr().out

    runs = store.read_runs(results)
    assert len(runs) == 1
    row = runs.iloc[0]
    rid = row["run_id"]
    assert row["status"] == "ok" and row["data.fixture"] and row["attempt"] == 1

    hist = store.read_history(results, [rid])
    assert list(hist["epoch"]) == [0, 1, 2] and (hist["run_id"] == rid).all()
    best = hist.set_index("epoch").loc[row["best_epoch"]]
    assert best["val_auc"] == row["val_auc"] and best["val_acc"] == row["val_acc"]
    assert row["val_auc"] == hist["val_auc"].max()  # selected on val AUC

    pred = store.read_predictions(results, rid)
    assert pred["y_score"].shape == (16, 2) and pred["y_true"].shape == (16, 1)
    positive = pred["y_score"][:, 1]  # breastmnist is binary: medmnist.Evaluator scores P(class 1), ACC at 0.5
    assert row["test_auc"] == pytest.approx(roc_auc_score(pred["y_true"][:, 0], positive), abs=1e-12)
    assert row["test_acc"] == pytest.approx(accuracy_score(pred["y_true"][:, 0], positive > 0.5), abs=1e-12)
    log = (results / store.LOGS / f"{rid}.log").read_text()
    assert "epoch 3/3" in log and "status ok" in log

    # a rerun skips it and writes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file() and p.name != ".bench.lock"}
    assert run(grid, results, data_root) == 0
    assert "1 runs, 1 done, 0 failed, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_same_seed_twice_gives_identical_results(tmp_path, data_root):
    grid = grid_file(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(grid, a, data_root) == 0 and run(grid, b, data_root) == 0
    ra, rb = store.read_runs(a).iloc[0], store.read_runs(b).iloc[0]
    for key in ("run_id", "best_epoch", "val_auc", "val_acc", "test_auc", "test_acc"):
        assert ra[key] == rb[key], key
    cols = ["epoch", "train_loss", "val_acc", "val_auc", "lr"]
    pd.testing.assert_frame_equal(store.read_history(a)[cols], store.read_history(b)[cols])
    assert (store.read_predictions(a, ra["run_id"])["y_score"] == store.read_predictions(b, rb["run_id"])["y_score"]).all()


def test_protocol_audit_records_test_every_epoch_and_changes_nothing_else(tmp_path, data_root):
    grid = grid_file(tmp_path)
    plain, audit = tmp_path / "plain", tmp_path / "audit"
    assert run(grid, plain, data_root) == 0 and run(grid, audit, data_root, "--set", "train.audit_test=true") == 0
    rp, ra = store.read_runs(plain).iloc[0], store.read_runs(audit).iloc[0]
    assert rp["run_id"] != ra["run_id"] and ra["train.audit_test"]
    for key in ("best_epoch", "val_auc", "val_acc", "test_auc", "test_acc"):  # the audit never steers training
        assert ra[key] == rp[key], key
    hp, ha = store.read_history(plain), store.read_history(audit)
    cols = ["epoch", "train_loss", "val_acc", "val_auc", "lr"]
    pd.testing.assert_frame_equal(hp[cols], ha[cols])
    assert hp["test_auc"].isna().all() and ha["test_auc"].notna().all() and len(ha) == 3
    best = ha.set_index("epoch").loc[ra["best_epoch"]]  # the honest number is the audit's at the val-selected epoch
    assert best["test_auc"] == ra["test_auc"] and best["test_acc"] == ra["test_acc"]


# ------------------------------------------------------------------------------------------- bad input


def _offline(monkeypatch):
    import urllib.error

    def fail(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fail)


BAD_SETS = {
    "unknown task": (["--set", "data.task=breastmnst"], "unknown task 'breastmnst': did you mean 'breastmnist'? valid tasks: pathmnist,"),
    "size it lacks": (["--set", "data.size=32"], "size 32 is not available for breastmnist: use one of 28, 64, 128, 224"),
    "unknown --set key": (["--set", "train.lrr=0.1"], "unknown config key 'train.lrr': did you mean 'train.lr'?"),
    "wrong type": (["--set", "train.epochs=two"], "train.epochs='two' is not a valid int"),
    "bad choice": (["--set", "booster.variant=rlm"], "booster.variant='rlm' is not one of baseline, adapters, mlp, rllm"),
    "set without =": (["--set", "train.epochs"], "--set expects key=value"),
    "nan learning rate": (["--set", "train.lr=nan"], "train.lr=nan is out of range: it must be a finite number > 0"),
    "negative learning rate": (["--set", "train.lr=-1"], "train.lr=-1.0 is out of range: it must be a finite number > 0"),
    "smoothing of 1": (["--set", "train.label_smoothing=1"], "train.label_smoothing=1.0 is out of range"),
    "zero epochs": (["--set", "train.epochs=0"], "train.epochs=0 is out of range: it must be a finite number >= 1"),
    "missing data offline": (["--set", "data.task=pneumoniamnist"], "could not download pneumoniamnist.npz (URLError"),
    "bad device": (["--device", "tpu"], "unknown device 'tpu'"),
    "jobs 0": (["--jobs", "0"], "--jobs must be >= 1"),
    "scheduler without dask": (["--scheduler", "tcp://h:1"], "--scheduler is for --backend dask"),
    "dask without scheduler": (["--backend", "dask"], "--backend dask needs --scheduler"),
    "malformed scheduler": (["--backend", "dask", "--scheduler", "tcp://[::1"], "--scheduler 'tcp://[::1' is not a Dask "
                            "scheduler address"),  # (Dask would wait 40 s on it, then raise)
    "scheduler without port": (["--backend", "dask", "--scheduler", "10.0.0.1"], "missing port number"),
}

BAD_GRIDS = {
    "malformed yaml": ("defaults: {train: {epochs: 1}\nseeds: [0]\n", "tiny.yaml:2:1: malformed YAML"),
    "unknown grid key": ("axis: {data.task: [breastmnist]}\n", "unknown grid key 'axis'; did you mean 'axes'?"),
    "unknown nested key": ("defaults: {train: {epoch: 1}}\n", "unknown config key 'train.epoch': did you mean 'train.epochs'?"),
    "wrong type in yaml": ("defaults: {train: {lr: fast}}\n", "train.lr='fast' is not a valid float"),
    "out of range in yaml": ("defaults: {train: {weight_decay: -0.1}}\n", "tiny.yaml defaults: train.weight_decay=-0.1 is out of range"),
    "empty after excludes": ("seeds: [0]\nexclude: [{seed: 0}]\n", "the grid has no runs"),
    "seeds not ints": ("seeds: [a]\n", "'seeds' is a list of integers"),
}


def _assert_one_line_error(capsys, message: str, results: Path) -> None:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("bench: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not results.exists()  # nothing was written


@pytest.mark.parametrize("name", list(BAD_SETS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, data_root, capsys, monkeypatch):
    _offline(monkeypatch)
    args, message = BAD_SETS[name]
    results = tmp_path / "results"
    assert run(grid_file(tmp_path), results, data_root, *args) == 2
    _assert_one_line_error(capsys, message, results)


@pytest.mark.parametrize("name", list(BAD_GRIDS))
def test_bad_grid_is_one_line_exit_2(name, tmp_path, data_root, capsys):
    text, message = BAD_GRIDS[name]
    results = tmp_path / "results"
    for command in (["run", "--data-root", str(data_root)], ["list"]):
        assert cli.main([*command, "--grid", grid_file(tmp_path, text), "--results", str(results)]) == 2
        _assert_one_line_error(capsys, message, results)


def test_corrupt_data_file_is_refused(tmp_path, capsys):
    root = tmp_path / "medmnist"
    path = write_fixture(root, "breastmnist", 28, n=(32, 16, 16))
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # same size, other bytes: md5 mismatch
    results = tmp_path / "results"
    assert run(grid_file(tmp_path), results, root) == 2
    _assert_one_line_error(capsys, "breastmnist.npz is corrupt (md5", results)


def test_unknown_grid_name_lists_shipped_grids(tmp_path, capsys):
    results = tmp_path / "results"
    assert cli.main(["list", "--grid", "nope", "--results", str(results)]) == 2
    _assert_one_line_error(capsys, "unknown grid 'nope': use one of beyond-paper, ci, full, layers, paper, record, record-pilot, record2-search, scratch28, smoke", results)


def test_bench_list_says_its_status_once_and_names_an_llm_only_where_a_run_has_a_layer(tmp_path, capsys):
    """Issue 34 item 18: the status line was printed at the top and again at the bottom, and the adapters-only
    control (FE and FD sized to the LLM's width, no LLM layer: the registry's llm="width") showed minilm-l6."""
    from bench.grid import load_grid
    from bench.models.registry import VARIANTS

    assert cli.main(["list", "--grid", "smoke", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert out.count("grid smoke: 3 runs") == 1, out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:5]}
    grid = load_grid("smoke")
    for cfg, rid in zip(grid.runs, grid.run_ids()):
        llm = rows[rid][6]
        assert llm == ("minilm-l6" if VARIANTS[cfg.booster.variant].llm == "layers" else "-"), (cfg.label, out)


# ------------------------------------------------------------------------------------------------ help


def _subcommands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_help_of_bench_and_every_subcommand(capsys):
    commands = list(_subcommands(cli.parser()))
    assert {("run",), ("list",), ("data",), ("data", "list"), ("data", "fetch"), ("report",)} <= set(commands)
    for command in [(), *commands]:
        with pytest.raises(SystemExit) as e:
            cli.main([*command, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: bench") and "--help" in out
    # the installed entry point
    done = subprocess.run([BENCH, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "run" in done.stdout and "list" in done.stdout
    done = subprocess.run([BENCH, "run", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--jobs" in done.stdout and "--dry-run" in done.stdout


def test_data_list_and_fetch_commands(tmp_path, capsys, monkeypatch):
    root = tmp_path / "medmnist"
    write_fixture(root, "breastmnist", 28, n=(8, 8, 8))
    (root / "retinamnist.npz").write_bytes(b"not the real file")
    assert cli.main(["data", "list", "--data-root", str(root)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert len(lines) == 18  # every medmnist task, one line each
    assert "28:verified (fixture)" in lines["breastmnist"] and "64:missing" in lines["breastmnist"]
    assert "28:corrupt" in lines["retinamnist"] and "28:missing" in lines["organmnist3d"]

    assert cli.main(["data", "fetch", "breastmnist", "--data-root", str(root)]) == 0  # present: verified, no network
    assert f"breastmnist@28: {root / 'breastmnist.npz'} verified" in capsys.readouterr().out
    _offline(monkeypatch)
    assert cli.main(["data", "fetch", "dermamnist", "--size", "64", "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not download dermamnist_64.npz" in err and "put it in" in err
    assert cli.main(["data", "fetch", "dermamnist", "--size", "32", "--data-root", str(root)]) == 2
    assert "size 32 is not available for dermamnist" in capsys.readouterr().err


def test_report_command_writes_the_page_of_a_grid(tmp_path, data_root, capsys):
    grid = grid_file(tmp_path)
    results, out = tmp_path / "results", tmp_path / "reports"
    assert run(grid, results, data_root) == 0
    capsys.readouterr()
    assert cli.main(["report", "--results", str(results), "--out", str(out), "--grid", grid]) == 0
    assert f"report written to {out / 'tiny'}/index.html" in capsys.readouterr().out
    row = store.read_runs(results).iloc[0]
    summary = pd.read_csv(out / "tiny" / "summary.csv")
    assert summary.loc[0, "auc_mean"] == pytest.approx(row["test_auc"]) and summary.loc[0, "ok"] == 1
    assert cli.main(["report", "--results", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no runs stored" in capsys.readouterr().err
