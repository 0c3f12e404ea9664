"""`bench`: parse arguments, call one function per subcommand, print user errors as one line (exit 2)."""

from __future__ import annotations

import argparse
import os
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
                   help="override a config field for every run, e.g. --set train.epochs=1, or for one variant's runs, "
                        "e.g. --set rllm:vit.checkpoint=PATH (repeatable)")


def _add_cost(p: argparse.ArgumentParser) -> None:
    from bench.cost import DEFAULT_GPU, DEFAULT_UTILISATION, GPUS

    p.add_argument("--gpu", choices=sorted(GPUS), default=DEFAULT_GPU,
                   help=f"the GPU the cost estimate assumes (default {DEFAULT_GPU}; dense peak at the precision it runs: "
                        "bf16, or fp16 on V100/T4)")
    p.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION, metavar="F",
                   help=f"the share of its peak a run sustains, for the estimate (default {DEFAULT_UTILISATION})")


def _add_slurm(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLURM (--backend slurm: jobs submitted with sbatch through dask-jobqueue)")
    g.add_argument("--slurm-config", metavar="FILE",
                   help="YAML with any of the options below (keys: partition, account, time, gpus_per_job, "
                        "cpus_per_job, mem, max_jobs, sbatch, python, log_dir, interface, scheduler_address); the "
                        "options given here win")
    g.add_argument("--partition", help="sbatch -p")
    g.add_argument("--account", help="sbatch -A")
    g.add_argument("--time", metavar="LIMIT", help="each job's time limit, e.g. 24:00:00 (default 24:00:00); "
                                                  "no run starts that its estimate says cannot finish in it")
    g.add_argument("--gpus-per-job", type=int, metavar="G", help="GPUs per job, one run on each (default 1; 0: CPU)")
    g.add_argument("--cpus-per-job", type=int, metavar="C", help="CPUs per job (default 8)")
    g.add_argument("--mem", help="memory per job, e.g. 64GB (default)")
    g.add_argument("--max-jobs", type=int, metavar="N", help="jobs at once (default 8)")
    g.add_argument("--sbatch", action="append", default=[], metavar="LINE",
                   help="an extra #SBATCH line, e.g. --sbatch=--qos=high (repeatable)")
    g.add_argument("--interface", metavar="NAME", help="the network interface the Dask scheduler and the jobs' "
                                                      "workers use, e.g. ib0 (default: the host's first)")
    g.add_argument("--scheduler-address", metavar="HOST", help="the host name or IP the scheduler listens on, "
                                                               "that the jobs' workers reach")


def _slurm_options(args, cost: bool = True):
    """SlurmOptions from --slurm-config and the CLI, for --backend slurm; else None (and no SLURM option given)."""
    from bench.run.slurm import load_options

    given = {k: getattr(args, k) for k in ("partition", "account", "time", "gpus_per_job", "cpus_per_job", "mem",
                                           "max_jobs", "interface", "scheduler_address")}
    if args.backend != "slurm":
        if args.slurm_config or args.sbatch or any(v is not None for v in given.values()):
            raise BenchError("the SLURM options (--partition, --time, --slurm-config, ...) are for --backend slurm; "
                             "add --backend slurm")
        return None
    extra = {"gpu": args.gpu, "utilisation": args.utilisation} if cost else {}
    return load_options(args.slurm_config, **given, sbatch=tuple(args.sbatch), **extra)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench", description="R-LLM bench: frozen LLM layers in ViTs on MedMNIST.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="train and evaluate the runs of a grid, skipping those stored ok",
                       description="Train every run of a grid not yet stored ok. Failed runs are retried on every "
                                   "call (--skip-failed leaves them); --force reruns all. Safe to kill and rerun.")
    _add_grid(p)
    _add_results(p)
    _add_data_root(p)
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
    _add_cost(p)
    _add_slurm(p)
    p.set_defaults(func=cmd_run)

    exp = sub.add_parser("export", help="the result store into an experiment tracker (MLflow)")
    esub = exp.add_subparsers(dest="export_command", required=True, metavar="TRACKER")
    p = esub.add_parser("mlflow", help="every stored run as an MLflow run (idempotent: keyed by run id)",
                        description="Log every stored run (or a grid's) to MLflow: one experiment per grid, one MLflow "
                                    "run per run id with the config as params, the history as per-epoch metrics, the "
                                    "results as result.* metrics, status/host/git sha tags, the predictions and log "
                                    "as artifacts. Runs already there are left alone, rerun ones replaced.")
    p.add_argument("--uri", required=True, help="the MLflow tracking URI, e.g. http://localhost:5000")
    _add_results(p)
    p.add_argument("--grid", metavar="NAME|PATH", help="export this grid's stored runs into the experiment named "
                                                       "after it (default: every stored run, experiment 'all')")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="the --set overrides the grid was run with")
    p.add_argument("--experiment", metavar="NAME", help="the experiment's name (default: the grid's)")
    p.set_defaults(func=cmd_export_mlflow)

    p = sub.add_parser("list", help="the runs of a grid, which are done, and what the rest will cost",
                       description="List a grid's runs: how many, a table of them, their state in the store, and the "
                                   "analytic training FLOPs and GPU time of the runs still to do and of the whole grid.")
    _add_grid(p)
    _add_results(p)
    _add_cost(p)
    p.add_argument("--cpu-estimate", action="store_true",
                   help="also time a few real training steps of each distinct model on this machine's CPU and print "
                        "the grid's wall clock here (seconds to minutes: one model per setting is built)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="with --cpu-estimate: the worker processes bench run --jobs N would use (threads split)")
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

    p = sub.add_parser("tune", help="search the hyperparameters of a grid's variants with Optuna (val only; test never read)",
                       description="Optuna TPE studies, one per task and variant of a grid (or those --task/--variant "
                                   "select), each scored on the mean over --seeds training seeds of the best val AUC "
                                   "and pruned on its running mean. Every variant of a task gets the same --trials and "
                                   "the same search space. Studies are resumable and shareable: rerun, or start more "
                                   "processes/machines on the same --storage, and trials add up to --trials. The best "
                                   "parameters go to <results>/tuned/<task>__<variant>.json for "
                                   "`bench run --params tuned`.")
    p.add_argument("--grid", metavar="NAME|PATH", default=None,
                   help="the grid whose variants are tuned (default: smoke, offline and quick; use the grid you will "
                        "compare with, e.g. paper, for the real studies)")
    p.add_argument("--task", action="append", default=[], metavar="T",
                   help="tune only this task (repeatable; default: every task of the grid), e.g. breastmnist")
    p.add_argument("--variant", action="append", default=[], metavar="V",
                   help="tune only this variant (label) of the grid (repeatable; default: every one), e.g. rllm")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="override a base config field, e.g. --set train.epochs=20 (repeatable; part of the study hash)")
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="each study's total number of trials, counted over every process and earlier calls")
    p.add_argument("--seeds", default="auto", metavar="K|auto",
                   help="training seeds per trial; the objective is the mean of their best val AUCs (default auto: "
                        "3 when the task's val split has under 500 images, else 1; seeds 1000, 1001, ...)")
    p.add_argument("--timeout", type=float, metavar="S", help="start no new trial after S seconds (this process)")
    p.add_argument("--storage", metavar="URL|FILE",
                   help="an Optuna RDB URL (postgresql://user@host/db, sqlite:///f.db) or a journal file, shared by "
                        "every study (default: one journal per study, <results>/optuna/<study>.log)")
    p.add_argument("--study", metavar="NAME", help="the study name, for one task and variant only "
                                                   "(default: <task>__<variant>__<hash of the base config and seeds>)")
    p.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="worker processes on this machine (default 1): one GPU each, round-robin, or a share of the "
                        "CPU cores; they spread over the studies, then share the unfinished ones")
    p.add_argument("--backend", choices=("local", "dask", "slurm"), default="local",
                   help="local (this machine, --jobs), dask (an existing cluster, --scheduler) or slurm (one worker "
                        "loop per GPU of --max-jobs jobs)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="the Dask scheduler, e.g. tcp://10.0.0.1:8786")
    p.add_argument("--space", metavar="FILE", help="a YAML search-space file (params, replace, pruner, sampler); "
                                                    "see bench/tune/space.py for the format")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"),
                   help="pruner on the running mean, per step = epoch of a seed (default: median)")
    p.add_argument("--seed", type=int, default=0, help="the sampler seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    _add_results(p)
    _add_data_root(p)
    _add_slurm(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="tables, statistics, plots and one HTML page from the store")
    _add_results(p)
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
    _add_cost(p)
    p.set_defaults(func=cmd_power)

    p = sub.add_parser("explain", help="CAM heatmaps of the same test images under a baseline and its R-LLM run",
                       description="Render grad-cam heatmaps (at the last ViT block, before the booster) of the same "
                                   "test images under a baseline run and its paired R-LLM run (same settings and "
                                   "seed), rebuilt from their saved weights (runs trained with --set "
                                   "save_weights=true), into <out>/<grid name>/explain/; the next `bench report` "
                                   "with the same --out and --grid shows them. 2D tasks only.")
    _add_results(p)
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder's parent (default: reports/)")
    p.add_argument("--grid", metavar="NAME|PATH",
                   help="pair this grid's runs and write into its report folder (default: every stored run, 'all')")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="the --set overrides the grid was run with")
    p.add_argument("--task", action="append", default=[], metavar="T",
                   help="explain this task (repeatable; default: every 2D task with saved paired runs)")
    p.add_argument("--images", type=int, default=8, metavar="N",
                   help="test images per figure, spread evenly over the test split (default 8)")
    p.add_argument("--method", default="gradcam", metavar="M",
                   help="pytorch_grad_cam's method: gradcam (default), gradcam++, hirescam, xgradcam, layercam, "
                        "eigencam or eigengradcam")
    _add_data_root(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_explain)

    analyze = sub.add_parser("analyze", help="probe a grid's saved models: robustness to corruptions, token maps",
                             description="Rebuild the ok 2D runs of a grid that were trained with save_weights=true "
                                         "and measure them again; the results go into the store "
                                         "(<results>/analyze/<kind>/) and into the next `bench report` of the grid. "
                                         "Runs already analysed the same way are skipped (--force redoes them).")
    asub = analyze.add_subparsers(dest="analyze_command", required=True, metavar="ANALYSIS")
    p = asub.add_parser("robustness", help="ACC/AUC on MedMNIST-C's corruptions of the test set, severities 1-5",
                        description="Test every saved 2D run on MedMNIST-C's corruptions of its test images (the "
                                    "medmnistc package's own, severities 1-5; the extra `robustness`) and store ACC, "
                                    "AUC and MedMNIST-C's balanced error per corruption and severity.")
    _add_grid(p)
    _add_results(p)
    p.add_argument("--task", action="append", default=[], metavar="T",
                   help="only this task (repeatable; default: every 2D task of the grid)")
    p.add_argument("--corruption", action="append", default=[], metavar="NAME",
                   help="only this corruption (repeatable; default: every one MedMNIST-C defines for the task)")
    p.add_argument("--images", type=int, metavar="N",
                   help="use N test images spread evenly over the test split (default: all); for time")
    p.add_argument("--seed", type=int, default=0, help="the seed of the random corruptions (default 0)")
    _add_analyze_common(p)
    p = asub.add_parser("tokens", help="patch-token activation maps before and after the booster, and their focus",
                        description="For a fixed sample of test images, map the L2 norm of each patch token at the "
                                    "booster's input and output (the same place in runs without one), and score how "
                                    "concentrated each map is and how it overlaps the run's Grad-CAM.")
    _add_grid(p)
    _add_results(p)
    p.add_argument("--task", action="append", default=[], metavar="T",
                   help="only this task (repeatable; default: every 2D task of the grid)")
    p.add_argument("--images", type=int, default=16, metavar="N",
                   help="test images spread evenly over the test split (default 16)")
    _add_analyze_common(p)

    p = sub.add_parser("doctor", help="check this machine for the path `bench run` takes, before spending GPU-days",
                       description="Checks, in a few minutes: the devices and the precision each gets, one paper-mode "
                                   "step with a LLaMA-7B-shaped layer (FLOP/s, MFU, peak memory, the --runs-per-gpu "
                                   "that fits), a grid's data and weights cached or reachable (--grid), the backend "
                                   "reachable, the same tiny run twice bit for bit; on a GPU also two workers on one "
                                   "GPU and a forced out-of-memory with its retry. Exit 0 when every check that could "
                                   "run passed.")
    p.add_argument("--grid", metavar="NAME|PATH", help="also check this grid's data files, timm and LLM weights")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="the --set overrides the grid will run with")
    _add_data_root(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=("local", "dask", "slurm"), default="local",
                   help="the backend to check: local, dask (with --scheduler) or slurm (`sinfo`, and `sbatch "
                        "--test-only` of a job of the SLURM options)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="the Dask scheduler, e.g. tcp://10.0.0.1:8786")
    p.add_argument("--batch", type=int, metavar="N", help="the paper-mode step's batch (default 32 on GPU, 1 on CPU)")
    p.add_argument("--steps", type=int, metavar="N", help="its timed steps (default 10 on GPU, 1 on CPU)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny LLM layer and a depth-1 ViT: checks in seconds, figures that mean nothing")
    _add_slurm(p)
    p.set_defaults(func=cmd_doctor)
    return ap


def _run_table(grid_runs, ids: list[str], status: dict, why: dict | None = None) -> None:
    from bench.models.registry import VARIANTS

    head = (f"{'run_id':<16}  {'status':<7} {'label':<14} {'task':<20} {'size':>4} {'vit':<8} {'llm':<32} {'layer':>5} "
            f"{'seed':>4}")
    print(head + ("  why" if why else ""))
    for cfg, rid in zip(grid_runs, ids):
        b, variant = cfg.booster, VARIANTS[cfg.booster.variant]
        llm = Path(b.source).name if b.source and variant.has_layer else "-"  # adapters: only its width
        if b.source_sha256 and variant.has_layer:  # a GGUF file: its architecture and the layer's storage type
            from bench.models.gguf_file import describe

            llm = describe(b.source, b.layer, b.num_layers)
        layer = str(b.layer) if variant.has_layer else "-"
        line = (f"{rid:<16}  {status.get(rid) or '-':<7} {cfg.label[:14]:<14} {cfg.data.task:<20} {cfg.data.size:>4} "
                f"{cfg.vit.arch[:8]:<8} {llm[:32]:<32} {layer:>5} {cfg.seed:>4}")
        print(line + (f"  {why[rid]}" if why else ""))


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
                             worker_retries=args.worker_retries, portable=grid.portable, slurm=_slurm_options(args),
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
            _run_table(todo, todo_ids, status, why)
        for line in _start_lines(grid.runs):
            print(line)
        for cost_line in _cost_lines(grid.runs, todo, args):
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


def _start_lines(grid_runs) -> list[str]:
    """'start: LABELS (N runs): WHERE' per starting point, so a dry run says which weights each variant begins from."""
    from bench.models.checkpoint2d import describe_start

    groups: dict[str, dict[str, int]] = {}
    for cfg in grid_runs:
        labels = groups.setdefault(describe_start(cfg), {})
        labels[cfg.label] = labels.get(cfg.label, 0) + 1
    return [f"start: {', '.join(labels)} ({sum(labels.values())} runs): {where}" for where, labels in groups.items()]


def _cost_lines(grid_runs, todo, args) -> list[str]:
    from bench import cost

    if not 0 < args.utilisation <= 1:
        raise BenchError(f"--utilisation {args.utilisation} is a share of the GPU's peak: give a number in (0, 1], e.g. 0.4")
    return cost.describe(cost.grid_cost(grid_runs), cost.grid_cost(todo), cost.GPUS[args.gpu], args.utilisation)


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
    _run_table(grid.runs, ids, status)
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
    for cost_line in _cost_lines(grid.runs, todo, args):
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


def cmd_data_list(args) -> int:
    from bench.data import available_sizes, file_status, resolve_root, task_spec, tasks

    root = resolve_root(args.data_root)
    print(f"data root: {root}")
    for task in tasks():
        states = [f"{size}:{file_status(task_spec(task, size), root)}" for size in available_sizes(task)]
        print(f"  {task:<22} " + "  ".join(states))
    return 0


def cmd_data_fetch(args) -> int:
    from bench.data import ensure_file, resolve_root, task_spec

    root = resolve_root(args.data_root)
    specs = [task_spec(t, s) for t in args.tasks for s in (args.size or [28])]  # validate all first
    for spec in specs:
        print(f"{spec.task}@{spec.size}: {ensure_file(spec, root, download=True)} verified")
    return 0


def cmd_tune(args) -> int:
    from bench.config import parse_sets
    from bench.tune import dispatch, setup, study
    from bench.tune.storage import describe_storage

    slurm = _slurm_options(args, cost=False)
    dispatch.check_options(args.jobs, args.backend, args.scheduler, slurm)
    setups = setup.prepare(grid=args.grid, tasks=args.task, variants=args.variant, sets=parse_sets(args.sets),
                           trials=args.trials, seeds=args.seeds, timeout=args.timeout, storage=args.storage,
                           study=args.study, space=args.space, pruner=args.pruner, seed=args.seed,
                           data_root=args.data_root, device=args.device, results=args.results)
    tasks = list(dict.fromkeys(s.base.data.task for s in setups))
    print(f"grid {setups[0].grid}: {len(setups)} {'study' if len(setups) == 1 else 'studies'}, {args.trials} trials each")
    for task in tasks:
        s = next(s for s in setups if s.base.data.task == task)
        print(f"{task}: {len(s.seeds)} seed{'s' if len(s.seeds) > 1 else ''} per trial ({', '.join(map(str, s.seeds))}), "
              f"searching {', '.join(s.space)}")
    for s in setups:
        state = study.summarise(s, write=False)
        print(f"study {s.study} in {describe_storage(s.storage)}: {dispatch.state_line(s, state)}")
    states = dispatch.run_studies(setups, jobs=args.jobs, backend=args.backend, scheduler=args.scheduler, slurm=slurm)
    for s, state in zip(setups, states):
        print("done: " + dispatch.state_line(s, state)
              + (f"; parameters in {state['export']}" if state["export"] else "; nothing exported"))
    missing = [s.name for s, state in zip(setups, states) if state["export"] is None]
    if missing:
        print(f"no complete trial for {', '.join(missing)}: nothing exported for {'it' if len(missing) == 1 else 'them'}")
        return 1
    return 0


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


def cmd_explain(args) -> int:
    from bench.config import parse_sets
    from bench.grid import load_grid
    from bench.report import expected_runs
    from bench.analyze.explain import explain

    expected, name = None, "all"
    if args.grid:
        grid = load_grid(args.grid, parse_sets(args.sets))
        expected, name = expected_runs(grid), grid.name
    folder = args.out / name
    for png in explain(args.results, folder, tasks=args.task, images=args.images, method=args.method,
                       expected=expected, data_root=args.data_root, device=args.device):
        print(f"wrote {png}")
    again = " ".join(["bench report --results", str(args.results), "--out", str(args.out)]
                     + (["--grid", args.grid] if args.grid else []) + [f"--set {kv}" for kv in args.sets])
    print(f"`{again}` shows them in {folder}/index.html (section Explanations)")
    return 0


def _add_analyze_common(p: argparse.ArgumentParser) -> None:
    """What every `bench analyze` analysis takes last: --force, the data root, the device."""
    p.add_argument("--force", action="store_true", help="analyse again runs already analysed the same way")
    _add_data_root(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args) -> int:
    from bench.config import parse_sets
    from bench.grid import load_grid
    from bench.report import expected_runs

    grid = load_grid(args.grid, parse_sets(args.sets))
    expected = expected_runs(grid)
    if args.analyze_command == "robustness":
        from bench.analyze.robustness import robustness

        done = robustness(args.results, expected, tasks=args.task, names=args.corruption, images=args.images,
                          seed=args.seed, data_root=args.data_root, device=args.device, force=args.force)
    else:
        from bench.analyze.tokens import tokens

        done = tokens(args.results, expected, tasks=args.task, images=args.images, data_root=args.data_root,
                      device=args.device, force=args.force)
    again = " ".join(["bench report --results", str(args.results), "--grid", args.grid]
                     + [f"--set {kv}" for kv in args.sets])
    print(f"done: {len(done)} runs analysed into {args.results}/analyze/{args.analyze_command}; `{again}` shows them")
    return 0

def cmd_doctor(args) -> int:
    from bench import doctor
    from bench.config import parse_sets

    for flag in ("batch", "steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise BenchError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    opts = doctor.Options(device=args.device, grid=args.grid, sets=tuple(parse_sets(args.sets).items()),
                          data_root=args.data_root, backend=args.backend, scheduler=args.scheduler,
                          slurm=_slurm_options(args, cost=False), quick=args.quick,
                          steps=args.steps, batch=args.batch)
    print("bench doctor: checking this machine for `bench run`" + (" (--quick: tiny shapes)" if args.quick else ""))
    checks = doctor.run_checks(opts, say=lambda s: print(s, flush=True))
    print(doctor.summary(checks))
    return 1 if any(c.status == "FAIL" for c in checks) else 0


QUIET_WARNINGS = (  # library warnings that say nothing the user can act on
    "A worker stopped while some jobs were given to the executor",  # loky, when joblib replaces or stops a worker
)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning that reaches the user is one line of ours (the run's log has a worker's in full)."""
    text = " ".join(str(message).split())
    kind = "" if category is UserWarning else f"{category.__name__}: "
    print(f"bench: warning: {kind}{text}"[:600], file=sys.stderr)


def _traceback_file(args, argv: list[str]) -> str:
    """Write the current exception's traceback where the user can find it: <results>/logs/ for `bench run` (the
    store's writer), else the temp dir (readers never write into a store)."""
    import datetime as dt
    import tempfile
    import traceback

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = f"bench {' '.join(argv)}\n{traceback.format_exc()}"
    folders = [Path(args.results) / "logs"] if args.command == "run" else []
    try:
        folders.append(Path(tempfile.gettempdir()))
    except OSError:  # not one writable temp folder (a full disk): the traceback cannot be kept
        pass
    for folder in folders:
        path = folder / f"bench-{args.command}-{stamp}-{os.getpid()}.traceback.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return "nowhere (no writable folder)"


def main(argv: list[str] | None = None) -> int:
    import shlex
    import signal
    import warnings

    from bench.errors import one_line
    from bench.store.writer import StoreUnwritable

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    with warnings.catch_warnings():
        for text in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=text)
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except StoreUnwritable as e:  # the results folder refused a write mid-grid: stopped, nothing corrupt
            print(f"bench: error: {e}", file=sys.stderr)
            return 3
        except BenchError as e:
            print(f"bench: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            from bench.run.dispatch import Interrupted

            if isinstance(e, Interrupted) and e.signum != signal.SIGINT:
                print(f"bench: stopped by {e}; finished runs are kept; resume with the same command: "
                      f"bench {shlex.join(argv)}", file=sys.stderr)
                return 128 + e.signum
            print("bench: interrupted; finished runs are kept", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `bench list ... | head`: the reader left, nothing is wrong
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception as e:  # noqa: BLE001 - a fault we did not foresee: one line here, the traceback in a file
            print(f"bench: error: {one_line(e)} (unexpected; the traceback is in {_traceback_file(args, argv)})",
                  file=sys.stderr)
            return 1



if __name__ == "__main__":
    raise SystemExit(main())
