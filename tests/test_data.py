import dataclasses
import itertools
import os
import shutil
import urllib.error

import medmnist
import numpy as np
import pytest
import torch
from medmnist import INFO

import bench.data.files as files
import bench.data.info as info
from bench.data import (
    TaskSpec,
    data_file,
    ensure_file,
    file_md5,
    file_status,
    file_url,
    resolve_root,
    task_spec,
    tasks,
    write_fixture,
)
from bench.data.augment import prepare_batch
from bench.data.loading import load_splits
from bench.errors import BenchError

# (task, size): grey 2D, RGB 2D, ordinal RGB, multi-label, 3D, and a non-28 size (file name "_64")
FIXTURE_CASES = [
    ("breastmnist", 28),
    ("pathmnist", 28),
    ("retinamnist", 28),
    ("chestmnist", 28),
    ("organmnist3d", 28),
    ("dermamnist", 64),
]


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- task specs and file names ---------------------------------------------------------------------


def test_tasks_and_specs_follow_medmnist():
    assert tasks() == list(INFO) and len(tasks()) == 18
    for task in tasks():
        cls = getattr(medmnist, INFO[task]["python_class"])
        assert info.available_sizes(task) == cls.available_sizes
        spec = task_spec(task, 28)
        assert spec.is_3d == (cls.available_sizes == [28, 64])
        assert spec.n_samples == INFO[task]["n_samples"]
    chest = task_spec("chestmnist", 64)
    assert chest.multilabel and chest.n_classes == 14 and chest.n_channels == 1 and not chest.is_3d
    organ = task_spec("organmnist3d", 64)
    assert organ.is_3d and organ.n_classes == 11 and organ.task_type == "multi-class"
    assert task_spec("retinamnist", 28).task_type == "ordinal-regression"
    spec = task_spec("breastmnist", 28)  # a cache key (functools.cache, the loaders' caches) despite its dict field
    twin = TaskSpec(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(TaskSpec)} | {
        "n_samples": dict(spec.n_samples)})  # built apart from the cached object
    assert twin is not spec and {spec: "cached"}[twin] == "cached"
    assert task_spec("breastmnist", 64) not in {spec: "cached"}


def test_unknown_task_and_bad_size():
    with pytest.raises(BenchError) as err:
        task_spec("breastmnst", 28)
    msg = _one_line(err)
    assert "did you mean 'breastmnist'" in msg and all(t in msg for t in tasks())
    with pytest.raises(BenchError) as err:
        task_spec("organmnist3d", 128)
    assert "organmnist3d" in _one_line(err) and "28, 64" in str(err.value)
    with pytest.raises(BenchError, match="28, 64, 128, 224"):
        task_spec("pathmnist", 32)


def test_file_names_and_root(tmp_path, monkeypatch):
    assert data_file(task_spec("breastmnist", 28), tmp_path) == tmp_path / "breastmnist.npz"
    assert data_file(task_spec("breastmnist", 224), tmp_path) == tmp_path / "breastmnist_224.npz"
    assert file_url(task_spec("breastmnist", 64)) == INFO["breastmnist"]["url_64"]
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    assert resolve_root(None) == files.Path(medmnist.info.DEFAULT_ROOT)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path))
    assert resolve_root(None) == tmp_path
    assert resolve_root(tmp_path / "x") == tmp_path / "x"


# -- fixtures and loading --------------------------------------------------------------------------


@pytest.mark.parametrize("task,size", FIXTURE_CASES)
def test_load_fixture_equals_npz(fixture_root, task, size):
    root = fixture_root(task, size)
    spec = task_spec(task, size)
    path = data_file(spec, root)
    assert file_status(spec, root) == "verified (fixture)"
    splits = load_splits(spec, root, download=False)
    assert splits.fixture and splits.md5 == file_md5(path)
    with np.load(path) as npz:
        for split in ("train", "val", "test"):
            data, images, labels = getattr(splits, split), npz[f"{split}_images"], npz[f"{split}_labels"]
            assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
            assert data.images.shape == (len(images), spec.n_channels, *(size,) * (3 if spec.is_3d else 2))
            channels_last = data.images.permute(0, *range(2, data.images.ndim), 1)
            np.testing.assert_array_equal(channels_last.numpy().reshape(images.shape), images)
            np.testing.assert_array_equal(data.labels.numpy(), labels)
            if spec.multilabel:
                assert labels.shape[1] == 14 and (labels.min(0) == 0).all() and (labels.max(0) == 1).all()
            else:
                assert set(np.unique(labels)) == set(range(spec.n_classes))


