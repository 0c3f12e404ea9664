"""`bench tune` and `bench run --params tuned`.

Most studies here train a scripted stand-in for `bench.train.fit` (`curve_fit`: val AUC per epoch as a
function of the learning rate, reported through the same `on_epoch` hook), so pruning, resuming and
sharing a study are checked deterministically in seconds; the test-split check and `--params tuned`
train the real tiny ViT on fixture data.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from postgres_helpers import free_port, postgres_cluster

from bench import cli, store
from bench.config import override, run_id
from bench.grid import load_grid
from bench.train import RunResult
from bench.tune import dispatch
from bench.tune import study as tune_study
from bench.tune import trials as tune_trials
from bench.tune.space import default_space
from bench.tune.storage import open_storage

GRID = """\
name: tunetest
defaults:
  data: {task: breastmnist, size: 28}
  vit: {arch: tiny}
  train: {epochs: EPOCHS, batch_size: 16, lr: 0.001}
variants:
VARIANTS
seeds: SEEDS
"""
BAD_LR = 0.05  # curve_fit: above this learning rate nothing is learnt (val AUC 0.5 from the first epoch)


def fake_auc(lr: float, seed: int, epoch: int, epochs: int) -> float:
    """curve_fit's val AUC: rises per epoch, peaks at lr=1e-3, differs by seed; flat 0.5 in the bad region."""
    if lr > BAD_LR:
        return 0.5
    return 0.7 + 0.2 * (epoch + 1) / epochs - 0.02 * abs(math.log10(lr / 1e-3)) + 0.01 * (seed % 3)


def curve_fit(cfg, splits, spec, device, *, on_epoch=None, **_):
    """Stand-in for `bench.train.fit`: val AUC per epoch from `fake_auc`, reported through the same hook."""
    assert splits.test is None and splits.train is not None and splits.val is not None
    lr, epochs = cfg.train.lr, cfg.train.epochs
    if os.environ.get("FAKE_FAIL_ABOVE") and lr > float(os.environ["FAKE_FAIL_ABOVE"]):
        raise RuntimeError(f"train loss is nan at epoch 0 (lr {lr})")
    history = []
    for epoch in range(epochs):
        auc = fake_auc(lr, cfg.seed, epoch, epochs)
        history.append({"epoch": epoch, "val_auc": auc, "val_acc": auc})
        time.sleep(float(os.environ.get("FAKE_EPOCH_S", "0")))
        if on_epoch:
            on_epoch(epoch, auc)
    best = max(range(len(history)), key=lambda e: history[e]["val_auc"])
    metrics = {"best_epoch": best, "val_auc": history[best]["val_auc"], "val_acc": history[best]["val_acc"],
               "test_auc": None, "test_acc": None, "epochs_run": len(history), "train_s": 0.0}
    return RunResult(metrics, history, None, None)


