"""A store file that cannot be read (cut short by a copy, overwritten by hand, a disk fault): named in one warning,
moved aside into <results>/corrupt/, and read as absent.

bench itself never leaves such a file (every write is whole or absent, bench.crashsafe), so it came from outside.
Read as absent, its run reads as not stored and the next `bench run` redoes it; moved aside first, that redo never
overwrites the only copy of what was there. A store the reader cannot write (read-only) keeps the file in place and
the warning says so.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from bench.errors import one_line

CORRUPT = "corrupt"
CONSEQUENCE = {"runs": "its run reads as not stored (the next `bench run` redoes it)",
               "history": "its run's history is left out",
               "predictions": "its run is left out of the bootstrap intervals"}
_LEFT: set[tuple[int, int, int]] = set()  # (inode, size, mtime) of files warned about and left in place: once each


def destination(path: Path) -> Path:
    """<results>/corrupt/<kind>/<name>, with a numbered suffix when an earlier corrupt copy is there already."""
    path = Path(path)
    folder = path.parent.parent / CORRUPT / path.parent.name
    dest, n = folder / path.name, 1
    while dest.exists():
        dest, n = folder / f"{path.name}.{n}", n + 1
    return dest


def set_aside(path: Path, err: BaseException, read: os.stat_result | None = None) -> None:
    """Warn that `path` is corrupt and move it aside; `read`: the stat of the version that failed to read, so a
    whole file written over it since (a concurrent `bench run` redoing the run) is never moved."""
    path = Path(path)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return  # gone since (another reader moved it aside): that reader warned
    stamp = (now.st_ino, now.st_size, now.st_mtime_ns)
    if (read is not None and stamp != (read.st_ino, read.st_size, read.st_mtime_ns)) or stamp in _LEFT:
        return  # replaced since it was read (the new version is another read's business), or warned already
    try:
        dest = destination(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, dest)
        moved = f"moved to {dest}"
    except OSError as e:
        _LEFT.add(stamp)
        moved = f"left in place ({e.strerror or e}: the store is not writable here)"
    what = CONSEQUENCE.get(path.parent.name, "it is left out")
    warnings.warn(f"corrupt store file {path} ({one_line(err, 200)}): {moved}; {what}", stacklevel=3)
