"""`bench run`: train and evaluate the runs of a grid, skipping those stored ok."""

from __future__ import annotations

from bench.cli.options import (
    add_cost,
    add_data_root,
    add_grid,
    add_results,
    add_slurm,
    cost_lines,
    run_table,
    slurm_options,
)
from bench.errors import BenchError


def register(sub) -> None:
    p = sub.add_parser("run", help="train and evaluate the runs of a grid, skipping those stored ok",
                       description="Train every run of a grid not yet stored ok. Failed runs are retried on every "
                                   "call (--skip-failed leaves them); --force reruns all. Safe to kill and rerun.")
    add_grid(p)
    add_results(p)
    add_data_root(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="parallel worker processes (joblib): one GPU each, round-robin, or a share of the CPU cores")
    p.add_argument("--runs-per-gpu", type=int, metavar="K",
                   help="K runs at once on each visible GPU (sets --jobs to K x GPUs); for small runs")
    p.add_argument("--backend", choices=("local", "dask", "slurm"), default="local",
                   help="local (this machine, --jobs), dask (an existing cluster, --scheduler) or slurm (jobs "
                        "submitted with sbatch, see the SLURM options)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="the Dask scheduler, e.g. tcp://10.0.0.1:8786")
    p.add_argument("--force", action="store_true", help="rerun runs already stored ok (a failed rerun keeps the ok row)")
    p.add_argument("--skip-failed", action="store_true", help="do not retry runs stored as failed")
    p.add_argument("--worker-retries", type=int, default=1, metavar="N",
                   help="start a run again at most N times when its worker process dies or its Dask worker is lost "
                        "(default 1); past that it is stored failed")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would run and what it costs, and exit (no training, no network)")
    p.add_argument("--params", metavar="tuned|DIR",
                   help="apply tuned hyperparameters: 'tuned' reads <results>/tuned/<task>__<variant>.json "
                        "(written by bench tune) for every run, DIR another folder of such files; "
                        "the run ids change with the values and each row names its file (params_file)")
    p.add_argument("--tracker", choices=("mlflow",),
                   help="log each run to MLflow as it is stored (experiment = the grid's name); a tracker that "
                        "fails never stops the grid: it warns once, `bench export mlflow` backfills")
    p.add_argument("--tracker-uri", metavar="URI", help="the MLflow tracking URI, e.g. http://mlflow.example:5000")
    add_cost(p)
    add_slurm(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    import signal
    import threading

    from bench import run, store
    from bench.config import parse_sets
    from bench.data import resolve_root
    from bench.grid import load_grid
    from bench.run import dispatch
    from bench.tune.params import with_params as tune_params

    grid = load_grid(args.grid, parse_sets(args.sets))
    grid = tune_params(grid, args.params, args.results)  # --params tuned: each run gets its tuned values
    options = run.RunOptions(device=args.device, force=args.force, retry_failed=not args.skip_failed, jobs=args.jobs,
                             runs_per_gpu=args.runs_per_gpu, backend=args.backend, scheduler=args.scheduler,
                             worker_retries=args.worker_retries, portable=grid.portable, slurm=slurm_options(args),
                             tracker=_tracker(args, grid.name)).check()
    run.check_tasks(grid.runs)
    ids = grid.run_ids()
    status = store.statuses(args.results, ids)
    todo_ids = [rid for rid in ids if run.wanted(status[rid], options.force, options.retry_failed)]
    todo_set = set(todo_ids)
    todo = [c for c, rid in zip(grid.runs, ids) if rid in todo_set]
    n_ok = sum(s == "ok" for s in status.values())
    n_failed = sum(s == "failed" for s in status.values())
    print(f"grid {grid.name}: {len(grid.runs)} runs, {n_ok} done, {n_failed} failed, {len(todo)} to run"
          + (" (failed runs are retried)" if n_failed and options.retry_failed and not options.force else ""))
    if args.dry_run:
        for note in run.check_offline(todo, resolve_root(args.data_root)):
            print(f"note: {note}")
        why = {rid: {"ok": "forced", "failed": "retry failed"}.get(status[rid], "new") for rid in todo_ids}
        if todo:
            run_table(todo, todo_ids, status, why)
        for line in _start_lines(grid.runs):
            print(line)
        for cost_line in cost_lines(grid.runs, todo, args):
            print(cost_line)
        return 0

    # SIGTERM (a scheduler's pre-emption, `timeout`) stops like Ctrl-C, after the run being written is whole
    main_thread = threading.current_thread() is threading.main_thread()
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, dispatch.interrupt) for s in stops} if main_thread else {}
    try:
        summary = run.run_all(grid.runs, args.data_root, args.results, options)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for r in summary.failed:
        kept = " (the earlier ok result is kept)" if r["run_id"] in summary.kept else ""
        print(f"failed {r['run_id']} ({r['label']} {r['task']}@{r['size']} seed={r['seed']}): {r['error']}{kept}; "
              f"log: {store.log_path(args.results, r['run_id'])}")
    n_failed = len(summary.failed)
    print(f"done: {len(summary.rows) - n_failed} ok, {n_failed} failed, {summary.skipped} skipped; "
          f"results in {args.results}")
    return 1 if n_failed else 0


def _tracker(args, experiment: str):
    if (args.tracker is None) != (args.tracker_uri is None):
        raise BenchError("--tracker mlflow and --tracker-uri URI go together, e.g. --tracker mlflow --tracker-uri "
                         "http://localhost:5000")
    if args.tracker is None or args.dry_run:
        return None
    import shlex

    from bench.tracker import Tracker

    backfill = ["bench", "export", "mlflow", "--uri", args.tracker_uri, "--results", str(args.results),
                "--grid", args.grid, *(x for kv in args.sets for x in ("--set", kv))]
    return Tracker(args.tracker_uri, experiment, backfill=shlex.join(backfill))


def _start_lines(grid_runs) -> list[str]:
    """'start: LABELS (N runs): WHERE' per starting point, so a dry run says which weights each variant begins from."""
    from bench.models.checkpoint2d import describe_start

    groups: dict[str, dict[str, int]] = {}
    for cfg in grid_runs:
        labels = groups.setdefault(describe_start(cfg), {})
        labels[cfg.label] = labels.get(cfg.label, 0) + 1
    return [f"start: {', '.join(labels)} ({sum(labels.values())} runs): {where}" for where, labels in groups.items()]