@pytest.fixture
def env(tmp_path, fixture_root, monkeypatch):
    """`make_grid(...)` writes a tiny grid; breastmnist fixture data; a results dir; cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)

    def grid(epochs=3, variants=("baseline",), seeds=(0, 1)) -> Path:
        """`variants`: names of booster.variant values, or {name: YAML flow mapping of its overrides}."""
        if not isinstance(variants, dict):
            variants = {v: f"{{booster.variant: {v}}}" for v in variants}
        body = "\n".join(f"  {v}: {o}" for v, o in variants.items())
        path = tmp_path / f"grid_{epochs}_{'_'.join(variants)}_{len(seeds)}.yaml"
        path.write_text(GRID.replace("EPOCHS", str(epochs)).replace("VARIANTS", body).replace("SEEDS", str(list(seeds))))
        return path

    class Env:
        root = fixture_root("breastmnist", n=(32, 16, 16))
        results = tmp_path / "results"
        make_grid = staticmethod(grid)

        def tune(self, *extra, grid=None, trials=2):
            return cli.main(["tune", "--task", "breastmnist", "--variant", "baseline", "--grid", str(grid or self.make_grid()),
                             "--trials", str(trials), "--data-root", str(self.root), "--results", str(self.results),
                             "--device", "cpu", *map(str, extra)])

    return Env()


@pytest.fixture
def fake_fit(monkeypatch):
    monkeypatch.setattr(tune_study, "fit", curve_fit)


def load(results: Path, export: dict | None = None, name: str | None = None, storage: str | None = None):
    if name is None or storage is None:
        export = export or exported(results)
        name, storage = name or export["study"], storage or export["storage"]
    return optuna.load_study(study_name=name, storage=open_storage(str(storage)))


def exported(results: Path, variant: str = "baseline") -> dict:
    return json.loads((results / "tuned" / f"breastmnist__{variant}.json").read_text())


def one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("bench: error: ") and "\n" not in err, err
    return err


def space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, expect", [
    ("params:\n  train.lrr: {type: float, low: 0.001, high: 0.1}\n", "unknown parameter 'train.lrr': did you mean 'train.lr'"),
    ("params:\n  train.lr: {type: float, low: 0.1, high: 0.001}\n", "low (0.1) must be below high (0.001)"),
    ("params:\n  train.lr: {type: normal, low: 0.001, high: 0.1}\n", "type must be one of float, int, categorical"),
    ("params:\n  train.lr: {type: float, lo: 0.001, high: 0.1}\n", "unknown field 'lo'"),
    ("params:\n  train.batch_size: {type: float, low: 16, high: 64}\n", "integer field"),
    ("params:\n  booster.lr_mult: {type: float, low: 0.1, high: 1}\n", "booster.lr_mult"),
    ("params:\n  data.task: {type: categorical, choices: [breastmnist]}\n", "cannot be searched"),
    ("train.lr: {type: float, low: 0.001, high: 0.1}\n", "parameters go under 'params:'"),
    ("pruner: {type: median, n_startup: 3}\n", "pruner median"),
])
def test_bad_search_space_is_one_line(env, tmp_path, capsys, text, expect):
    rc = env.tune("--space", space_file(tmp_path, text))
    assert expect in one_line_error(capsys, rc)
    assert not env.results.exists()


@pytest.mark.parametrize("args, expect", [
    (["--task", "breastmnsit", "--variant", "baseline"], "unknown task 'breastmnsit': did you mean 'breastmnist'"),
    (["--task", "breastmnist", "--variant", "rlm"], "has no variant 'rlm'"),
    (["--task", "breastmnist", "--variant", "baseline", "--grid", "nosuchgrid"], "unknown grid 'nosuchgrid'"),
    (["--task", "breastmnist", "--variant", "baseline", "--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
])
def test_unknown_task_or_variant_is_one_line(env, capsys, args, expect):
    if "--grid" not in args:
        args = [*args, "--grid", str(env.make_grid())]
    rc = cli.main(["tune", *args, "--trials", "1", "--data-root", str(env.root), "--results", str(env.results)])
    assert expect in one_line_error(capsys, rc)
    assert not env.results.exists()


def test_storage_that_cannot_connect_is_one_line(env, capsys, fake_fit):
    url = f"postgresql://bench:s3cret@127.0.0.1:{free_port()}/optuna"
    err = one_line_error(capsys, env.tune("--storage", url))
    assert "cannot connect to storage postgresql://bench:***@127.0.0.1" in err
    assert "s3cret" not in err
    err = one_line_error(capsys, env.tune("--storage", "nosuchdb://x/y"))
    assert "nosuchdb" in err
    assert not (env.results / "tuned").exists()


# -------------------------------------------------------------------------------------- the search


def test_bad_region_is_pruned_on_the_running_mean(env, tmp_path, capsys, fake_fit):
    """3 seeds x 4 epochs = steps 0..11: trials in the bad lr region stop at step 0; good ones report every
    step a running value that never decreases and ends at the objective."""
    space = space_file(tmp_path, "params:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0, log: true}\nreplace: true\n"
                                 "pruner: {type: median, n_startup_trials: 3, n_warmup_steps: 0}\n")
    journal = env.results / "optuna" / "prune.log"
    journal.parent.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    lrs = [1e-3, 2e-3, 5e-4, 0.3, 0.6, 1.5e-3]
    for lr in lrs:  # fix the order: three good trials, two in the bad region, one good
        study.enqueue_trial({"train.lr": lr})
    assert env.tune("--space", space, "--study", "prune", "--seeds", "3", grid=env.make_grid(epochs=4),
                    trials=len(lrs)) == 0
    out = capsys.readouterr().out
    trials = load(env.results, name="prune", storage=str(journal)).trials
    assert [t.params["train.lr"] for t in trials] == lrs
    for t in trials:
        if t.params["train.lr"] > BAD_LR:
            assert t.state == TrialState.PRUNED and sorted(t.intermediate_values) == [0], t
        else:
            assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == list(range(12)), t
            steps = [t.intermediate_values[i] for i in range(12)]
            assert steps == sorted(steps) and steps[-1] == pytest.approx(t.value)
            # after seed 0 (step 3) the value is seed 0's best val AUC over the 3 seeds
            assert steps[3] == pytest.approx(fake_auc(t.params["train.lr"], 1000, 3, 4) / 3)
    assert "trial 3 pruned after epoch 0 of seed 1000 (step 0)" in out and "6/6 done" in out
    assert "(4 complete, 2 pruned, 0 failed)" in out
    assert exported(env.results)["params"]["train.lr"] == 1e-3


def test_failed_trials_are_recorded_and_the_study_goes_on(env, tmp_path, capsys, fake_fit, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_ABOVE", str(BAD_LR))
    space = space_file(tmp_path, "params:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0, log: true}\nreplace: true\n")
    journal = env.results / "optuna" / "fail.log"
    journal.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="fail", direction="maximize", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    for lr in (1e-3, 0.5, 2e-3):
        study.enqueue_trial({"train.lr": lr})
    assert env.tune("--space", space, "--study", "fail", "--pruner", "none", trials=3) == 0
    trials = load(env.results, name="fail", storage=str(journal)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["error"].startswith("RuntimeError: train loss is nan")
    out = capsys.readouterr().out
    assert "trial 1 failed: RuntimeError" in out and "(2 complete, 0 pruned, 1 failed)" in out


def test_hyperband_pruner_runs(env, capsys, fake_fit):
    assert env.tune("--pruner", "hyperband", grid=env.make_grid(epochs=3), trials=4) == 0
    trials = load(env.results).trials
    assert len(trials) == 4 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}


def test_test_split_is_untouched_during_tuning(env, capsys, monkeypatch):
    """Real training: the npz's test arrays are never read, fit never sees them, the store gets no runs."""
    import numpy as np

    with np.load(env.root / "breastmnist.npz") as z:
        npz_class = type(z)
    read_keys = []
    original_getitem = npz_class.__getitem__

    def spy(self, key):
        read_keys.append(key)
        return original_getitem(self, key)

    seen, real_fit = [], tune_study.fit

    def checked_fit(cfg, splits, spec, device, **kw):
        seen.append(splits.test)
        return real_fit(cfg, splits, spec, device, **kw)

    monkeypatch.setattr(npz_class, "__getitem__", spy)
    monkeypatch.setattr(tune_study, "fit", checked_fit)
    grid = env.make_grid(epochs=1, variants=("baseline", "adapters"))
    rc = cli.main(["tune", "--grid", str(grid), "--trials", "1", "--seeds", "2", "--data-root", str(env.root),
                   "--results", str(env.results), "--device", "cpu"])
    assert rc == 0, capsys.readouterr()
    assert seen == [None] * 4  # 2 studies x 2 seeds
    assert read_keys and all(not k.startswith("test_") for k in read_keys), read_keys
    assert {"train_images", "val_images"} <= set(read_keys)
    assert sorted(p.name for p in env.results.iterdir()) == ["optuna", "tuned"]  # no runs/, history/, predictions/
    out = capsys.readouterr().out
    assert "1/1 done, best mean val AUC (2 seeds)" in out
    for variant in ("baseline", "adapters"):
        doc = exported(env.results, variant)
        assert doc["metric"] == "val_auc" and 0.0 <= doc["best_value"] <= 1.0 and doc["n_trials"] == 1
        assert doc["seeds"] == [1000, 1001] and len(doc["best_seed_val_auc"]) == 2


