"""Live progress of runs that train in other processes (the worker pool, Dask, SLURM): each epoch line their workers
write into the live log (<results>/logs/<id>.running.log, bench.run.worker.RunLog), shown as one line as it comes,
so `bench run --jobs N` is not silent until a run finishes. The serial backend reports epochs itself (dispatch)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

EVERY_S = 2.0  # how often the live logs are read (a stat and a short read per running run)


class LiveLogs(threading.Thread):
    """Reads the live logs `names` ({path: what the run is, in words}) every `every` seconds and `emit`s each new
    complete epoch line once; a log started again (a retried run) is read from its start."""

    def __init__(self, names: Mapping[Path, str], emit: Callable[[str], None], every: float = EVERY_S):
        super().__init__(name="bench-live-logs", daemon=True)
        self.names, self.emit, self.every = {Path(p): w for p, w in names.items()}, emit, every
        self.read: dict[Path, int] = {}  # bytes of each log already shown (whole lines only)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.poll()

    def stop(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join()

    def poll(self) -> None:
        for path, what in self.names.items():
            try:
                with open(path, "rb") as f:
                    size = f.seek(0, 2)
                    start = self.read.get(path, 0) if size >= self.read.get(path, 0) else 0  # rewritten: anew
                    f.seek(start)
                    data = f.read(size - start)
            except OSError:  # not started yet, or finished (its live log is removed at the commit)
                continue
            whole = data[: data.rfind(b"\n") + 1]
            self.read[path] = start + len(whole)
            for line in whole.decode("utf-8", "replace").splitlines():
                _, _, msg = line.partition(" ")  # after the timestamp
                if msg.startswith("epoch "):
                    self.emit(f"  {what}: {msg}")
