"""Shared fixtures: the real MedMNIST files (when present) and a factory for synthetic ones."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).parents[1] / "../shared/data/medmnist").resolve()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Point XDG_CACHE_HOME (the md5 cache) at a temp dir, so tests never touch ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture
def shared_data() -> Path:
    """The read-only directory of real MedMNIST files."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MedMNIST files not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def fixture_root(tmp_path):
    """`make_fixture(task, size=28, **write_fixture_kwargs) -> root`: all fixtures share one tmp root."""
    from bench.data import write_fixture

    root = tmp_path / "medmnist"

    def make_fixture(task: str, size: int = 28, **kw) -> Path:
        write_fixture(root, task, size, **kw)
        return root

    return make_fixture