def test_resume_continues_the_same_study(env, capsys, fake_fit):
    assert env.tune(trials=2) == 0
    first = exported(env.results)
    assert first["study"].startswith("breastmnist__baseline__")
    assert first["storage"] == str(env.results / "optuna" / f"{first['study']}.log")

    # a process killed mid-trial leaves it RUNNING; the next start marks it failed (and does not count it)
    dead = subprocess.Popen(["true"])
    dead.wait()
    study = load(env.results, first)
    ghost = study.ask()
    ghost.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")

    assert env.tune(trials=4) == 0
    out = capsys.readouterr().out
    assert f"study {first['study']} in" in out
    assert f"trial 2 was left running (process {socket.gethostname()}:{dead.pid} is gone): marked failed" in out
    trials = load(env.results, first).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert trials[2].state == TrialState.FAIL and "interrupted" in trials[2].user_attrs
    assert [t.state for t in trials if t.number != 2] == [TrialState.COMPLETE] * 4
    assert exported(env.results)["n_trials"] == 4 and exported(env.results)["study"] == first["study"]
    assert "4/4 done" in out
    # new trials are new draws, not the first ones replayed by a freshly seeded sampler
    assert trials[3].params != trials[0].params and trials[4].params != trials[1].params
    # a third call with the same --trials adds nothing
    assert env.tune(trials=4) == 0
    assert len(load(env.results, first).trials) == 5

    # a fresh study with the same seed replays the same first draw
    assert env.tune("--study", "replay", trials=1) == 0
    assert load(env.results, name="replay", storage=str(env.results / "optuna" / "replay.log")).trials[0].params \
        == trials[0].params


def test_study_name_hashes_the_base_without_searched_fields(env, capsys, fake_fit):
    names = []
    for sets in ([], ["--set", "train.batch_size=32"], ["--set", "train.epochs=2"]):
        assert env.tune(*sets, trials=1) == 0
        names.append(exported(env.results)["study"])
    assert names[0] == names[1] != names[2]  # batch size is searched; epochs are part of the base
    assert all(n.startswith("breastmnist__baseline__") for n in names)


