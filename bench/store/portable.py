"""Rows and logs fit to ship in a repository: no host name and no absolute path of the machine that ran them.

A grid with `portable: true` (the `record` grid, whose store is committed) has every run scrubbed by the
dispatcher before it is written. What a reader needs stays: the data file's MD5 and the task, the device kind,
package versions and the git sha. Absolute paths become placeholders (`<site-packages>`, `<data-root>`,
`<results>`, `<home>`, `<prefix>`), the host name `<host>`.
"""

from __future__ import annotations

import re
import site
import socket
import sys
import sysconfig
from pathlib import Path
from typing import Any

HOST_COLUMNS = ("hostname", "cuda_visible_devices", "slurm_job_id")


def _prefixes(data_root: Path, results: Path) -> list[tuple[str, str]]:
    """(absolute path, placeholder), longest first so a site-packages path is not taken for the venv's prefix."""
    paths = {str(Path(p)): "<site-packages>" for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]}
    paths.update({str(data_root): "<data-root>", str(results): "<results>", sys.prefix: "<prefix>",
                  str(Path.home()): "<home>"})
    return sorted(((p, name) for p, name in paths.items() if p not in ("", "/")), key=lambda kv: -len(kv[0]))


def scrubber(data_root: Path, results: Path):
    """A function that takes a text and returns it without host name or absolute paths."""
    pairs = _prefixes(Path(data_root).resolve(), Path(results).resolve())
    pattern = re.compile("|".join(re.escape(p) for p, _ in pairs))
    names = dict(pairs)
    host = socket.gethostname()
    host_re = re.compile(rf"\b{re.escape(host)}\b") if host else None

    def scrub(text: str) -> str:
        text = pattern.sub(lambda m: names[m.group(0)], text)
        return host_re.sub("<host>", text) if host_re else text

    return scrub


def scrub_outcome(out: dict[str, Any], data_root: Path, results: Path) -> dict[str, Any]:
    """A worker's outcome (row, log, ...) with its text scrubbed; numbers and arrays untouched."""
    scrub = scrubber(data_root, results)
    row = {k: (None if k in HOST_COLUMNS else scrub(v) if isinstance(v, str) else v) for k, v in out["row"].items()}
    log = out.get("log")
    return {**out, "row": row, "log": scrub(log) if isinstance(log, str) else log}


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # not a path at all (e.g. base64 in a parquet footer): too long a name
        return False


def leaks(text: str) -> list[str]:
    """The host name or absolute paths of this machine found in `text` (empty when it is portable)."""
    found = [m for m in re.findall(r"(?<![\w<>.])/(?:[\w.+-]+/)+[\w.+-]*", text) if _exists(m)]
    host = socket.gethostname()
    if host and re.search(rf"\b{re.escape(host)}\b", text) and host not in ("localhost",):
        found.append(host)
    return found

