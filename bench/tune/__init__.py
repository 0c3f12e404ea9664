"""`bench tune`: Optuna studies over each variant's training hyperparameters, scored on **val** only.

    space     what is searched: the default ranges and the YAML search-space file
    storage   where a study lives: a journal file or an RDB URL
    setup     which studies, their base configs, seeds, names, and the checks before any trial
    sampling  the sampler and the pruner
    trials    heartbeats, trials left behind by a dead process, the --trials budget
    study     one study: the multi-seed objective, the ask/train/tell loop (reconnecting to its storage)
    export    the budget's best parameters as the tuned-params file
    dispatch  many studies over --jobs processes / GPUs or a Dask cluster, and their progress
    params    the tuned-params files, and `bench run --params` applying them

`bench run --params tuned` imports only `params`: this file and `params` import neither optuna nor torch,
so running a grid does not need the tuning stack. The helper below is shared by the modules.
"""

from __future__ import annotations


def safe_name(name: str) -> str:
    """A task, variant or study name as a file name."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)