def test_params_tuned_runs_with_the_exported_values(env, capsys, fake_fit):
    grid = env.make_grid(epochs=1, seeds=(0,))  # one real run; the tuned base is the grid's first seed anyway
    assert env.tune(grid=grid, trials=2) == 0
    doc = exported(env.results)
    tuned_file = env.results / "tuned" / "breastmnist__baseline.json"

    # a grid with a variant that has no tuned file: one line naming it and the command, nothing runs
    both = env.make_grid(epochs=1, variants=("baseline", "adapters"), seeds=(0,))
    rc = cli.main(["run", "--grid", str(both), "--params", "tuned", "--results", str(env.results),
                   "--data-root", str(env.root), "--device", "cpu"])
    err = one_line_error(capsys, rc)
    assert "breastmnist__adapters.json" in err and f"bench tune --grid {both} --task breastmnist --variant adapters" in err
    assert not (env.results / "runs").exists()

    rc = cli.main(["run", "--grid", str(grid), "--params", "tuned", "--results", str(env.results),
                   "--data-root", str(env.root), "--device", "cpu"])
    assert rc == 0, capsys.readouterr()
    rows = store.read_runs(env.results)
    plain = load_grid(str(grid)).runs
    assert len(rows) == 1 and list(rows["status"]) == ["ok"]
    for (_, row), cfg in zip(rows.iterrows(), plain):
        assert row["params_file"] == str(tuned_file)
        for key, value in doc["params"].items():
            assert row[key] == pytest.approx(value), key
        assert row["run_id"] == run_id(override(cfg, doc["params"])) != run_id(cfg)
    assert rows.iloc[0]["run_id"] == doc["tuned_run_id"]

    # --params DIR: another folder of tuned files (e.g. tuned on another machine)
    elsewhere = env.results.parent / "from-elsewhere"
    shutil.copytree(env.results / "tuned", elsewhere)
    rc = cli.main(["run", "--grid", str(grid), "--params", str(elsewhere), "--results", str(env.results),
                   "--data-root", str(env.root), "--device", "cpu", "--dry-run"])
    assert rc == 0 and "1 done" in capsys.readouterr().out  # same values, same run ids: nothing to run


NO_OPTUNA = """\
import sys
sys.modules["optuna"] = None  # every `import optuna` (or of a submodule) now raises ImportError
from bench.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_params_tuned_runs_without_optuna(env, capsys, fake_fit):
    """`bench run --params tuned` in a process that cannot import optuna: it works; `bench tune` there cannot."""
    grid = env.make_grid(epochs=1, seeds=(0,))
    assert env.tune(grid=grid, trials=1) == 0
    doc = exported(env.results)
    repo = Path(__file__).resolve().parents[1]
    common = ["--grid", str(grid), "--results", str(env.results), "--data-root", str(env.root)]

    def blocked(*args):
        return subprocess.run([sys.executable, "-c", NO_OPTUNA, *args], cwd=repo, capture_output=True, text=True,
                              timeout=120)

    done = blocked("run", *common, "--params", "tuned", "--device", "cpu", "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 to run" in done.stdout and doc["tuned_run_id"] in done.stdout, done.stdout
    control = blocked("tune", *common, "--task", "breastmnist", "--variant", "baseline", "--trials", "1")
    assert control.returncode != 0 and "optuna" in control.stderr, control.stderr[-3000:]  # the block is real


def test_default_space_searches_lr_mult_only_when_finetuning():
    from bench.config import RunConfig, resolve

    def keys(**booster):
        base = resolve(override(RunConfig(), {"booster.variant": "rllm", **{f"booster.{k}": v for k, v in booster.items()}}))
        return set(default_space(base))

    assert "booster.lr_mult" in keys(freeze="finetune")
    assert "booster.lr_mult" not in keys(freeze="frozen")
    assert {"train.lr", "train.weight_decay", "train.warmup_epochs", "train.batch_size", "train.label_smoothing",
            "vit.drop_path", "train.aug"} <= keys()


# ------------------------------------------------------------------------------------- a whole grid


def grid_args(env, grid, *extra) -> list[str]:
    return ["tune", "--grid", str(grid), "--data-root", str(env.root), "--results", str(env.results), "--device", "cpu",
            *map(str, extra)]


def test_grid_tunes_every_variant_with_one_budget_and_a_rerun_adds_no_trial(env, capsys, fake_fit):
    """`bench tune --grid smoke`: one study and one tuned file per variant, with the same trials, seeds and
    space for each; a second call adds no trial."""
    args = grid_args(env, "smoke", "--trials", "2", "--set", "train.epochs=1")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    variants = ("baseline", "adapters", "rllm")
    assert sorted(p.name for p in (env.results / "tuned").iterdir()) == sorted(f"breastmnist__{v}.json" for v in variants)
    docs = {v: exported(env.results, v) for v in variants}
    for v, doc in docs.items():
        trials = load(env.results, doc).trials
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, v
        assert doc["budget"] == 2 and doc["n_trials"] == 2 and doc["seeds"] == [1000, 1001, 1002]
        assert doc["space"] == docs["baseline"]["space"] and doc["grid"] == "smoke"
        assert f"done: breastmnist/{v}: 2/2 trials (2 complete, 0 pruned, 0 failed), best mean val AUC (3 seeds)" in out
    assert len({doc["study"] for doc in docs.values()}) == 3
    assert "grid smoke: 3 studies, 2 trials each" in out

    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "] trial " not in out  # no trial ran
    for v, doc in docs.items():
        assert len(load(env.results, doc).trials) == 2
        assert f"study {doc['study']} in" in out and f"breastmnist/{v}: 2/2 trials" in out


@pytest.mark.slow
def test_smoke_grid_tunes_for_real_on_fixture_data(env, capsys):
    """The README's command, really training (fixture data): a tuned file per variant, and a rerun adds no trial."""
    args = grid_args(env, "smoke", "--trials", "2", "--set", "train.epochs=1")
    assert cli.main(args) == 0
    variants = ("baseline", "adapters", "rllm")
    docs = {v: exported(env.results, v) for v in variants}
    counts = {v: len(load(env.results, doc).trials) for v, doc in docs.items()}
    assert counts == dict.fromkeys(variants, 2)
    assert all(len(doc["best_seed_val_auc"]) == 3 and doc["n_complete"] == 2 for doc in docs.values())
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "] trial " not in capsys.readouterr().out
    assert {v: len(load(env.results, doc).trials) for v, doc in docs.items()} == counts


