"""`bench explain`: CAM heatmaps of the same test images under a baseline and its R-LLM run."""

from __future__ import annotations

from pathlib import Path

from bench.cli.options import add_data_root, add_results


def register(sub) -> None:
    p = sub.add_parser("explain", help="CAM heatmaps of the same test images under a baseline and its R-LLM run",
                       description="Render grad-cam heatmaps (at the last ViT block, before the booster) of the same "
                                   "test images under a baseline run and its paired R-LLM run (same settings and "
                                   "seed), rebuilt from their saved weights (runs trained with --set "
                                   "save_weights=true), into <out>/<grid name>/explain/; the next `bench report` "
                                   "with the same --out and --grid shows them. 2D tasks only.")
    add_results(p)
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
    add_data_root(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
    from bench.analyze.explain import explain
    from bench.config import parse_sets
    from bench.grid import load_grid
    from bench.report import expected_runs

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
