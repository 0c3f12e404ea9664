"""Which MedMNIST file a task needs, where it lives, and whether it is the official one.

Everything (task types, sizes, URLs, MD5s) comes from `medmnist.INFO`, so a medmnist release that adds
a task or re-uploads a file needs no change here. A file is trained on only once its MD5 matches
INFO, or the fixture registry of its root (`bench-fixtures.json`, written by `write_fixture`) for
synthetic test data, which is always reported as such.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from medmnist.info import DEFAULT_ROOT, INFO

from bench.crashsafe import write_atomic
from bench.errors import BenchError

TASKS: list[str] = list(INFO)
FIXTURE_REGISTRY = "bench-fixtures.json"
VERIFIED, FIXTURE, MISSING, CORRUPT = "verified", "verified (fixture)", "missing", "corrupt"


@dataclass(frozen=True)
class TaskSpec:
    """One task at one image size, as `medmnist.INFO` describes it."""

    task: str
    size: int
    task_type: str  # multi-class | binary-class | ordinal-regression | multi-label, binary-class
    n_channels: int
    n_classes: int  # number of model outputs: classes, or labels for multi-label
    is_3d: bool
    n_samples: dict = field(hash=False)  # {"train": ..., "val": ..., "test": ...}

    @property
    def multilabel(self) -> bool:
        return self.task_type.startswith("multi-label")


def available_sizes(task: str) -> list[int]:
    """28 (the `url`/`MD5` keys) plus every size INFO has a `url_<size>` for."""
    return [28] + sorted(int(k[len("url_") :]) for k in INFO[task] if k.startswith("url_"))


def task_spec(task: str, size: int) -> TaskSpec:
    if task not in INFO:
        near = difflib.get_close_matches(task, TASKS, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise BenchError(f"unknown task '{task}': {hint}valid tasks: {', '.join(TASKS)}")
    sizes = available_sizes(task)
    if size not in sizes:
        raise BenchError(f"size {size} is not available for {task}: use one of {', '.join(map(str, sizes))}")
    info = INFO[task]
    return TaskSpec(
        task=task,
        size=size,
        task_type=info["task"],
        n_channels=info["n_channels"],
        n_classes=len(info["label"]),
        is_3d=info["python_class"].endswith("3D"),
        n_samples=dict(info["n_samples"]),
    )


def _size_flag(size: int) -> str:
    """medmnist's suffix for file names and INFO keys: '' at 28, '_64' etc. otherwise."""
    return "" if size == 28 else f"_{size}"


def file_name(spec: TaskSpec) -> str:
    return f"{spec.task}{_size_flag(spec.size)}.npz"


def file_url(spec: TaskSpec) -> str:
    return INFO[spec.task][f"url{_size_flag(spec.size)}"]


def official_md5(spec: TaskSpec) -> str:
    return INFO[spec.task][f"MD5{_size_flag(spec.size)}"]


def resolve_root(data_root: str | Path | None) -> Path:
    """The argument, else $BENCH_DATA_ROOT, else medmnist's own default (~/.medmnist)."""
    root = data_root or os.environ.get("BENCH_DATA_ROOT") or DEFAULT_ROOT
    if not root:
        raise BenchError("no data directory: medmnist could not create ~/.medmnist; set BENCH_DATA_ROOT or pass one")
    return Path(root).expanduser()


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


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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
            f"could not download {name} ({_one_line(err)}): fetch {url} by hand and put it in {root}/ as {name}"
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
