"""`bench tune`: search the hyperparameters of a grid's variants with Optuna (val only; test never read)."""

from __future__ import annotations

from bench.cli.options import add_data_root, add_results, add_slurm, slurm_options


def register(sub) -> None:
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
    add_results(p)
    add_data_root(p)
    add_slurm(p)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from bench.config import parse_sets
    from bench.tune import dispatch, setup, study
    from bench.tune.storage import describe_storage

    slurm = slurm_options(args, cost=False)
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
