"""A study's pruner and sampler, from the search-space file and the command line.

Sampler: TPE (multivariate, constant liar for parallel workers), reseeded for every trial from
`--seed` and the trial number, so a fresh study replays exactly and a resumed or parallel one does not
redraw earlier trials' startup points.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from bench.errors import BenchError, one_line

PRUNERS = ("median", "hyperband", "none")


def make_pruner(opts: Mapping[str, Any], steps: int):
    """The per-step pruner; `steps` is a whole trial's (every epoch of every seed)."""
    opts = dict(opts)
    kind = opts.pop("type", "median")
    if kind not in PRUNERS:
        raise BenchError(f"pruner type must be one of {', '.join(PRUNERS)}, got {kind!r}")
    try:
        if kind == "median":
            return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 1, **opts})
        if kind == "hyperband":
            return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": steps, **opts})
        if opts:
            raise TypeError(f"unexpected options {sorted(opts)}")
        return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as e:
        raise BenchError(f"pruner {kind}: {one_line(e)}") from None


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random state is reset for every trial from (seed, trial number).

    One seeded TPESampler per process would replay the same startup points in every process sharing
    a study, and again after a resume; seeding by trial number (unique in the storage) avoids both and
    keeps a fresh single-process study exactly reproducible. TPE reads the history from the study, so a
    new inner sampler per trial loses nothing.
    """

    def __init__(self, seed: int, **tpe_options):
        self._seed, self._options = seed, tpe_options
        self._inner = self._make(0)

    def _make(self, number: int) -> optuna.samplers.TPESampler:
        seed = int.from_bytes(hashlib.sha1(f"{self._seed}:{number}".encode()).digest()[:4], "little")
        return optuna.samplers.TPESampler(seed=seed, **self._options)

    def before_trial(self, study, trial) -> None:
        self._inner = self._make(trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(opts: Mapping[str, Any], seed: int) -> TrialSeededTPE:
    opts = {"multivariate": True, "constant_liar": True, **opts}
    if "seed" in opts:
        raise BenchError("sampler: set the seed with --seed, not in the space file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return TrialSeededTPE(seed, **opts)
        except (TypeError, ValueError) as e:
            raise BenchError(f"sampler: {one_line(e)}") from None
