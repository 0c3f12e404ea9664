"""`bench power`: how many seeds a study needs, from a pilot store, before it is run.

Per task and contrast of the pilot (`effects.cell_effects`, the report's own contrasts and variance parts): the
per-seed variance s² and the image part c the seeds share (`engine.shared_image_var`). With n seeds the primary
test's MDE is `engine.union_mde(n, s²/n, c)`; it falls with n towards the floor the test set sets alone,
z-power · sqrt(c), which no number of seeds removes. The seeds needed are the fewest whose MDE is at most the target;
their compute is bench/cost.py's estimate of the planned grid's runs of that arm and its comparator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.report.engine import ALPHA, POWER, seeds_for
from bench.report.stats import METRICS
from bench.report.tables import NAMES, row_name


def parse_target(text: str) -> float | None:
    """A positive MDE, or None for 'paper' (each contrast's target: |the paper's Δ| for that task and arm)."""
    if text == "paper":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise BenchError(f"--target-mde {text}: give a metric difference in (0, 1), e.g. 0.02, or 'paper'")
    return value


def flops_per_seed(runs) -> dict:
    """(task, size, label) -> training FLOPs of one seed's run of the planned grid (None: unknown shape)."""
    from bench.cost import run_flops

    out = {}
    for cfg in runs:
        key = (cfg.data.task, cfg.data.size, cfg.label or cfg.booster.variant)
        if key not in out:
            out[key] = run_flops(cfg)
    return out


def plan(effects: pd.DataFrame, claims: pd.DataFrame, target: float | None, alpha: float = ALPHA,
         bh: bool = False) -> pd.DataFrame:
    """One row per contrast and metric: its target, the α it is tested at (with `bh`: α/m, m its BH family's size:
    BH's first step, the case where every other test of the family is null), the floor and the seeds needed."""
    rows = []
    for k, r in zip(effects.index, effects.to_dict("records")):
        contrast, task, size, setting, label, arm, comparator = k
        for m in METRICS:
            goal = target
            if goal is None:
                key = (task, size, setting, label, arm, m)
                if contrast != "vs baseline" or key not in claims.index:
                    continue
                goal = abs(float(claims.loc[key, "paper_delta"]))
                if goal == 0:  # a claimed Δ of 0 is nothing to detect
                    continue
            family = int(r.get(f"{m}_family") or 0)
            a = alpha / family if bh and family else alpha
            seed_var = r[f"{m}_sd"] ** 2 if r[f"{m}_spread"] else 0.0
            image = r[f"{m}_image_shared_sd"] ** 2
            floor, n = seeds_for(goal, seed_var, image, a)
            rows.append({"contrast": contrast, "task": task, "size": size, "setting": setting, "label": label,
                         "arm": arm, "comparator": comparator, "metric": m, "target": goal, "alpha": a,
                         "family": family, "pilot_n": r[f"{m}_n"], "pilot_mde": r[f"{m}_mde"], "sd": r[f"{m}_sd"],
                         "image_sd": np.sqrt(image), "floor": floor, "seeds": n, "single": r.get("single", "")
                         if m == "acc" else ""})
    return pd.DataFrame(rows)


def lines(table: pd.DataFrame, flops: dict, gpu, utilisation: float, bh: bool) -> list[str]:
    """The printout: one line per contrast and metric, with the compute the seeds cost on the planned grid."""
    from bench.cost import GridCost, _duration

    out = [f"power {POWER:g}, two-sided, the report's primary test (seeds and test images); α "
           + ("BH-aware: α/m, m = the contrast family's size (BH's first step)" if bh else "unadjusted")
           + f"; compute on one {gpu.name} at {utilisation:.0%} (bench/cost.py)"]
    for r in table.to_dict("records"):
        who = f"{row_name(r['task'], r['size'], r['setting'])}  {r['label']}{' · ' + r['arm'] if r['arm'] else ''} " \
              f"{r['contrast']} ({r['comparator']}) {NAMES[r['metric']]}"
        parts = f"s {r['sd']:.4f}, image sd {r['image_sd']:.4f}" if pd.notna(r["image_sd"]) else \
            f"s {r['sd']:.4f}, no image part (pilot without predictions or --replicates 0)"
        head = f"{who}: target MDE {r['target']:.4f} at α {r['alpha']:.3g}; {parts}; floor {r['floor']:.4f}"
        if r["single"]:
            head += f" [ACC not interpretable: {r['single']}]"
        if r["seeds"] is None or pd.isna(r["seeds"]):
            if r["target"] <= r["floor"]:
                out.append(f"{head}: unreachable at any number of seeds (the test set alone gives MDE "
                           f"{r['floor']:.4f})")
            elif not r["sd"] > 0 and not r["image_sd"] > 0:
                out.append(f"{head}: no spread in the pilot (every paired Δ equal): nothing to plan from")
            else:
                out.append(f"{head}: more than 10,000 seeds")
            continue
        n = int(r["seeds"])
        f_arm = flops.get((r["task"], r["size"], r["label"]))
        f_cmp = flops.get((r["task"], r["size"], r["comparator"].split(" · ")[0]))
        if f_arm is None or f_cmp is None:
            cost = "compute unknown (the arm or its comparator is not in the grid, or its LLM's shape is unknown)"
        else:
            c = GridCost(n * (f_arm + f_cmp), 2 * n, {})
            cost = f"{2 * n} runs, {c.flops:.3g} FLOP = {_duration(c.gpu_hours(gpu, utilisation))}"
        out.append(f"{head}: {n} seeds (pilot {r['pilot_n']}: MDE {r['pilot_mde']:.4f}); {cost}")
    return out


def power_report(results: Path, grid, target: float | None, alpha: float, bh: bool, gpu, utilisation: float,
                 replicates: int) -> list[str]:
    """`bench power`'s lines for the pilot store `results` and the planned `grid`."""
    from bench.report.answer import paper_claims
    from bench.report.collect import collect
    from bench.report.effects import add_arms, cell_effects
    from bench.report.published import load_published
    from bench.report.verdict import verdicts

    if not 0 < alpha < 1:
        raise BenchError(f"--alpha {alpha}: give a level in (0, 1), e.g. 0.05")
    pilot = collect(Path(results), None)
    ok = add_arms(pilot[pilot["status"] == "ok"])
    effects = cell_effects(ok, Path(results) if replicates else None, replicates)
    if effects.empty:
        raise BenchError(f"no paired contrast in the pilot store {results}: run a pilot with a baseline and an arm, "
                         "two or more seeds each")
    claims = paper_claims(verdicts(Path(results), ok, effects, load_published())) if target is None else None
    table = plan(effects, claims, target, alpha, bh)
    if table.empty:
        return ["no contrast of the pilot has a paper claim (only 'vs baseline' arms that are one of Lai et al.'s "
                "variants on one of their tasks have one): pass --target-mde X"]
    return lines(table, flops_per_seed(grid.runs), gpu, utilisation, bh)
