"""The store read as one dataset: reads equal the per-run files read one by one (the commit points), with
the index fresh, stale, missing or broken; readers write nothing; only the lock holder writes the index;
readers running beside a writer (a thread, a killed process, a real `bench run`) only ever see whole runs."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from bench import cli, store
from bench.config import flatten
from bench.grid import load_grid
from bench.store import index, layout, schema

EPOCHS = 5
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ helpers


def value(rid: str, version: int, what: str) -> float:
    """A number that only this run at this version has: a reader that mixes versions or rows gets caught."""
    return int(hashlib.sha1(f"{rid}/{version}/{what}".encode()).hexdigest()[:8], 16) / 2**32


def outcome(cfg, rid: str, version: int = 1, failed: bool = False) -> dict:
    row = {"run_id": rid, "status": "failed" if failed else "ok", "label": cfg.label, "task": cfg.data.task,
           "size": cfg.data.size, **flatten(cfg), "attempt": version, "hostname": "synthetic (tests/test_store.py)",
           "data.fixture": True}
    if failed:
        row["error"] = f"RuntimeError: synthetic failure {version}"
        return {"row": row, "history": None, "y_score": None, "y_true": None, "log": "failed\n"}
    row.update(val_auc=value(rid, version, "val"), test_auc=value(rid, version, "test"), best_epoch=EPOCHS - 1)
    history = [{"epoch": e, "train_loss": value(rid, version, "loss"), "val_acc": 0.5, "val_auc": value(rid, version, "val"),
                "lr": 1e-3, "epoch_s": 1.0} for e in range(EPOCHS)]
    return {"row": row, "history": history, "y_score": np.full((4, 2), 0.5, np.float32),
            "y_true": np.zeros((4, 1), np.int64), "log": "ok\n"}


@pytest.fixture(scope="module")
def configs():
    """(config, run id) of real runs: the first few hundred of the `full` grid."""
    grid = load_grid("full")
    return list(zip(grid.runs, grid.run_ids()))[:400]


def _pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)


def per_file_runs(results: Path) -> pd.DataFrame:
    """Every runs/*.parquet read one by one (pyarrow datasets, the reader before the index), by run id."""
    files = sorted(str(p) for p in (results / layout.RUNS).glob("*.parquet"))
    df = _pandas(ds.dataset(files, schema=schema.run_schema(), format="parquet").to_table())
    return df.sort_values("run_id", kind="stable").reset_index(drop=True)


def per_file_history(results: Path) -> pd.DataFrame:
    files = sorted(str(p) for p in (results / layout.HISTORY).glob("*.parquet"))
    df = _pandas(ds.dataset(files, schema=schema.HISTORY, format="parquet").to_table())
    return df.sort_values(["run_id", "epoch"], kind="stable").reset_index(drop=True)


def assert_reads_equal_files(results: Path) -> pd.DataFrame:
    runs = store.read_runs(results)
    pd.testing.assert_frame_equal(runs, per_file_runs(results))
    pd.testing.assert_frame_equal(store.read_history(results), per_file_history(results))
    ids = list(runs["run_id"]) + ["not-a-run"]
    assert store.statuses(results, ids) == {**dict(zip(runs["run_id"], runs["status"])), "not-a-run": None}
    some = list(runs["run_id"][::7])
    pd.testing.assert_frame_equal(store.read_history(results, some),
                                  per_file_history(results).query("run_id in @some").reset_index(drop=True))
    return runs


def files_state(results: Path) -> dict:
    return {str(p.relative_to(results)): (p.stat().st_mtime_ns, p.stat().st_size) for p in results.rglob("*")}


# --------------------------------------------------------------------------------- reads = per-run files


def test_reads_equal_the_per_run_files_through_refreshes_new_runs_and_rewrites(tmp_path, configs, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setenv("BENCH_COMPACT_EVERY", "50")
    with store.results_lock(results):
        for i, (cfg, rid) in enumerate(configs[:300]):
            store.commit(results, outcome(cfg, rid, failed=i % 17 == 3), None)
    assert {p.name for p in (results / layout.INDEX).iterdir()} == {"runs.parquet", "history.parquet"}
    assert pq.read_metadata(layout.index_path(results, layout.RUNS)).num_rows == 300  # refreshed on release
    runs = assert_reads_equal_files(results)
    assert len(runs) == 300 and (runs["status"] == "failed").sum() == 18

    # runs committed since the last refresh (no lock held: nothing refreshes) are read from their files
    for cfg, rid in configs[300:340]:
        store.commit(results, outcome(cfg, rid), None)
    assert pq.read_metadata(layout.index_path(results, layout.RUNS)).num_rows == 300
    assert len(assert_reads_equal_files(results)) == 340

    # a failed run rewritten ok, an ok run rewritten with new numbers, a row deleted by hand
    (failed_cfg, failed_id), (ok_cfg, ok_id), (_, gone) = configs[3], configs[5], configs[6]
    store.commit(results, outcome(failed_cfg, failed_id, version=2), "failed")
    store.commit(results, outcome(ok_cfg, ok_id, version=2), "ok")
    layout.run_path(results, gone).unlink()
    layout.history_path(results, gone).unlink()
    runs = assert_reads_equal_files(results).set_index("run_id")
    assert runs.loc[failed_id, "status"] == "ok" and runs.loc[ok_id, "test_auc"] == value(ok_id, 2, "test")
    assert gone not in runs.index

    # the lock holder brings the index in step; reads stay the same
    with store.results_lock(results):
        pass
    table = pq.read_table(layout.index_path(results, layout.RUNS))
    assert table.num_rows == 339 and gone not in table.column("run_id").to_pylist()
    assert_reads_equal_files(results)


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "old columns"])
def test_a_missing_or_broken_index_changes_nothing_but_speed(tmp_path, configs, damage):
    results = tmp_path / "results"
    with store.results_lock(results):
        for cfg, rid in configs[:40]:
            store.commit(results, outcome(cfg, rid), None)
    expected = assert_reads_equal_files(results)
    for kind in index.KINDS:
        path = layout.index_path(results, kind)
        if damage == "missing":
            path.unlink()
        elif damage == "garbage":
            path.write_bytes(b"not parquet")
        elif damage == "truncated":
            path.write_bytes(path.read_bytes()[:-100])
        else:  # written before today's columns: a dropped column, no stamps
            pq.write_table(pq.read_table(path).drop_columns(["run_id" if kind == layout.HISTORY else "label"]), path)
    pd.testing.assert_frame_equal(assert_reads_equal_files(results), expected)


def test_rows_written_before_a_column_existed_read_it_as_null(tmp_path, configs):
    results = tmp_path / "results"
    with store.results_lock(results):
        for cfg, rid in configs[:3]:
            store.commit(results, outcome(cfg, rid), None)
    old = layout.run_path(results, configs[1][1])
    pq.write_table(pq.read_table(old).drop_columns(["train.repeated_aug", "test_auc"]), old)  # an older writer
    runs = assert_reads_equal_files(results).set_index("run_id")
    assert pd.isna(runs.loc[configs[1][1], "test_auc"]) and pd.isna(runs.loc[configs[1][1], "train.repeated_aug"])
    assert runs.loc[configs[0][1], "test_auc"] == value(configs[0][1], 1, "test")


def test_readers_write_nothing_and_read_a_read_only_store(tmp_path, configs, mounts):
    """The store bind-mounted over itself read-only (as root a chmod would stop no write)."""
    results = tmp_path / "results"
    with store.results_lock(results):
        for cfg, rid in configs[:20]:
            store.commit(results, outcome(cfg, rid), None)
    for cfg, rid in configs[20:30]:  # a stale index: a reader must not "fix" it
        store.commit(results, outcome(cfg, rid), None)
    before = files_state(results)
    if not (mounts("--bind", str(results), str(results)) and mounts("-o", "remount,bind,ro", str(results))):
        pytest.skip("cannot bind-mount the store read-only here (needs CAP_SYS_ADMIN), and as root a chmod does "
                    "not make it read-only")
    with pytest.raises(OSError):
        (results / "probe").touch()  # writes really fail
    assert len(assert_reads_equal_files(results)) == 30
    assert cli.main(["list", "--grid", "full", "--results", str(results)]) == 0
    assert files_state(results) == before


def test_only_the_lock_holder_writes_the_index(tmp_path, configs, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setenv("BENCH_COMPACT_EVERY", "1")
    for cfg, rid in configs[:5]:
        store.commit(results, outcome(cfg, rid), None)
    assert not (results / layout.INDEX).exists()
    with store.results_lock(results):
        assert pq.read_metadata(layout.index_path(results, layout.RUNS)).num_rows == 5  # refreshed on taking it
        store.commit(results, outcome(*configs[5]), None)
        assert pq.read_metadata(layout.index_path(results, layout.RUNS)).num_rows == 6  # every run, here
    assert store.clean_stale(results) == 0  # whole files only: no temp file left behind


def test_killed_compaction_leaves_a_temp_file_that_readers_ignore_and_clean_stale_removes(tmp_path, configs):
    results = tmp_path / "results"
    with store.results_lock(results):
        for cfg, rid in configs[:10]:
            store.commit(results, outcome(cfg, rid), None)
    half = layout.index_path(results, layout.HISTORY).read_bytes()[:500]
    (results / layout.INDEX / ".history.parquet.k1ll3d.tmp").write_bytes(half)
    assert len(assert_reads_equal_files(results)) == 10
    assert store.clean_stale(results) == 1


# ------------------------------------------------------------------------------- readers beside a writer


def check_whole(results: Path, seen: set[str], epochs: int = EPOCHS) -> set[str]:
    """One read, checked: each row whole and of one version (its numbers match its id and attempt), each ok
    run's history complete, and no run that was stored before has gone."""
    runs = store.read_runs(results)
    assert runs["run_id"].is_unique and set(runs["status"]) <= {"ok", "failed"}
    ok = runs[runs["status"] == "ok"]
    for rid, attempt, auc in zip(ok["run_id"], ok["attempt"], ok["test_auc"]):
        assert auc == value(rid, int(attempt), "test"), rid
    hist = store.read_history(results, list(ok["run_id"]))
    counts = hist.groupby("run_id")["epoch"].count()
    assert counts.reindex(ok["run_id"]).eq(epochs).all()
    statuses = store.statuses(results, runs["run_id"])
    assert all(statuses[r] is not None for r in runs["run_id"])
    now = set(runs["run_id"])
    assert seen <= now
    return now


def test_a_reader_beside_a_refreshing_writer_only_sees_whole_runs(tmp_path, configs, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setenv("BENCH_COMPACT_EVERY", "1")  # the index is rewritten after every run
    done = threading.Event()
    errors = []

    def write():
        try:
            with store.results_lock(results):
                for i, (cfg, rid) in enumerate(configs[:60]):
                    store.commit(results, outcome(cfg, rid, failed=i % 5 == 0), None)
                for cfg, rid in configs[:60:5]:  # the failed ones rewritten ok, as a retry does
                    store.commit(results, outcome(cfg, rid, version=2), "failed")
        except BaseException as e:  # noqa: BLE001 - shown by the main thread
            errors.append(e)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen, reads = set(), 0
    while not done.is_set() or reads == 0:
        seen = check_whole(results, seen)
        reads += 1
    writer.join()
    assert not errors, errors
    assert reads > 3 and len(check_whole(results, seen)) == 60
    assert (store.read_runs(results)["status"] == "ok").all()
    assert_reads_equal_files(results)


KILLED_WRITER = """
import os, sys
sys.path.insert(0, {tests!r})
os.environ["BENCH_COMPACT_EVERY"] = "1"
from pathlib import Path
from bench import store
from bench.grid import load_grid
from test_store import outcome
grid = load_grid("full")
results = Path(sys.argv[1])
with store.results_lock(results):
    for cfg, rid in list(zip(grid.runs, grid.run_ids()))[int(sys.argv[2]):]:
        store.commit(results, outcome(cfg, rid), None)
"""


@pytest.mark.slow
def test_sigkill_while_committing_and_compacting_loses_nothing_committed(tmp_path):
    """A writer killed at random moments (mid-row, mid-refresh): every run whose row made it reads whole,
    reads equal the per-run files, and the next lock holder cleans up and refreshes."""
    results = tmp_path / "results"
    script = KILLED_WRITER.format(tests=str(Path(__file__).parent))
    rng = np.random.default_rng(0)
    start = 0
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", script, str(results), str(start)], env={**os.environ,
                             "PYTHONPATH": str(REPO)})
        while len(index.scan(results, layout.RUNS)) <= start:  # it has committed a run: kill it after a while
            time.sleep(0.05)
        time.sleep(rng.uniform(1.0, 3.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        runs = assert_reads_equal_files(results)
        check_whole(results, set())
        start = len(runs)
    assert start > 4
    with store.results_lock(results):
        store.clean_stale(results)
    assert not list(results.rglob("*.tmp"))
    assert pq.read_metadata(layout.index_path(results, layout.RUNS)).num_rows == start
    assert_reads_equal_files(results)


SEEDS = 8
GRID = f"""
    defaults:
      data: {{task: breastmnist, size: 28}}
      vit: {{arch: tiny, patch: 7, depth: 1}}
      booster: {{variant: baseline}}
      train: {{epochs: 2, batch_size: 8, eval_batch_size: 64, warmup_epochs: 0}}
    seeds: {list(range(SEEDS))}
"""


@pytest.mark.slow
def test_bench_list_and_reads_beside_a_real_bench_run(tmp_path, capsys):
    """`bench run` (a subprocess, refreshing the index after every run) writes while this test reads over and
    over through the reader and `bench list`: every read sees whole runs, and the run is not disturbed."""
    from bench.data import write_fixture

    root = tmp_path / "medmnist"
    write_fixture(root, "breastmnist", 28, n=(32, 16, 16))
    grid = tmp_path / "g.yaml"
    grid.write_text(textwrap.dedent(GRID))
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_COMPACT_EVERY": "1", "OMP_NUM_THREADS": "1"}
    bench = str(Path(sys.executable).with_name("bench"))
    p = subprocess.Popen([bench, "run", "--grid", str(grid), "--results", str(results), "--data-root", str(root)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, reads = set(), 0
    while p.poll() is None:
        if (results / layout.RUNS).is_dir():
            seen = check_whole_run(results, seen)
            assert cli.main(["list", "--grid", str(grid), "--results", str(results)]) == 0
            done = int(re.search(rf"grid g: {SEEDS} runs, (\d+) done, 0 failed", capsys.readouterr().out).group(1))
            assert len(seen) <= done <= SEEDS
            reads += 1
    assert p.returncode == 0, p.stdout.read()
    assert reads >= SEEDS // 2
    assert len(check_whole_run(results, seen)) == SEEDS
    assert_reads_equal_files(results)


def check_whole_run(results: Path, seen: set[str]) -> set[str]:
    """check_whole for rows a real run wrote: each ok row has its metrics and a history of every epoch."""
    runs = store.read_runs(results)
    assert runs["run_id"].is_unique and (runs["status"] == "ok").all()
    assert runs[["val_auc", "test_auc", "best_epoch", "wall_s"]].notna().all().all()
    hist = store.read_history(results)
    assert hist.groupby("run_id")["epoch"].apply(list).reindex(runs["run_id"]).map(lambda e: e == [0, 1]).all()
    now = set(runs["run_id"])
    assert seen <= now
    return now


# ------------------------------------------------------------------------------------------ corrupt files

RECORD_STORE = REPO / "reports" / "record" / "store"


def corrupt(path: Path, how: str) -> bytes:
    """Cut `path` short or overwrite it with garbage, as a copy cut short or a bad disk would; returns its bytes."""
    data = path.read_bytes()[: len(path.read_bytes()) // 3] if how == "truncate" else os.urandom(3000)
    path.write_bytes(data)
    return data


def cell_counts(out: Path) -> pd.Series:
    return pd.read_csv(out / "record" / "summary.csv")[["planned", "ok", "missing"]].sum()


def test_a_corrupt_store_file_is_named_set_aside_and_every_other_run_is_still_reported(tmp_path, capsys):
    """A truncated runs/*.parquet, a garbage history file, a truncated and a garbage predictions file (issue 34,
    items 11 and 13d): `bench run --dry-run` and `bench report` (with and without --grid) exit 0, each bad file is
    named in one warning line and kept (moved to corrupt/, byte for byte), its run reads as not stored and is
    planned again, and every other run is reported; with the compacted index holding the good rows, and without."""
    results = tmp_path / "store"
    shutil.copytree(RECORD_STORE, results)
    index.refresh(results)  # the compacted tables hold the good rows: the files changed since must still be caught
    ids = sorted(p.stem for p in (results / layout.RUNS).glob("*.parquet"))
    bad = {layout.run_path(results, ids[0]): corrupt(layout.run_path(results, ids[0]), "truncate"),
           layout.history_path(results, ids[1]): corrupt(layout.history_path(results, ids[1]), "garbage"),
           layout.predictions_path(results, ids[2]): corrupt(layout.predictions_path(results, ids[2]), "truncate"),
           layout.predictions_path(results, ids[3]): corrupt(layout.predictions_path(results, ids[3]), "garbage")}

    assert cli.main(["run", "--grid", "record", "--results", str(results), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert f"{len(ids)} runs, {len(ids) - 1} done, 0 failed, 1 to run" in out
    assert re.search(rf"^{ids[0]}\s+-\s.*\bnew$", out, re.M), out
    report = tmp_path / "report"
    assert cli.main(["report", "--results", str(results), "--grid", "record", "--out", str(report),
                     "--replicates", "0"]) == 0
    err += capsys.readouterr().err
    history = layout.history_path(results, ids[1])
    if history.exists():  # the report read no curve of that run: the first reader of every history meets it
        with pytest.warns(UserWarning, match="corrupt store file") as caught:
            assert len(store.read_history(results)["run_id"].unique()) == len(ids) - 1
        err += "".join(f"bench: warning: {w.message}\n" for w in caught)
    warned = [line for line in err.splitlines() if line.startswith("bench: warning: corrupt store file")]
    assert len(warned) == len(bad) and len(err.strip().splitlines()) == len(bad), err
    for path, data in bad.items():
        assert sum(str(path) in line for line in warned) == 1, err
        kept = results / "corrupt" / path.parent.name / path.name
        assert not path.exists() and kept.read_bytes() == data
    assert cell_counts(report).to_dict() == {"planned": len(ids), "ok": len(ids) - 1, "missing": 1}
    assert store.statuses(results, ids[:2]) == {ids[0]: None, ids[1]: "ok"}
    shutil.rmtree(results / layout.INDEX)  # without the index: every file read one by one
    kept = corrupt(layout.run_path(results, ids[4]), "garbage")
    assert cli.main(["report", "--results", str(results), "--out", str(report), "--replicates", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("bench: warning:") == 1 and f"corrupt store file {layout.run_path(results, ids[4])}" in err, err
    assert (results / "corrupt" / layout.RUNS / f"{ids[4]}.parquet").read_bytes() == kept
    assert len(store.read_runs(results)) == len(ids) - 2


def test_a_corrupt_file_in_a_read_only_store_is_named_and_left_in_place(tmp_path, capsys, mounts):
    """A reader cannot move it aside there: the warning says the file stays, once, and the listing is made."""
    results = tmp_path / "ro"
    results.mkdir()
    shutil.copytree(RECORD_STORE, results / "store")
    path = next((results / "store" / layout.RUNS).glob("*.parquet"))
    corrupt(path, "truncate")
    if not (mounts("--bind", str(results), str(results)) and mounts("-o", "remount,bind,ro", str(results))):
        pytest.skip("cannot bind-mount the store read-only here (needs CAP_SYS_ADMIN)")
    assert cli.main(["list", "--grid", "record", "--results", str(results / "store")]) == 0
    out, err = capsys.readouterr()
    assert "grid record: 85 runs, 84 done, 0 failed, 1 not run" in out
    assert err.count("bench: warning:") == 1 and f"corrupt store file {path}" in err and "left in place" in err, err
    assert path.exists()
