"""Option builders and helpers shared by several `bench` commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import BenchError


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", metavar="DIR",
                   help="MedMNIST files (default: $BENCH_DATA_ROOT, else medmnist's ~/.medmnist)")


def add_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", metavar="DIR", type=Path, default=Path("results"),
                   help="the result store (default: results/)")


def add_grid(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--grid", metavar="NAME|PATH", required=required,
                   help="a grid in ablations/ by name (smoke, ci, paper, full) or a path to a YAML file")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="override a config field for every run, e.g. --set train.epochs=1, or for one variant's runs, "
                        "e.g. --set rllm:vit.checkpoint=PATH (repeatable)")


def add_cost(p: argparse.ArgumentParser) -> None:
    from bench.cost import DEFAULT_GPU, DEFAULT_UTILISATION, GPUS

    p.add_argument("--gpu", choices=sorted(GPUS), default=DEFAULT_GPU,
                   help=f"the GPU the cost estimate assumes (default {DEFAULT_GPU}; dense peak at the precision it runs: "
                        "bf16, or fp16 on V100/T4)")
    p.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION, metavar="F",
                   help=f"the share of its peak a run sustains, for the estimate (default {DEFAULT_UTILISATION})")


def add_slurm(p: argparse.ArgumentParser) -> None:
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


def slurm_options(args, cost: bool = True):
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


def run_table(grid_runs, ids: list[str], status: dict, why: dict | None = None) -> None:
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


def cost_lines(grid_runs, todo, args) -> list[str]:
    from bench import cost

    if not 0 < args.utilisation <= 1:
        raise BenchError(f"--utilisation {args.utilisation} is a share of the GPU's peak: give a number in (0, 1], e.g. 0.4")
    return cost.describe(cost.grid_cost(grid_runs), cost.grid_cost(todo), cost.GPUS[args.gpu], args.utilisation)
