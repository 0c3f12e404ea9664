"""Which MedMNIST file a task needs, where it lives, and whether it is the official one.

Everything (task types, sizes, URLs, MD5s) comes from `medmnist.INFO`, so a medmnist release that adds
a task or re-uploads a file needs no change here. A file is trained on only once its MD5 matches
INFO, or the fixture registry of its root (`bench-fixtures.json`, written by `write_fixture`) for
synthetic test data, which is always reported as such.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from bench.crashsafe import write_atomic
from bench.data.info import TaskSpec, default_root, file_name, file_url, official_md5
from bench.errors import BenchError, one_line

FIXTURE_REGISTRY = "bench-fixtures.json"
VERIFIED, FIXTURE, MISSING, CORRUPT = "verified", "verified (fixture)", "missing", "corrupt"


def resolve_root(data_root: str | Path | None) -> Path:
    """The argument, else $BENCH_DATA_ROOT, else medmnist's own default (~/.medmnist)."""
    root = data_root or os.environ.get("BENCH_DATA_ROOT") or default_root()
    if not root:
        raise BenchError("no data directory: medmnist could not create ~/.medmnist; set BENCH_DATA_ROOT or pass one")
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise BenchError(f"the data directory {root} (--data-root, else $BENCH_DATA_ROOT) is a file: give the folder "
                         "that holds (or will hold) the MedMNIST .npz files")
    return root


def data_file(spec: TaskSpec, root: str | Path) -> Path:
    return Path(root) / file_name(spec)


# -- MD5s, cached by (path, size, mtime) so multi-GB files are hashed once, not on every run ---------


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bench" / "md5.json"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


def _hash(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cache_store(path: Path, md5: str) -> None:
    """Record `md5` for the file as it is now; drops entries of files that are gone. Never fails."""
    cache = _cache_path()
    st = path.stat()
    entries = {p: e for p, e in _read_json(cache).items() if os.path.exists(p)}
    entries[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}
    try:
        _write_json(cache, entries)
    except OSError:
        pass  # a read-only or odd cache dir only costs a re-hash next time


def file_md5(path: str | Path) -> str:
    path = Path(path).resolve()
    st = path.stat()
    entry = _read_json(_cache_path()).get(str(path))
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["md5"]
    md5 = _hash(path)
    _cache_store(path, md5)
    return md5


# -- status, verification, download ---------------------------------------------------------------


def registered_fixtures(root: str | Path) -> dict[str, str]:
    """{file name: md5} of the synthetic files `write_fixture` put in `root`."""
    return _read_json(Path(root) / FIXTURE_REGISTRY)


def _check(spec: TaskSpec, path: Path) -> tuple[str, str, str]:
    """(status, md5 found, md5 expected) of an existing file; a real file wins over a stale registry."""
    md5, expected = file_md5(path), official_md5(spec)
    if md5 == expected:
        return VERIFIED, md5, expected
    registered = registered_fixtures(path.parent).get(path.name)
    if registered is None:
        return CORRUPT, md5, expected
    return (FIXTURE if md5 == registered else CORRUPT), md5, registered


def file_status(spec: TaskSpec, root: str | Path) -> str:
    """'verified' | 'verified (fixture)' | 'missing' | 'corrupt'."""
    path = data_file(spec, root)
    return _check(spec, path)[0] if path.exists() else MISSING


def _download(spec: TaskSpec, root: Path) -> None:
    """Fetch the file the way medmnist does (torchvision's download_url), into a temp name first.

    A killed or corrupted download never sits under the official name; the verified MD5 goes straight
    into the cache, so the first run after a fetch does not hash the file again.
    """
    from torchvision.datasets.utils import download_url

    name, url, expected = file_name(spec), file_url(spec), official_md5(spec)
    fetch = f"`bench data fetch {spec.task} --size {spec.size}`"
    part = root / f".{name}.{os.getpid()}.part"
    try:
        root.mkdir(parents=True, exist_ok=True)
        part.unlink(missing_ok=True)  # download_url skips an existing file when given no md5
        download_url(url, str(root), filename=part.name)
        md5 = _hash(part)
        if md5 != expected:
            raise BenchError(f"downloaded {name} from {url} but its md5 is {md5}, expected {expected}: run {fetch} again")
        os.replace(part, root / name)
    except BenchError:
        raise
    except Exception as err:  # offline, HTTP error, disk full, unwritable root, ...
        raise BenchError(
            f"could not download {name} ({one_line(err)}): fetch {url} by hand and put it in {root}/ as {name}"
        ) from None
    finally:
        part.unlink(missing_ok=True)
    _cache_store((root / name).resolve(), md5)


def _ensure(spec: TaskSpec, root: str | Path, download: bool = True) -> tuple[Path, str, bool]:
    """(path, md5, is_fixture) of a file that is verified, downloading it first if missing and allowed."""
    root = Path(root)
    path = data_file(spec, root)
    if not path.exists():
        if not download:
            raise BenchError(
                f"{path.name} is not in {root}/: run `bench data fetch {spec.task} --size {spec.size}` "
                f"or download {file_url(spec)} into that directory"
            )
        _download(spec, root)
    status, md5, expected = _check(spec, path)
    if status == CORRUPT:
        raise BenchError(
            f"{path} is corrupt (md5 {md5}, expected {expected}): "
            f"delete it and run `bench data fetch {spec.task} --size {spec.size}`"
        )
    return path, md5, status == FIXTURE


def ensure_file(spec: TaskSpec, root: str | Path, download: bool = True) -> Path:
    """The verified file for `spec` under `root`; a corrupt file is never returned, a missing one fetched."""
    return _ensure(spec, root, download)[0]