@pytest.mark.slow
@pytest.mark.parametrize("name, task", [("breastmnist.npz", "breastmnist"), ("retinamnist.npz", "retinamnist"),
                                        ("adrenalmnist3d.npz", "adrenalmnist3d")])
def test_fixture_format_matches_real_files(shared_data, tmp_path, name, task):
    if not (shared_data / name).exists():
        pytest.skip(f"{name} is not in {shared_data}")
    fake = write_fixture(tmp_path, task, 28, n=(5, 5, 5))
    with np.load(shared_data / name) as real, np.load(fake) as synthetic:
        assert set(real.files) == set(synthetic.files)
        for key in real.files:
            assert real[key].dtype == synthetic[key].dtype
            assert real[key].shape[1:] == synthetic[key].shape[1:]


def test_fixture_is_deterministic_and_split_subset(fixture_root, tmp_path):
    spec = task_spec("bloodmnist", 28)
    a = load_splits(spec, fixture_root("bloodmnist", seed=3), splits=("train", "val"))
    assert a.test is None and len(a.train) == 64 and len(a.val) == 32
    write_fixture(tmp_path / "other", "bloodmnist", seed=3)
    b = load_splits(spec, tmp_path / "other")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    with pytest.raises(ValueError):
        write_fixture(tmp_path, "organamnist", n=(64, 8, 8))  # 11 classes cannot all fit in 8 samples


def test_file_status_values(fixture_root, tmp_path):
    spec = task_spec("breastmnist", 28)
    assert file_status(spec, tmp_path) == "missing"
    root = fixture_root("breastmnist")
    assert file_status(spec, root) == "verified (fixture)"
    unregistered = tmp_path / "unregistered"
    unregistered.mkdir()
    shutil.copy(data_file(spec, root), unregistered)
    assert file_status(spec, unregistered) == "corrupt"  # synthetic, but not in this root's registry
    with open(data_file(spec, root), "ab") as f:
        f.write(b"x")
    assert file_status(spec, root) == "corrupt"  # registered, but changed since


def test_corrupt_file_is_refused(fixture_root):
    spec = task_spec("pneumoniamnist", 28)
    root = fixture_root("pneumoniamnist")
    path = data_file(spec, root)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\0\1\2")
    bad = file_md5(path)
    for call in (lambda: ensure_file(spec, root), lambda: load_splits(spec, root)):
        with pytest.raises(BenchError) as err:
            call()
        msg = _one_line(err)
        assert "is corrupt" in msg and bad in msg and "bench data fetch pneumoniamnist --size 28" in msg


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_missing_file_offline_names_url_and_directory(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.utils.download_url", _offline)
    spec = task_spec("breastmnist", 64)
    for download in (True, False):
        with pytest.raises(BenchError) as err:
            ensure_file(spec, tmp_path, download=download)
        msg = _one_line(err)
        assert "breastmnist_64.npz" in msg and INFO["breastmnist"]["url_64"] in msg and str(tmp_path) in msg
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


@pytest.mark.slow
def test_download_verifies_and_caches(shared_data, tmp_path, monkeypatch):
    """The download path end to end, with the network replaced by a copy of the real file."""
    source = shared_data / "breastmnist.npz"

    def fake_download(url, root, filename=None, md5=None):
        assert url == INFO["breastmnist"]["url"]
        shutil.copy(source, os.path.join(root, filename))

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    spec = task_spec("breastmnist", 28)
    calls = _count_md5(monkeypatch)
    assert ensure_file(spec, tmp_path / "new") == tmp_path / "new" / "breastmnist.npz"
    assert file_status(spec, tmp_path / "new") == "verified" and len(calls) == 1  # hashed once, as the .part

    monkeypatch.setattr("torchvision.datasets.utils.download_url", lambda url, root, filename=None, md5=None:
                        (tmp_path / "junk" / filename).write_bytes(b"not an npz"))
    with pytest.raises(BenchError, match="md5 .* expected"):
        ensure_file(spec, tmp_path / "junk")
    assert list((tmp_path / "junk").iterdir()) == []


# -- md5 cache -------------------------------------------------------------------------------------


def _count_md5(monkeypatch) -> list:
    calls = []
    real = files.hashlib.md5

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(files.hashlib, "md5", counting)
    return calls


def test_md5_cache_avoids_rehashing(tmp_path, monkeypatch):
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(3 << 20))
    calls = _count_md5(monkeypatch)
    first = file_md5(path)
    assert file_md5(path) == first and file_md5(tmp_path / "." / "blob.bin") == first and len(calls) == 1
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_md5(path) == first and len(calls) == 2  # new mtime: hashed again


def test_md5_with_unwritable_cache(tmp_path, monkeypatch):
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc")
    assert file_md5(path) == file_md5(path) == "900150983cd24fb0d6963f7d28e17f72"


