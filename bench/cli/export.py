"""`bench export`: the result store into an experiment tracker (MLflow)."""

from __future__ import annotations

from bench.cli.options import add_results
from bench.errors import BenchError


def register(sub) -> None:
    exp = sub.add_parser("export", help="the result store into an experiment tracker (MLflow)")
    esub = exp.add_subparsers(dest="export_command", required=True, metavar="TRACKER")
    p = esub.add_parser("mlflow", help="every stored run as an MLflow run (idempotent: keyed by run id)",
                        description="Log every stored run (or a grid's) to MLflow: one experiment per grid, one MLflow "
                                    "run per run id with the config as params, the history as per-epoch metrics, the "
                                    "results as result.* metrics, status/host/git sha tags, the predictions and log "
                                    "as artifacts. Runs already there are left alone, rerun ones replaced.")
    p.add_argument("--uri", required=True, help="the MLflow tracking URI, e.g. http://localhost:5000")
    add_results(p)
    p.add_argument("--grid", metavar="NAME|PATH", help="export this grid's stored runs into the experiment named "
                                                       "after it (default: every stored run, experiment 'all')")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="the --set overrides the grid was run with")
    p.add_argument("--experiment", metavar="NAME", help="the experiment's name (default: the grid's)")
    p.set_defaults(func=cmd_export_mlflow)


def cmd_export_mlflow(args) -> int:
    from bench.config import parse_sets
    from bench.grid import load_grid
    from bench.tracker import export

    ids, name = None, "all"
    if args.grid:
        grid = load_grid(args.grid, parse_sets(args.sets))
        ids, name = grid.run_ids(), grid.name
    elif args.sets:
        raise BenchError("--set is for --grid: add the grid the runs belong to")
    name = args.experiment or name
    counts = export(args.results, args.uri, name, ids)
    print(f"MLflow experiment '{name}' at {args.uri}: {counts['added']} runs added, {counts['replaced']} replaced "
          f"(rerun since), {counts['unchanged']} already there"
          + (f", {counts['repaired']} repaired (cut off before)" if counts["repaired"] else ""))
    return 0
