"""`bench analyze`: probe a grid's saved models: robustness to corruptions, token maps."""

from __future__ import annotations

import argparse

from bench.cli.options import add_data_root, add_grid, add_results


def register(sub) -> None:
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
    add_grid(p)
    add_results(p)
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
    add_grid(p)
    add_results(p)
    p.add_argument("--task", action="append", default=[], metavar="T",
                   help="only this task (repeatable; default: every 2D task of the grid)")
    p.add_argument("--images", type=int, default=16, metavar="N",
                   help="test images spread evenly over the test split (default 16)")
    _add_analyze_common(p)


def _add_analyze_common(p: argparse.ArgumentParser) -> None:
    """What every `bench analyze` analysis takes last: --force, the data root, the device."""
    p.add_argument("--force", action="store_true", help="analyse again runs already analysed the same way")
    add_data_root(p)
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
