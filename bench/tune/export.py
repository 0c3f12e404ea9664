"""A study's best parameters within its budget, written as the tuned-params file with their provenance.

The best parameters go to `<results>/tuned/<task>__<variant>.json` after every new best and at the end
(see `bench.tune.params`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from optuna.trial import TrialState

from bench.config import flatten, override, run_id
from bench.tune.params import write_tuned
from bench.tune.setup import METRIC, OBJECTIVE, TuneSetup
from bench.tune.storage import describe_storage
from bench.tune.trials import best_in_budget, budget


def export(study, setup: TuneSetup) -> Path | None:
    """Write the budget's best parameters and their provenance; None while no trial of it is complete."""
    best = best_in_budget(study, setup.n_trials)
    if best is None:
        return None
    base = setup.base
    params = {k: best.params[k] for k in setup.space if k in best.params}
    flat_base = flatten(base)
    flat_base.pop("label")
    in_budget = budget(study, setup.n_trials)
    count = {s: sum(t.state == s for t in in_budget) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    doc = {
        "task": base.data.task,
        "variant": base.label,
        "params": params,
        "metric": METRIC,
        "objective": OBJECTIVE,
        "seeds": list(setup.seeds),
        "best_value": best.value,
        "best_seed_val_auc": best.user_attrs.get("seed_val_auc"),
        "best_trial": best.number,
        "study": setup.study,
        "storage": describe_storage(setup.storage),
        "budget": setup.n_trials,
        "n_trials": sum(count.values()),
        "n_complete": count[TrialState.COMPLETE],
        "n_pruned": count[TrialState.PRUNED],
        "n_failed": count[TrialState.FAIL],
        "grid": setup.grid,
        "base_run_id": run_id(base),
        "tuned_run_id": run_id(override(base, params)),
        "searched": sorted(setup.space),
        "space": {k: p.to_dict() for k, p in setup.space.items()},
        "sampler_seed": setup.seed,
        "base": flat_base,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_tuned(setup.export_path, doc)
    return setup.export_path
