"""`bench doctor`: check this machine for the path `bench run` takes, before spending GPU-days."""

from __future__ import annotations

from bench.cli.options import add_data_root, add_slurm, slurm_options
from bench.errors import BenchError


def register(sub) -> None:
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
    add_data_root(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=("local", "dask", "slurm"), default="local",
                   help="the backend to check: local, dask (with --scheduler) or slurm (`sinfo`, and `sbatch "
                        "--test-only` of a job of the SLURM options)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="the Dask scheduler, e.g. tcp://10.0.0.1:8786")
    p.add_argument("--batch", type=int, metavar="N", help="the paper-mode step's batch (default 32 on GPU, 1 on CPU)")
    p.add_argument("--steps", type=int, metavar="N", help="its timed steps (default 10 on GPU, 1 on CPU)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny LLM layer and a depth-1 ViT: checks in seconds, figures that mean nothing")
    add_slurm(p)
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from bench import doctor
    from bench.config import parse_sets

    for flag in ("batch", "steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise BenchError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    opts = doctor.Options(device=args.device, grid=args.grid, sets=tuple(parse_sets(args.sets).items()),
                          data_root=args.data_root, backend=args.backend, scheduler=args.scheduler,
                          slurm=slurm_options(args, cost=False), quick=args.quick,
                          steps=args.steps, batch=args.batch)
    print("bench doctor: checking this machine for `bench run`" + (" (--quick: tiny shapes)" if args.quick else ""))
    checks = doctor.run_checks(opts, say=lambda s: print(s, flush=True))
    print(doctor.summary(checks))
    return 1 if any(c.status == "FAIL" for c in checks) else 0
