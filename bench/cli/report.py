"""`bench report`: tables, statistics, plots and one HTML page from the store."""

from __future__ import annotations

from pathlib import Path

from bench.cli.options import add_results


def register(sub) -> None:
    p = sub.add_parser("report", help="tables, statistics, plots and one HTML page from the store")
    add_results(p)
    p.add_argument("--out", type=Path, default=Path("reports"),
                   help="the report's parent folder (default: reports/): it goes to OUT/<grid>, or to OUT itself when "
                        "OUT is already named after the grid (e.g. --out reports/record)")
    p.add_argument("--grid", metavar="NAME|PATH", help="report this grid's runs (default: every stored run)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="the --set overrides the grid was run with")
    p.add_argument("--metric", choices=("auc", "acc"), default="auc", help="metric for deltas and plots")
    p.add_argument("--replicates", type=int, default=1000, metavar="N",
                   help="bootstrap replicates per arm over seeds and test images (default 1000; 0: no bootstrap). "
                        "Its time grows with test-set size x arms (TissueMNIST: 47,280 test images per run)")
    p.add_argument("--margin", type=float, metavar="D",
                   help="also say per contrast whether a gain or a loss of D is ruled out (one-sided 95%% bounds; "
                        "both: equivalent within ±D, TOST)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from bench.config import parse_sets
    from bench.grid import load_grid
    from bench.report import expected_runs, make_report

    expected, name = None, "all"
    if args.grid:
        grid = load_grid(args.grid, parse_sets(args.sets))
        expected, name = expected_runs(grid), grid.name
    out = make_report(args.results, args.out, name=name, metric=args.metric, expected=expected,
                      replicates=args.replicates, margin=args.margin)
    print(f"report written to {out}/index.html")
    return 0