# -- augmentation ----------------------------------------------------------------------------------


def _images(shape, seed=0):
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(16, 3, 28, 28), (8, 1, 12, 12, 12)], ids=["2d", "3d"])
def test_prepare_batch_normalises_and_is_deterministic(shape):
    images = _images(shape)
    plain = prepare_batch(images, train=False, aug=1.0, generator=None)
    assert plain.dtype == torch.float32 and plain.shape == shape
    torch.testing.assert_close(plain, (images.float() / 255 - 0.5) / 0.5, rtol=0, atol=1e-6)
    a = prepare_batch(images, True, 1.0, torch.Generator().manual_seed(1))
    b = prepare_batch(images, True, 1.0, torch.Generator().manual_seed(1))
    c = prepare_batch(images, True, 1.0, torch.Generator().manual_seed(2))
    assert a.shape == shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(prepare_batch(images, True, 0.0, torch.Generator()), plain)


def _reference(x: np.ndarray, flips: tuple, shifts: tuple) -> np.ndarray:
    """One sample (C, *spatial) flipped, then shifted with edge padding, axis by axis."""
    for ax, (flip, s) in enumerate(zip(flips, shifts), start=1):
        side = x.shape[ax]
        x = np.flip(x, axis=ax) if flip else x
        x = np.take(x, np.clip(np.arange(side) - s, 0, side - 1), axis=ax)
    return x


@pytest.mark.parametrize("shape,flippable", [((24, 2, 16, 16), (False, True)), ((24, 1, 8, 8, 8), (True, True, True))],
                         ids=["2d", "3d"])
def test_prepare_batch_flips_and_shifts(shape, flippable):
    """Every output is its input under one allowed flip and shift per axis; flips and shifts both occur."""
    images = _images(shape)
    plain = prepare_batch(images, False, 0.0, None).numpy()
    out = prepare_batch(images, True, 1.0, torch.Generator().manual_seed(0)).numpy()
    n_spatial = len(shape) - 2
    max_shift = round(shape[-1] / 8)  # aug=1: 2 px at 16, 1 px at 8
    flips = [f for f in itertools.product((0, 1), repeat=n_spatial) if all(ok or not b for ok, b in zip(flippable, f))]
    shifts = list(itertools.product(range(-max_shift, max_shift + 1), repeat=n_spatial))
    used = []
    for x, y in zip(plain, out):
        match = [(f, s) for f in flips for s in shifts if np.array_equal(_reference(x, f, s), y)]
        assert match, "output is not a flip and shift of its input"
        used += match
    assert any(any(f) for f, _ in used) and any(not any(f) for f, _ in used)
    assert any(any(s) for _, s in used)


def test_prepare_batch_rejects_floats():
    with pytest.raises(TypeError):
        prepare_batch(torch.zeros(2, 1, 4, 4), True, 1.0, None)


# -- the real files ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("task", ["breastmnist", "retinamnist", "adrenalmnist3d"])
def test_real_file_equals_medmnist(shared_data, task):
    if not (shared_data / f"{task}.npz").exists():
        pytest.skip(f"{task}.npz is not in {shared_data}")
    spec = task_spec(task, 28)
    splits = load_splits(spec, shared_data, download=False)
    assert not splits.fixture and splits.md5 == INFO[task]["MD5"]
    cls = getattr(medmnist, INFO[task]["python_class"])
    for split in ("train", "val", "test"):
        ref = cls(split=split, root=str(shared_data), download=False)
        data = getattr(splits, split)
        images = data.images.numpy()
        images = images.transpose(0, 2, 3, 1) if spec.n_channels == 3 else images[:, 0]
        np.testing.assert_array_equal(images, ref.imgs)
        np.testing.assert_array_equal(data.labels.numpy(), ref.labels)
        assert len(data) == spec.n_samples[split]


@pytest.mark.slow
@pytest.mark.parametrize("task,size", [("breastmnist", 28), ("adrenalmnist3d", 28), ("adrenalmnist3d", 64)])
def test_real_files_verified(shared_data, task, size):
    spec = task_spec(task, size)
    if not data_file(spec, shared_data).exists():
        pytest.skip(f"{data_file(spec, shared_data).name} is not in {shared_data}")
    assert file_status(spec, shared_data) == "verified"
    assert ensure_file(spec, shared_data, download=False) == data_file(spec, shared_data)


@pytest.mark.slow
def test_fixture_never_overwrites_real_file(shared_data, tmp_path):
    shutil.copy(shared_data / "breastmnist.npz", tmp_path)
    with pytest.raises(BenchError, match="real breastmnist"):
        write_fixture(tmp_path, "breastmnist")