def test_task_and_variant_filters_select_the_studies(env, fixture_root, capsys, fake_fit):
    fixture_root("adrenalmnist3d", n=(16, 8, 8))
    assert cli.main(grid_args(env, "ci", "--trials", "1", "--seeds", "1", "--variant", "rllm")) == 0
    assert sorted(p.name for p in (env.results / "tuned").iterdir()) == ["adrenalmnist3d__rllm.json",
                                                                         "breastmnist__rllm.json"]
    capsys.readouterr()
    rc = cli.main(grid_args(env, "ci", "--trials", "1", "--task", "adrenalmnist3d", "--variant", "adapters"))
    assert "has no variant 'adapters' for adrenalmnist3d; its variants there: baseline, rllm" in one_line_error(capsys, rc)
    assert cli.main(grid_args(env, "ci", "--trials", "1", "--seeds", "1", "--task", "adrenalmnist3d")) == 0
    assert sorted(p.name for p in (env.results / "tuned").iterdir()) == [
        "adrenalmnist3d__baseline.json", "adrenalmnist3d__rllm.json", "breastmnist__rllm.json"]


def test_every_variant_of_a_task_searches_the_same_space(env, tmp_path, capsys, fake_fit):
    """booster.lr_mult applies to the fine-tuned layer only: with a frozen variant beside it, neither searches it."""
    variants = {"rllm": "{booster.variant: rllm}", "finetune": "{booster.variant: rllm, booster.freeze: finetune}"}
    grid = env.make_grid(epochs=1, variants=variants)
    assert cli.main(grid_args(env, grid, "--trials", "1", "--seeds", "1")) == 0
    out = capsys.readouterr().out
    assert "note: breastmnist: booster.lr_mult is not searched for any variant (only finetune take it" in out
    rllm, finetune = exported(env.results, "rllm"), exported(env.results, "finetune")
    assert rllm["space"] == finetune["space"] and "booster.lr_mult" not in finetune["searched"]

    # started alone, the variant is the same study: the filters never change what a study searches
    assert cli.main(grid_args(env, grid, "--trials", "2", "--seeds", "1", "--variant", "finetune")) == 0
    assert exported(env.results, "finetune")["study"] == finetune["study"]
    assert len(load(env.results, finetune).trials) == 2 and len(load(env.results, rllm).trials) == 1

    # a space file giving one variant an extra key: one line, no study touched
    space = space_file(tmp_path, "params:\n  booster.lr_mult: {type: float, low: 0.1, high: 1.0, log: true}\n")
    err = one_line_error(capsys, cli.main(grid_args(env, grid, "--trials", "3", "--space", space)))
    assert "booster.lr_mult" in err and "does not fit variant rllm" in err and "searches the same keys" in err
    assert len(load(env.results, finetune).trials) == 2

    # a grid whose variants all fine-tune searches it
    only = env.make_grid(epochs=1, variants={"finetune": variants["finetune"]})
    assert cli.main(grid_args(env, only, "--trials", "1", "--seeds", "1")) == 0
    assert "booster.lr_mult" in exported(env.results, "finetune")["searched"]


def test_objective_is_the_mean_of_the_seeds_best_val_auc(env, capsys, fake_fit):
    assert env.tune("--seeds", "3", "--pruner", "none", grid=env.make_grid(epochs=2), trials=3) == 0
    trials = load(env.results).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert t.user_attrs["seeds"] == [1000, 1001, 1002]
        per_seed = t.user_attrs["seed_val_auc"]
        # each seed's best val AUC: curve_fit's last (highest) epoch for that seed
        assert per_seed == pytest.approx([fake_auc(t.params["train.lr"], seed, 1, 2) for seed in (1000, 1001, 1002)])
        assert t.user_attrs["seed_best_epoch"] == [1, 1, 1]
        assert t.value == pytest.approx(statistics.fmean(per_seed))
    best = max(trials, key=lambda t: statistics.fmean(t.user_attrs["seed_val_auc"]))
    doc = exported(env.results)
    assert doc["best_trial"] == best.number and doc["best_seed_val_auc"] == best.user_attrs["seed_val_auc"]


@pytest.mark.parametrize("task, k", [("breastmnist", 3), ("retinamnist", 3), ("pneumoniamnist", 1)])  # val 78, 120, 524
def test_seeds_default_to_three_below_500_val_images(env, fixture_root, capsys, fake_fit, task, k):
    fixture_root(task, n=(32, 16, 16))
    rc = cli.main(["tune", "--task", task, "--variant", "baseline", "--grid", str(env.make_grid(epochs=1)),
                   "--trials", "1", "--data-root", str(env.root), "--results", str(env.results), "--device", "cpu"])
    assert rc == 0
    assert f"{task}: {k} seed{'s' if k > 1 else ''} per trial" in capsys.readouterr().out
    doc = json.loads((env.results / "tuned" / f"{task}__baseline.json").read_text())
    assert doc["seeds"] == list(range(1000, 1000 + k)) and len(doc["best_seed_val_auc"]) == k


