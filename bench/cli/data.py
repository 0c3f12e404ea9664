"""`bench data`: MedMNIST files: list their state, fetch them ahead of time."""

from __future__ import annotations

from bench.cli.options import add_data_root


def register(sub) -> None:
    data = sub.add_parser("data", help="MedMNIST files: list their state, fetch them ahead of time")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("list", help="for every task and size: verified, missing or corrupt")
    add_data_root(p)
    p.set_defaults(func=cmd_data_list)
    p = dsub.add_parser("fetch", help="download and verify files (for workers without internet)")
    p.add_argument("tasks", nargs="+", metavar="TASK", help="medmnist flags, e.g. breastmnist organmnist3d")
    p.add_argument("--size", type=int, action="append", help="image size (repeatable; default 28)")
    add_data_root(p)
    p.set_defaults(func=cmd_data_fetch)


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
