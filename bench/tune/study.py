"""The study loop: ask, train, tell, one Optuna study per task and variant, scored on **val** only.

    bench tune [--grid G] [--task T ...] [--variant V ...] --trials N [--seeds K|auto] [--timeout S]
               [--storage URL] [--study NAME] [--jobs K | --backend dask --scheduler ADDRESS] [--space FILE]
               [--pruner median|hyperband|none] [--seed N] [--set key=value ...]

Which studies, their base configs, seeds and names: `bench.tune.setup`; sampler and pruner:
`bench.tune.sampling`; heartbeats, dead workers' trials and the --trials budget: `bench.tune.trials`; the
tuned-params file: `bench.tune.export`; many studies over processes, GPUs and Dask: `bench.tune.dispatch`.

Objective: the mean, over K training seeds, of each seed's best val AUC. The seeds run one after the other,
each a full `fit` on train with val after every epoch; the test split is never loaded (the data is read with
splits=(train, val)) and trials write nothing to the run store. Each seed's best val AUC and best epoch go to
the trial's user attributes `seed_val_auc` / `seed_best_epoch` (with `seeds`).

Pruning steps: seed k's epoch e (both from 0) is step k*E + e, E the epochs; a trial reports at every
step the sum of the best val AUCs so far of the seeds run so far, divided by K: the running mean over the
K seeds with the seeds not yet run counting 0. Trials at one step have run the same seeds and epochs, so
comparing these values is comparing running means at equal progress; the value never decreases, and at
the last step it is the objective. (Median: `n_warmup_steps` counts these steps; hyperband's
max_resource is K*E.)

A dropped database connection (PostgreSQL) is waited for; the trial in flight then fails as interrupted.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from bench.config import override, resolve, run_id
from bench.data import task_spec
from bench.data.loading import load_splits
from bench.errors import BenchError, one_line
from bench.train import fit, pick_device
from bench.tune.export import export
from bench.tune.sampling import make_pruner, make_sampler
from bench.tune.setup import METRIC, OBJECTIVE, TuneSetup
from bench.tune.storage import (
    RECONNECT_S,
    connection_error,
    connection_lost,
    describe_storage,
    open_storage,
    wait_for_storage,
)
from bench.tune.trials import HEARTBEAT_S, RUNNING_HERE, Heartbeat, best_in_budget, fail_stale, tally, worker_id
from bench.upstream import optuna_storage, optuna_trial_id


def open_study(setup: TuneSetup):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(setup.storage)
    where = f"study {setup.study} in {describe_storage(setup.storage)}"
    try:
        study = optuna.create_study(storage=storage, study_name=setup.study, direction="maximize",
                                    sampler=make_sampler(setup.sampler, setup.seed),
                                    pruner=make_pruner(setup.pruner, setup.steps), load_if_exists=True)
    except ValueError as e:  # e.g. an existing study of the same name that minimizes
        raise BenchError(f"{where}: {one_line(e)}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise BenchError(f"{where} minimizes; use another --study")
    attrs = study.user_attrs
    if "base_run_id" in attrs and attrs.get("seeds") != list(setup.seeds):
        was = f"seeds {attrs['seeds']}" if "seeds" in attrs else "one seed per trial (an older bench tune)"
        raise BenchError(f"{where} was tuned with {was}, not seeds {list(setup.seeds)}: its trials score another "
                         "objective; match --seeds or use another --study")
    if "base_run_id" not in attrs:
        for key, value in dict(task=setup.base.data.task, variant=setup.base.label, grid=setup.grid,
                               base_run_id=run_id(setup.base), metric=METRIC, objective=OBJECTIVE,
                               seeds=list(setup.seeds), seed=setup.seed,
                               space={k: p.to_dict() for k, p in setup.space.items()}).items():
            study.set_user_attr(key, value)
    return study



def _short(params: Mapping[str, Any]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k.split('.')[-1]}={fmt(v)}" for k, v in params.items())


def _objective(setup: TuneSetup, trial, splits, spec, device) -> float:
    """The mean over the setup's seeds of each seed's best val AUC, reporting every step (module docstring)."""
    params = {}
    for key, p in setup.space.items():
        try:
            params[key] = p.suggest(trial)
        except ValueError as e:  # the study searched this key as another kind (e.g. float, now categorical)
            raise BenchError(f"study {setup.study} already searched {key} differently ({one_line(e)}); "
                             "keep its search space or start another study with --study NAME") from None
    cfg = resolve(override(setup.base, params))
    trial.set_user_attr("run_id", run_id(cfg))  # the run `bench run --params tuned` makes of the grid's first seed
    trial.set_user_attr("seeds", list(setup.seeds))
    epochs, k = cfg.train.epochs, len(setup.seeds)
    bests, best_epochs, train_s = [], [], 0.0
    for i, seed in enumerate(setup.seeds):
        best_so_far = [-math.inf]

        def on_epoch(epoch: int, val_auc: float | None, i=i, best_so_far=best_so_far) -> None:
            if val_auc is not None and math.isfinite(val_auc):
                best_so_far[0] = max(best_so_far[0], val_auc)
            running = (sum(bests) + best_so_far[0]) / k if math.isfinite(best_so_far[0]) else math.nan
            trial.report(running, i * epochs + epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        m = fit(override(cfg, {"seed": seed}), splits, spec, device, on_epoch=on_epoch).metrics
        value = m[METRIC]
        if value is None or not math.isfinite(value):
            raise ValueError(f"best {METRIC} of seed {seed} is {value}")
        bests.append(float(value))
        best_epochs.append(m.get("best_epoch"))
        train_s += m.get("train_s") or 0.0
        trial.set_user_attr("seed_val_auc", bests)
        trial.set_user_attr("seed_best_epoch", best_epochs)
        trial.set_user_attr("train_s", train_s)
    return sum(bests) / k


def _reconnect(study, setup: TuneSetup, trial, err: BaseException, say: Callable[[str], None]) -> None:
    """The study's database connection dropped: wait until it answers again, then fail the trial that was in
    flight as interrupted (it does not count towards --trials, so the study runs another in its place)."""
    shown = describe_storage(setup.storage)
    err = connection_error(err) or err
    say(f"lost the connection to the study's storage {shown} ({one_line(err, 200)}); waiting up to "
        f"{RECONNECT_S:.0f}s for it to come back")
    storage = optuna_storage(study)
    wait_for_storage(storage, setup.study, shown, err)
    if trial is None:
        say("storage back; the study goes on")
        return
    trial_id = optuna_trial_id(trial)
    RUNNING_HERE.discard((study.study_name, trial_id))
    try:
        storage.set_trial_user_attr(trial_id, "interrupted", f"storage connection lost: {one_line(err)}"[:500])
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        say(f"storage back; trial {trial.number}, in flight when it dropped, failed as interrupted (not counted); "
            "the study goes on")
    except (UpdateFinishedTrialError, KeyError):  # its result was stored before the drop
        say(f"storage back; trial {trial.number} was stored before the drop; the study goes on")


def work(setup: TuneSetup, tag: str = "", log: Callable[[str], None] | None = None, deadline: float | None = None,
         export_best: bool = True, stop: Callable[[], bool] | None = None) -> None:
    """Ask, train, tell until the study has `n_trials` counted trials, `deadline` (time.monotonic) passes or
    `stop()` says so; `export_best`: write the tuned file at every new best (where the results folder is seen)."""
    say = log or (lambda msg: print(msg, flush=True))
    prefix = f"[{tag + ' ' if tag else ''}{setup.name}] "
    device = pick_device(setup.device)
    spec = task_spec(setup.base.data.task, setup.base.data.size)
    splits = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = open_study(setup)
        while True:
            trial = None
            try:
                fail_stale(study, lambda m: say(prefix + m))
                if deadline is not None and time.monotonic() >= deadline:
                    say(f"{prefix}timeout: no new trials")
                    break
                if (stop and stop()) or tally(study)["counted"] >= setup.n_trials:
                    break
                if splits is None:  # only a study with trials left to run loads its data
                    splits = load_splits(spec, setup.data_root, download=False, splits=("train", "val"))  # never test
                trial = study.ask()
                trial_id = optuna_trial_id(trial)
                RUNNING_HERE.add((study.study_name, trial_id))
                trial.set_user_attr("worker", worker_id())
                trial.set_user_attr("heartbeat", time.time())
                beat = Heartbeat(optuna_storage(study), trial_id, HEARTBEAT_S)
                state, note = TrialState.COMPLETE, ""
                try:
                    value = _objective(setup, trial, splits, spec, device)
                except optuna.TrialPruned:
                    beat.stop()
                    state = TrialState.PRUNED
                    frozen = study.tell(trial, state=state)
                    step, running = max(frozen.intermediate_values.items(), default=(-1, math.nan))
                    seed, epoch = divmod(step, setup.base.train.epochs)
                    where = f"epoch {epoch}" + (f" of seed {setup.seeds[seed]} (step {step})" if len(setup.seeds) > 1 else "")
                    note = f"pruned after {where}, running {setup.objective} {running:.4f}"
                except BaseException as e:
                    beat.stop()
                    if connection_lost(e):  # the trial is not at fault: no verdict on it (see _reconnect)
                        raise
                    user_error = isinstance(e, BenchError)
                    interrupted = isinstance(e, (KeyboardInterrupt, SystemExit))
                    # a stopped trial, or one the user's setup broke, does not count towards --trials
                    trial.set_user_attr("interrupted" if interrupted or user_error else "error",
                                        f"{type(e).__name__}: {e}".splitlines()[0][:500])
                    study.tell(trial, state=TrialState.FAIL)
                    if interrupted or user_error:
                        raise
                    state, note = TrialState.FAIL, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                else:
                    beat.stop()
                    study.tell(trial, value)
                    note = f"{setup.objective} {value:.4f}"
                finally:
                    RUNNING_HERE.discard((study.study_name, trial_id))
                n = tally(study)
                best = best_in_budget(study, setup.n_trials)
                best_txt = f"best {setup.objective} {best.value:.4f} (trial {best.number})" if best else "no complete trial yet"
                say(f"{prefix}trial {trial.number} {note} [{_short(trial.params)}] | "
                    f"{n['done']}/{setup.n_trials} done, {best_txt}")
                if export_best and state == TrialState.COMPLETE and best is not None and best.number == trial.number:
                    export(study, setup)
            except BaseException as e:  # a dropped database connection: wait for it, then go on
                if not connection_lost(e):
                    raise
                _reconnect(study, setup, trial, e, lambda m: say(prefix + m))



def summarise(setup: TuneSetup, write: bool = True) -> dict:
    """A study's state: trial counts, the budget's best, and (with `write`) its exported file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = open_study(setup)
        best = best_in_budget(study, setup.n_trials)
        path = export(study, setup) if write else None
        return {"task": setup.base.data.task, "variant": setup.base.label, "study": setup.study,
                "storage": describe_storage(setup.storage), **tally(study), "n_trials": setup.n_trials,
                "best_value": best.value if best else None, "best_trial": best.number if best else None,
                "best_params": best.params if best else None, "export": path}