def test_the_export_judges_only_the_first_n_trials(env, tmp_path, capsys, fake_fit):
    """Racing workers may start trials past --trials; the budget is the first N, so no variant gets more."""
    space = space_file(tmp_path, "params:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                                 "replace: true\n")
    journal = env.results / "optuna" / "budget.log"
    journal.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="budget", direction="maximize", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    for lr in (3e-3, 5e-4, 1e-3):  # the best comes last
        study.enqueue_trial({"train.lr": lr})
    common = ("--space", space, "--study", "budget", "--seeds", "1", "--pruner", "none")
    assert env.tune(*common, trials=3) == 0
    assert exported(env.results)["best_trial"] == 2
    assert env.tune(*common, trials=2) == 0
    doc = exported(env.results)
    assert len(load(env.results, doc).trials) == 3
    assert doc["best_trial"] == 1 and doc["params"] == {"train.lr": 5e-4}
    assert doc["budget"] == 2 and doc["n_trials"] == 2


@pytest.mark.parametrize("args, expect", [
    (["--set", "train.audit_test=true"], "train.audit_test=true evaluates the test split every epoch"),
    (["--seeds", "0"], "--seeds must be auto or a whole number >= 1, got '0'"),
    (["--seeds", "two"], "--seeds must be auto or a whole number >= 1"),
    (["--study", "mine"], "--study names one study, but 2 are selected"),
    (["--variant", "rlm"], "has no variant 'rlm'"),
    (["--backend", "dask"], "--backend dask needs --scheduler"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_bad_grid_options_are_one_line(env, capsys, args, expect):
    rc = cli.main(grid_args(env, env.make_grid(variants=("baseline", "adapters")), "--trials", "1", *args))
    assert expect in one_line_error(capsys, rc)
    assert not env.results.exists()


# --------------------------------------------------------------------------------- tuned vs default

T975_DF2 = 4.302652729911275  # Student's t quantile 0.975 with 2 degrees of freedom
# label -> (default, tuned) test (acc, auc) for seeds 0, 1, 2: tuning lifts rllm above the baseline
TEST = {"baseline": ([(0.70, 0.80), (0.72, 0.82), (0.74, 0.84)], [(0.71, 0.81), (0.72, 0.83), (0.75, 0.82)]),
        "rllm": ([(0.69, 0.78), (0.70, 0.80), (0.71, 0.805)], [(0.73, 0.85), (0.74, 0.86), (0.74, 0.88)])}


def md_table(md: str, title: str) -> list[dict]:
    lines = md.split(f"### {title}", 1)[1].splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("|")):]
    head = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in line.strip().strip("|").split(" | ")))))
    return rows


def test_report_pairs_tuned_runs_with_their_defaults(tmp_path):
    import dataclasses

    from report_helpers import config
    from report_helpers import store as store_row

    from bench.report import make_report

    results = tmp_path / "results"
    rllm = {"booster.variant": "rllm"}
    for label, sets in (("baseline", {}), ("rllm", rllm)):
        path = results / "tuned" / f"breastmnist__{label}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task": "breastmnist", "variant": label, "params": {"train.lr": 0.002},
                                    "searched": ["train.lr"], "budget": 4, "n_trials": 4 if label == "baseline" else 3,
                                    "seeds": [1000, 1001, 1002], "best_value": 0.9}))
        for seed, ((acc, auc), (tacc, tauc)) in enumerate(zip(*TEST[label])):
            store_row(results, config(label=label, seed=seed, **sets), acc, auc)
            tuned = config(label=label, seed=seed, **{**sets, "train.lr": 0.002})
            store_row(results, dataclasses.replace(tuned, params_file=str(path)), tacc, tauc)
    store_row(results, config(label="rllm", seed=0, **{**rllm, "train.epochs": 20}), 0.5, 0.5)  # another default: no pair

    md = (make_report(results, tmp_path / "reports", name="t") / "summary.md").read_text()
    rows = {r["variant"]: r for r in md_table(md, "Tuned vs default: test metrics over the paired seeds")}
    assert set(rows) == {"baseline", "rllm"}
    p_values = {}
    for label, (default, tuned) in TEST.items():
        for j, name in enumerate(("ACC", "AUC")):
            d = [t[j] - b[j] for b, t in zip(default, tuned)]
            mean, se = statistics.fmean(d), statistics.stdev(d) / math.sqrt(3)
            cell = rows[label]
            assert cell[f"Δ{name} [95% CI]"] == f"{mean:+.3f} [{mean - T975_DF2 * se:+.3f}, {mean + T975_DF2 * se:+.3f}]"
            assert cell[f"default {name}"] == f"{statistics.fmean(b[j] for b in default):.3f} ± " \
                                               f"{statistics.stdev(b[j] for b in default):.3f} (n=3)"
            t = mean / se
            p_values[(label, name)] = 1 - abs(t) / math.sqrt(2 + t * t)  # two-sided, t with 2 df, closed form
    ordered = sorted(p_values, key=p_values.get)  # Benjamini-Hochberg by hand over the 4 comparisons
    adjusted, running = {}, 1.0
    for rank in range(len(ordered), 0, -1):
        running = min(running, p_values[ordered[rank - 1]] * len(ordered) / rank)
        adjusted[ordered[rank - 1]] = running
    for (label, name), p in adjusted.items():
        assert rows[label][f"p BH ({name})"] == f"{p:.3g}"
    assert rows["baseline"]["seeds"] == rows["rllm"]["seeds"] == "3"
    assert rows["baseline"]["rank by AUC: default → tuned"] == "1 → 2"
    assert rows["rllm"]["rank by AUC: default → tuned"] == "2 → 1"
    assert ("breastmnist · 28: ranking by test AUC changed by tuning: default baseline > rllm; tuned rllm > baseline."
            in md)
    budgets = {r["variant"]: r for r in md_table(md, "Search budget of each tuned file")}
    assert budgets["baseline"]["trials"] == "4/4" and budgets["rllm"]["trials"] == "3/4"  # e.g. cut by --timeout
    assert "Unequal search budgets between the variants of breastmnist" in md


