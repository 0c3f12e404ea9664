"""`bench`: parse arguments, call one function per subcommand, print user errors as one line (exit 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import BenchError


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", metavar="DIR",
                   help="MedMNIST files (default: $BENCH_DATA_ROOT, else medmnist's ~/.medmnist)")


def _add_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", metavar="DIR", type=Path, default=Path("results"),
                   help="the result store (default: results/)")


def _add_grid(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--grid", metavar="NAME|PATH", required=required,
                   help="a grid in ablations/ by name (smoke, ci, paper, full) or a path to a YAML file")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="override a config field for every run, e.g. --set train.epochs=1 (repeatable)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench", description="R-LLM bench: frozen LLM layers in ViTs on MedMNIST.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="train and evaluate the runs of a grid, skipping those stored ok",
                       description="Train every run of a grid not yet stored with status ok; failed runs are retried.")
    _add_grid(p)
    _add_results(p)
    _add_data_root(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true", help="rerun runs already stored ok (their rows are replaced)")
    p.add_argument("--dry-run", action="store_true", help="print what would run and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="the runs of a grid and which are done", description="List a grid's runs.")
    _add_grid(p)
    _add_results(p)
    p.set_defaults(func=cmd_list)

    data = sub.add_parser("data", help="MedMNIST files: list their state, fetch them ahead of time")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("list", help="for every task and size: verified, missing or corrupt")
    _add_data_root(p)
    p.set_defaults(func=cmd_data_list)
    p = dsub.add_parser("fetch", help="download and verify files (for workers without internet)")
    p.add_argument("tasks", nargs="+", metavar="TASK", help="medmnist flags, e.g. breastmnist organmnist3d")
    p.add_argument("--size", type=int, action="append", help="image size (repeatable; default 28)")
    _add_data_root(p)
    p.set_defaults(func=cmd_data_fetch)

    p = sub.add_parser("report", help="tables, statistics, plots and one HTML page from the store")
    _add_results(p)
    p.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports/)")
    p.add_argument("--grid", metavar="NAME|PATH", help="report this grid's runs (default: every stored run)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="the --set overrides the grid was run with")
    p.add_argument("--metric", choices=("auc", "acc"), default="auc", help="metric for deltas and plots")
    p.set_defaults(func=cmd_report)
    return ap


def cmd_run(args) -> int:
    from bench import runner
    from bench.config import parse_sets, run_id
    from bench.grid import load_grid

    grid = load_grid(args.grid, parse_sets(args.sets))
    todo = runner.pending(grid.runs, args.results, args.force)
    print(f"grid {grid.name}: {len(grid.runs)} runs, {len(grid.runs) - len(todo)} already done, {len(todo)} to run")
    if args.dry_run:
        for cfg in todo:
            print(f"  {run_id(cfg)}  {cfg.label:<12} {cfg.data.task}@{cfg.data.size} seed={cfg.seed}")
        return 0
    rows = runner.run_all(todo, args.data_root, args.results, args.device, force=args.force)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"failed {r['run_id']} ({r['label']} {r['task']} seed={r['seed']}): {r['error']}")
    print(f"done: {len(rows) - len(failed)} ok, {len(failed)} failed; results in {args.results}")
    return 1 if failed else 0


def cmd_list(args) -> int:
    from bench import store
    from bench.config import parse_sets, run_id
    from bench.grid import load_grid

    grid = load_grid(args.grid, parse_sets(args.sets))
    done = 0
    print(f"{'run_id':<16}  {'status':<7} {'label':<14} {'task':<22} {'size':>4} {'seed':>4}")
    for cfg in grid.runs:
        status = store.run_status(args.results, run_id(cfg)) or "-"
        done += status == "ok"
        print(f"{run_id(cfg):<16}  {status:<7} {cfg.label:<14} {cfg.data.task:<22} {cfg.data.size:>4} {cfg.seed:>4}")
    print(f"grid {grid.name}: {len(grid.runs)} runs, {done} done")
    return 0


def cmd_data_list(args) -> int:
    from bench.data import TASKS, file_status, resolve_root, sizes_of, task_spec

    root = resolve_root(args.data_root)
    print(f"data root: {root}")
    for task in TASKS:
        states = [f"{size}:{file_status(task_spec(task, size), root)}" for size in sizes_of(task)]
        print(f"  {task:<22} " + "  ".join(states))
    return 0


def cmd_data_fetch(args) -> int:
    from bench.data import ensure_file, resolve_root, task_spec

    root = resolve_root(args.data_root)
    specs = [task_spec(t, s) for t in args.tasks for s in (args.size or [28])]  # validate all first
    for spec in specs:
        print(f"{spec.task}@{spec.size}: {ensure_file(spec, root, download=True)} verified")
    return 0


def cmd_report(args) -> int:
    from bench.config import parse_sets
    from bench.grid import load_grid
    from bench.report import expected_runs, make_report

    expected, name = None, "all"
    if args.grid:
        grid = load_grid(args.grid, parse_sets(args.sets))
        expected, name = expected_runs(grid.runs), grid.name
    out = make_report(args.results, args.out, name=name, metric=args.metric, expected=expected)
    print(f"report written to {out}/index.html")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; finished runs are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
