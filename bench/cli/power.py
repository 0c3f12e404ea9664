"""`bench power`: the seeds a study needs for a target MDE, from a pilot store, before running it."""

from __future__ import annotations

from pathlib import Path

from bench.cli.options import add_cost
from bench.errors import BenchError


def register(sub) -> None:
    p = sub.add_parser("power", help="the seeds a study needs for a target MDE, from a pilot store, before running it",
                       description="Per task and contrast of a pilot store: the seeds the report's primary test needs "
                                   "to detect the target MDE with power 0.8, the floor the test set alone sets, and "
                                   "what those seeds cost on the planned grid (bench/cost.py's estimate).")
    p.add_argument("--results", type=Path, required=True, metavar="PILOT_STORE", help="the pilot's result store")
    p.add_argument("--grid", required=True, metavar="NAME|PATH", help="the planned grid (its runs price the seeds)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="--set overrides for the planned grid")
    p.add_argument("--target-mde", default="paper", metavar="X|paper",
                   help="the smallest Δ to detect (default 'paper': |the paper's Δ| for each arm that has a claim)")
    p.add_argument("--alpha", type=float, default=0.05, help="two-sided level (default 0.05)")
    p.add_argument("--bh", action="store_true",
                   help="test at α/m, m = the contrast family's size (BH's first step) instead of unadjusted α")
    p.add_argument("--replicates", type=int, default=1000, metavar="N",
                   help="image resamples for the pilot's image part (default 1000; 0: seeds only)")
    add_cost(p)
    p.set_defaults(func=cmd_power)


def cmd_power(args) -> int:
    from bench.config import parse_sets
    from bench.cost import GPUS
    from bench.grid import load_grid
    from bench.report.power import parse_target, power_report

    target = parse_target(args.target_mde)
    if not 0 < args.utilisation <= 1:
        raise BenchError(f"--utilisation {args.utilisation} is a share of the GPU's peak: give a number in (0, 1]")
    grid = load_grid(args.grid, parse_sets(args.sets))
    for line in power_report(args.results, grid, target, args.alpha, args.bh, GPUS[args.gpu], args.utilisation,
                             args.replicates):
        print(line)
    return 0