# ------------------------------------------------------------------------------------------ scale-out

WRAPPER = """\
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import bench.tune.study
from test_tune import curve_fit

_started = []

def barrier_fit(*args, **kwargs):
    # every worker process holds a trial at the same time before any finishes one
    if not _started:
        _started.append(1)
        Path(os.environ["FAKE_BARRIER"], str(os.getpid())).touch()
        t0 = time.time()
        while len(os.listdir(os.environ["FAKE_BARRIER"])) < int(os.environ["FAKE_WORKERS"]) and time.time() - t0 < 120:
            time.sleep(0.05)
    return curve_fit(*args, **kwargs)

bench.tune.study.fit = barrier_fit

if __name__ == "__main__":
    from bench.cli import main
    raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_concurrent_processes_share_one_journal_study(env, tmp_path):
    """Two `bench tune` processes (one with --jobs 2) on one journal study: all three workers add trials."""
    wrapper = tmp_path / "fake_bench.py"
    wrapper.write_text(WRAPPER.format(tests=str(Path(__file__).parent)))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    environ = {**os.environ, "FAKE_BARRIER": str(barrier), "FAKE_WORKERS": "3", "FAKE_EPOCH_S": "0.2"}
    args = ["tune", "--task", "breastmnist", "--variant", "baseline", "--grid", str(env.make_grid(epochs=2)),
            "--trials", "6", "--pruner", "none", "--data-root", str(env.root), "--results", str(env.results),
            "--device", "cpu"]
    procs = [subprocess.Popen([sys.executable, str(wrapper), *args, *jobs], env=environ, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for jobs in (["--jobs", "2"], [])]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = load(env.results).trials
    workers = {t.user_attrs["worker"] for t in trials}
    host = socket.gethostname()
    assert f"{host}:{procs[0].pid}" in workers and f"{host}:{procs[1].pid}" in workers
    assert len(workers) == 3, workers  # and the --jobs child
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert 6 <= len(trials) <= 8  # racing workers may each start one past the total
    assert len(exported(env.results)["params"]) == 7


@pytest.mark.slow
def test_a_killed_process_leaves_a_trial_that_the_next_start_fails(env, tmp_path, capsys, fake_fit):
    wrapper = tmp_path / "fake_bench.py"
    wrapper.write_text(WRAPPER.format(tests=str(Path(__file__).parent)))
    (tmp_path / "barrier").mkdir()
    environ = {**os.environ, "FAKE_BARRIER": str(tmp_path / "barrier"), "FAKE_WORKERS": "1", "FAKE_EPOCH_S": "1"}
    grid = env.make_grid(epochs=60)
    proc = subprocess.Popen([sys.executable, str(wrapper), "tune", "--task", "breastmnist", "--variant", "baseline",
                             "--grid", str(grid), "--trials", "3", "--study", "killed", "--data-root", str(env.root),
                             "--results", str(env.results), "--device", "cpu"],
                            env=environ, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = env.results / "optuna" / "killed.log"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # wait until it is inside a trial (an epoch reported)
            if journal.exists() and journal.stat().st_size:
                trials = load(env.results, name="killed", storage=str(journal)).trials
                if trials and trials[0].intermediate_values:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the tuning process never started a trial")
    finally:
        proc.kill()
        proc.wait()
    assert load(env.results, name="killed", storage=str(journal)).trials[0].state == TrialState.RUNNING

    assert env.tune("--study", "killed", grid=env.make_grid(epochs=2), trials=2) == 0
    trials = load(env.results, name="killed", storage=str(journal)).trials
    assert trials[0].state == TrialState.FAIL and "is gone" in trials[0].user_attrs["interrupted"]
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 2
    assert "trial 0 was left running" in capsys.readouterr().out


def test_a_trial_running_here_stays_running_when_another_studys_trial_with_its_id_ends(tmp_path):
    """Two Dask threads of one process run trial 0 of study a and trial 0 of study b (each journal numbers its
    trials from 0). b's ending must not make a's look left behind by a gone process: a's trial stays running
    (seen for real in the Dask test as 'trial 1 was left running (process ... is gone)')."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    studies = {n: optuna.create_study(study_name=n, storage=JournalStorage(JournalFileBackend(str(tmp_path / n))))
               for n in ("a", "b")}
    trials = {n: s.ask() for n, s in studies.items()}
    assert tune_study.optuna_trial_id(trials["a"]) == tune_study.optuna_trial_id(trials["b"])
    keys = {n: (n, tune_study.optuna_trial_id(t)) for n, t in trials.items()}
    try:
        for n, t in trials.items():  # what `work` does around each trial
            tune_trials.RUNNING_HERE.add(keys[n])
            t.set_user_attr("worker", tune_trials.worker_id())
        studies["b"].tell(trials["b"], 0.5)
        tune_trials.RUNNING_HERE.discard(keys["b"])
        assert tune_trials.fail_stale(studies["a"], log=lambda m: None) == []
        assert studies["a"].trials[0].state == TrialState.RUNNING
        tune_trials.RUNNING_HERE.discard(keys["a"])  # a's process no longer runs it: now it is left behind
        assert tune_trials.fail_stale(studies["a"], log=lambda m: None) == [0]
    finally:
        tune_trials.RUNNING_HERE.difference_update(keys.values())


