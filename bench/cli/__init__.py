"""`bench`: parse arguments, call one function per subcommand, print user errors as one line (exit 2)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from bench.errors import BenchError

# bench/cli/<name>.py: register(sub) adds its subcommand (listing: `bench list`; a module named list would
# shadow the builtin)
COMMANDS = ("run", "export", "listing", "data", "tune", "report", "power", "explain", "analyze", "doctor")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench", description="R-LLM bench: frozen LLM layers in ViTs on MedMNIST.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bench.cli.{name}").register(sub)
    return ap


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
