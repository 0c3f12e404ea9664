"""`bench list`: the runs of a grid, which are done, and what the rest will cost."""

from __future__ import annotations

from bench.cli.options import add_cost, add_grid, add_results, cost_lines, run_table
from bench.errors import BenchError


def register(sub) -> None:
    p = sub.add_parser("list", help="the runs of a grid, which are done, and what the rest will cost",
                       description="List a grid's runs: how many, a table of them, their state in the store, and the "
                                   "analytic training FLOPs and GPU time of the runs still to do and of the whole grid.")
    add_grid(p)
    add_results(p)
    add_cost(p)
    p.add_argument("--cpu-estimate", action="store_true",
                   help="also time a few real training steps of each distinct model on this machine's CPU and print "
                        "the grid's wall clock here (seconds to minutes: one model per setting is built)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="with --cpu-estimate: the worker processes bench run --jobs N would use (threads split)")
    p.set_defaults(func=cmd_list)


def _weights_line(grid_runs) -> str:
    """The disk the grid's weights files take (save_weights), or would take with --set save_weights=true."""
    import dataclasses

    from bench.cost import saved_bytes

    saving = [c for c in grid_runs if c.save_weights]
    runs = saving or [dataclasses.replace(c, save_weights=True) for c in grid_runs]
    size, unknown = saved_bytes(runs)
    what = (f"{len(saving)} runs save their weights (save_weights)" if saving else
            f"save_weights is off; with --set save_weights=true the {len(runs)} runs")
    left = f"; {unknown} runs of unknown size left out" if unknown else ""
    amount = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
    return f"weights on disk: {what}: {amount} (float32, the frozen LLM layers not saved){left}"


def _single_class_line(results, runs, ids, status) -> str:
    """How many ok runs predict one class on test (their ACC is a majority rate), from the stored predictions."""
    from bench import store
    from bench.data.info import info

    flags = [store.single_class(results, rid, info()[cfg.data.task]["task"])
             for cfg, rid in zip(runs, ids) if status[rid] == "ok"]
    known = [f for f in flags if f is not None]
    return (f"single_class: {sum(known)} of {len(known)} ok runs with stored predictions predict one class on test "
            "(their ACC is the majority rate; the report calls such ACC contrasts not interpretable)")


def cmd_list(args) -> int:
    from collections import Counter

    from bench import store
    from bench.config import parse_sets
    from bench.grid import load_grid

    grid = load_grid(args.grid, parse_sets(args.sets))  # resolving every run checked its task and size
    ids = grid.run_ids()
    status = store.statuses(args.results, ids)
    counts = Counter(status.values())
    line = (f"grid {grid.name}: {len(grid.runs)} runs, {counts['ok']} done, {counts['failed']} failed, "
            f"{counts[None]} not run (store: {args.results})")
    print(line)
    run_table(grid.runs, ids, status)
    by_label: dict = {}
    for cfg, rid in zip(grid.runs, ids):
        c = by_label.setdefault(cfg.label, Counter())
        c["total"] += 1
        c[status[rid] or "todo"] += 1
    print("by variant: " + ", ".join(f"{k} {v['ok']}/{v['total']}" for k, v in by_label.items()))
    print(_single_class_line(args.results, grid.runs, ids, status))
    failed = [rid for rid in ids if status[rid] == "failed"]
    for rid, error in store.column(args.results, "error", failed).items():
        print(f"failed {rid}: {error}")
    todo = [cfg for cfg, rid in zip(grid.runs, ids) if status[rid] != "ok"]
    for cost_line in cost_lines(grid.runs, todo, args):
        print(cost_line)
    print(_weights_line(grid.runs))
    if args.cpu_estimate:
        from bench.run import calibrate

        if args.jobs < 1:
            raise BenchError(f"--jobs must be >= 1, got {args.jobs}")
        steps = 3
        for cost_line in calibrate.describe(*calibrate.estimate(grid.runs, todo, args.jobs, steps), steps):
            print(cost_line)
    return 0