@pytest.mark.slow
def test_jobs_spread_over_the_studies_first(env, tmp_path):
    """--jobs 2 on two studies: each worker starts on its own study (then they share what is left)."""
    wrapper = tmp_path / "fake_bench.py"
    wrapper.write_text(WRAPPER.format(tests=str(Path(__file__).parent)))
    (tmp_path / "barrier").mkdir()
    environ = {**os.environ, "FAKE_BARRIER": str(tmp_path / "barrier"), "FAKE_WORKERS": "2", "FAKE_EPOCH_S": "0.1"}
    grid = env.make_grid(epochs=2, variants=("baseline", "adapters"))
    done = subprocess.run([sys.executable, str(wrapper), *grid_args(env, grid, "--trials", "2", "--seeds", "1",
                                                                     "--jobs", "2", "--pruner", "none")],
                          env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    firsts = set()
    for variant in ("baseline", "adapters"):
        trials = load(env.results, exported(env.results, variant)).trials
        assert 2 <= len(trials) <= 3 and all(t.state == TrialState.COMPLETE for t in trials)
        firsts.add(trials[0].user_attrs["worker"])
    assert len(firsts) == 2, firsts


@pytest.mark.slow
def test_dask_cluster_runs_the_studies(env, capsys, fake_fit, monkeypatch):
    import distributed
    import torch

    monkeypatch.setattr(dispatch, "POLL_S", 0.2)
    threads = torch.get_num_threads()
    grid = env.make_grid(epochs=1, variants=("baseline", "adapters"))
    try:  # an in-process cluster: its worker threads see the stand-in fit
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c:
            rc = cli.main(grid_args(env, grid, "--trials", "2", "--seeds", "1", "--backend", "dask",
                                    "--scheduler", c.scheduler_address))
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out + captured.err
    assert "2 worker loops on the Dask cluster" in out and "journal storage" in out
    for variant in ("baseline", "adapters"):
        doc = exported(env.results, variant)  # written by this process, not the workers
        trials = load(env.results, doc).trials
        assert 2 <= len(trials) <= 3 and all(t.state == TrialState.COMPLETE for t in trials)
        assert f"done: breastmnist/{variant}: " in out


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 in a temp dir; yields its URL."""
    with postgres_cluster() as cluster:
        yield cluster.url


@pytest.mark.slow
def test_postgresql_url_runs_and_resumes_trials(env, capsys, fake_fit, postgres):
    assert env.tune("--storage", postgres, trials=2) == 0
    doc = exported(env.results)
    assert doc["storage"] == postgres
    assert env.tune("--storage", postgres, trials=3) == 0
    trials = load(env.results, doc, storage=postgres).trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert not (env.results / "optuna").exists()  # nothing in the default journal
    assert "3/3 done" in capsys.readouterr().out


@pytest.mark.slow
def test_postgresql_shares_a_grid_between_machines(env, capsys, fake_fit, postgres):
    """Two machines (two result folders) run the same grid-wide command against one database: the second
    finds every study done, adds no trial, and writes the same tuned files."""
    grid = env.make_grid(epochs=1, variants=("baseline", "adapters"))
    machines = [env.results.parent / "machine-a", env.results.parent / "machine-b"]
    for results in machines:
        assert cli.main(["tune", "--grid", str(grid), "--trials", "2", "--seeds", "1", "--storage", postgres,
                         "--data-root", str(env.root), "--results", str(results), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("] trial ") == 4  # 2 studies x 2 trials, all on the first machine
    for variant in ("baseline", "adapters"):
        a, b = (json.loads((m / "tuned" / f"breastmnist__{variant}.json").read_text()) for m in machines)
        assert a["study"] == b["study"] and a["params"] == b["params"] and a["storage"] == postgres
        assert len(load(machines[0], a, storage=postgres).trials) == 2
    assert not any((m / "optuna").exists() for m in machines)
