"""`bench run --backend slurm` against a real single-node SLURM (munged, slurmctld, slurmd started here, see
tests/slurm_helpers.py): the `ci` grid through sbatch-submitted workers, a job cancelled mid-run, a job's
time limit cut short mid-grid; `bench tune --backend slurm`. CPU-only jobs of 1 CPU each."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import store
from bench.config import run_id
from bench.grid import load_grid
from bench.run import run_one

from process_helpers import wait_for
from slurm_helpers import slurm_cluster, why_not

BENCH = str(Path(sys.executable).with_name("bench"))
REPO = Path(__file__).resolve().parents[1]
JOB = ["--gpus-per-job", "0", "--cpus-per-job", "1", "--mem", "3GB", "--device", "cpu", "--interface", "lo"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(f"no SLURM test cluster: {reason}")
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield {**env, "PYTHONPATH": f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1"}



def _grid(env, *sets):
    from bench.config import parse_sets

    return load_grid("ci", parse_sets([f"booster.source={env[1]}", *sets]))


def _start(env, slurm, results, *extra) -> subprocess.Popen:
    args = [BENCH, "run", "--grid", "ci", "--data-root", str(env[0]), "--results", str(results),
            "--set", f"booster.source={env[1]}", "--backend", "slurm", *JOB, *extra]
    return subprocess.Popen(args, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _jobs(slurm) -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True, text=True,
                          check=True).stdout.split()



def _released(slurm, timeout: float = 60.0) -> bool:
    """Whether every job is gone from squeue within `timeout` (a cancelled job leaves in a moment)."""
    t0 = time.monotonic()
    while _jobs(slurm) and time.monotonic() - t0 < timeout:
        time.sleep(1)
    return not _jobs(slurm)


def _training(results: Path) -> dict[str, str]:
    """run id -> SLURM job id of every run training now (a live log, no row yet)."""
    out = {}
    done = {p.stem for p in (results / store.RUNS).glob("*.parquet")}
    for p in (results / store.LOGS).glob(f"*{store.RUNNING_SUFFIX}"):
        rid = p.name[: -len(store.RUNNING_SUFFIX)]
        m = re.search(r" pid (\d+) on ", p.read_text(errors="replace"))
        if rid in done or not m:
            continue
        try:
            environ = Path(f"/proc/{m.group(1)}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        job = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"SLURM_JOB_ID=")]
        if job:
            out[rid] = job[0]
    return out


def _finish(proc, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_ci_grid_on_slurm_survives_a_scancel_mid_run(slurm, ci_env, tmp_path, one_thread):
    results = tmp_path / "results"
    expected = set(_grid(ci_env, "train.epochs=3").run_ids())
    p = _start(ci_env, slurm, results, "--max-jobs", "2", "--time", "00:30:00", "--worker-retries", "1",
               "--set", "train.epochs=3")
    wait_for(lambda: _training(results), p, timeout=300.0)
    rid, job = next(iter(_training(results).items()))
    partial = (results / store.LOGS / f"{rid}{store.RUNNING_SUFFIX}").read_text()
    subprocess.run(["scancel", job], env=slurm, check=True)
    out = _finish(p)

    rows = store.read_runs(results)
    assert sorted(rows["run_id"]) == sorted(expected), out  # every run stored, each once
    assert (rows["status"] == "ok").all(), rows[["run_id", "error"]]
    assert not list(results.rglob(f"*{store.RUNNING_SUFFIX}")) and not list(results.rglob("*.tmp"))
    by_id = rows.set_index("run_id")
    assert by_id.loc[rid, "slurm_job_id"] not in (None, job)  # rerun on another job
    # the loss said in one line, the rerun counted as attempt 2, the killed attempt's log kept
    assert f"bench: run {rid} (attempt 1) lost: its SLURM job's worker was lost" in out, out
    assert by_id.loc[rid, "attempt"] == 2 and (rows["attempt"] == 1).sum() == len(rows) - 1
    assert "attempt 2" in store.log_path(results, rid).read_text().splitlines()[0]
    kept = (results / store.LOGS / f"{rid}.attempt1.lost.log").read_text()
    assert kept.startswith(partial) and "attempt 1" in kept.splitlines()[0]
    assert rows["slurm_job_id"].notna().all()  # (which job took the others is the scheduler's choice)
    # the rerun's numbers are those of the same run trained here, in this process
    cfg = next(c for c in _grid(ci_env, "train.epochs=3").runs if run_id(c) == rid)
    here = run_one(cfg, ci_env[0], tmp_path / "here", device="cpu")
    assert by_id.loc[rid, "test_auc"] == pytest.approx(here["test_auc"], abs=1e-9)
    assert _released(slurm)  # the jobs were released with the grid


@pytest.mark.slow
def test_a_run_is_not_started_in_a_job_whose_time_is_too_short(slurm, ci_env, tmp_path):
    """Each run's estimate is START_S (2 min) plus its FLOPs; a job whose limit is cut (scontrol) to less than
    that from now hands its next run back and ends; a fresh job does the rest."""
    results = tmp_path / "results"
    expected = set(_grid(ci_env).run_ids())
    p = _start(ci_env, slurm, results, "--max-jobs", "1", "--time", "00:10:00")
    wait_for(lambda: list((results / store.RUNS).glob("*.parquet")), p, timeout=300.0)
    (job,) = _jobs(slurm)
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=2"], env=slurm, check=True)
    cut = time.time()
    out = _finish(p)

    rows = store.read_runs(results)
    assert sorted(rows["run_id"]) == sorted(expected) and (rows["status"] == "ok").all(), out
    first = rows[rows["slurm_job_id"] == job]
    assert len(first) >= 1 and (first["started_unix"] < cut).all()  # none started after the cut
    assert (rows["slurm_job_id"] != job).any()
    state = subprocess.run(["scontrol", "show", "job", job], env=slurm, capture_output=True, text=True).stdout
    assert "JobState=TIMEOUT" not in state  # it left on its own, before SLURM's limit


@pytest.mark.slow
def test_tune_runs_its_studies_on_slurm_jobs(slurm, ci_env, tmp_path):
    import json

    import optuna

    from bench.tune.storage import open_storage

    results = tmp_path / "results"
    args = [BENCH, "tune", "--grid", "ci", "--task", "breastmnist", "--variant", "baseline", "--trials", "2",
            "--seeds", "1", "--data-root", str(ci_env[0]), "--results", str(results), "--set",
            f"booster.source={ci_env[1]}", "--backend", "slurm", *JOB, "--max-jobs", "1", "--time", "00:30:00",
            "--scheduler-address", "127.0.0.1"]  # the address the jobs' workers reach
    p = subprocess.run(args, env=slurm, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SLURM: 1 jobs of no GPU(s)" in p.stdout
    doc = json.loads((results / "tuned" / "breastmnist__baseline.json").read_text())
    study = optuna.load_study(study_name=doc["study"], storage=open_storage(str(doc["storage"])))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 2
    assert not _jobs(slurm)  # released


def _conf_with_dead_slurmctld(slurm, tmp_path) -> Path:
    """A copy of the cluster's slurm.conf whose slurmctld port nobody listens on: sbatch cannot reach it."""
    from slurm_helpers import _free_port

    conf = tmp_path / "dead-slurmctld.conf"
    conf.write_text(re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={_free_port()}", Path(slurm["SLURM_CONF"]).read_text()))
    return conf


@pytest.mark.slow
def test_a_job_slurm_refuses_is_one_line_within_60s_and_nothing_is_written(slurm, ci_env, tmp_path, capsys,
                                                                          monkeypatch):
    """sbatch --test-only of bench's job script: SLURM's own reason, before any folder or job (before, each of
    these hung `bench run` forever, printing tornado tracebacks, with an empty results folder and its lock)."""
    from bench import cli

    monkeypatch.setenv("PATH", slurm["PATH"])
    dead = _conf_with_dead_slurmctld(slurm, tmp_path)
    cases = [  # (extra args, SLURM_CONF, what the line says)
        (["--partition", "nope", *JOB], slurm["SLURM_CONF"], "invalid partition specified: nope"),
        (["--device", "cpu"], slurm["SLURM_CONF"], "Invalid generic resource (gres) specification"),  # default 1 GPU
        ([*JOB, "--cpus-per-job", "64"], slurm["SLURM_CONF"], "Requested node configuration is not available"),
        ([*JOB, "--mem", "4096GB"], slurm["SLURM_CONF"], "Requested node configuration is not available"),
        (JOB, str(tmp_path / "no-such.conf"), f"SLURM_CONF={tmp_path / 'no-such.conf'} is not a file"),
        (JOB, str(dead), "Unable to contact slurm controller"),
    ]
    for i, (extra, conf, says) in enumerate(cases):
        monkeypatch.setenv("SLURM_CONF", conf)
        results = tmp_path / f"r{i}"
        t0 = time.monotonic()
        rc = cli.main(["run", "--grid", "ci", "--data-root", str(ci_env[0]), "--results", str(results), "--set",
                       f"booster.source={ci_env[1]}", "--backend", "slurm", *extra])
        err = _one_line(capsys, rc)
        assert says in err and time.monotonic() - t0 < 60, err
        assert not results.exists()
    assert not _jobs(slurm)


@pytest.mark.slow
def test_pending_jobs_ctrl_c_and_a_later_refused_submission_on_slurm(slurm, ci_env, tmp_path):
    """1. A job SLURM holds back (--begin in an hour) is said pending with squeue's reason after PENDING_NOTE_S;
    once its request exceeds the partition (scontrol: 64 CPUs, reason PartitionConfig) the grid stops, one line.
    2. Ctrl-C exits 130 (dask-jobqueue sets its own SIGINT handler on import, exit 0: bench's is kept).
    3. A grid whose replacement job sbatch cannot submit (slurmctld unreachable once the first job is cancelled)
    stops with sbatch's line, exit 2, rather than waiting forever."""
    import signal
    import threading

    results = tmp_path / "results"
    p = _start(ci_env, slurm, results, "--max-jobs", "1", "--time", "00:30:00", "--sbatch=--begin=now+1hour")
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True).start()
    wait_for(lambda: any("jobs pending after" in ln for ln in lines), p, timeout=240.0)
    (job,) = _jobs(slurm)
    for change in ("NumCPUs=64", "StartTime=now"):
        subprocess.run(["scontrol", "update", f"JobId={job}", change], env=slurm, capture_output=True)
    p.wait(timeout=120)
    time.sleep(0.5)
    out = "".join(lines)
    assert "(squeue reason: BeginTime); the runs start when SLURM starts a job" in out, out
    err = [ln for ln in out.splitlines() if ln.startswith("bench: error:")]
    assert p.returncode == 2 and len(err) == 1 and "SLURM keeps the jobs pending (PartitionConfig)" in err[0], out
    assert _released(slurm)

    p = _start(ci_env, slurm, results, "--max-jobs", "1", "--time", "00:30:00")
    wait_for(lambda: _jobs(slurm), p, timeout=120.0)  # submitted: dask-jobqueue imported long ago
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130 and "bench: interrupted; finished runs are kept" in out, out
    assert _released(slurm)

    conf = tmp_path / "slurm.conf"
    conf.write_text(Path(slurm["SLURM_CONF"]).read_text())
    env = {**slurm, "SLURM_CONF": str(conf)}  # the dispatcher's sbatch reads this copy; the daemons their own
    p = _start(ci_env, env, results, "--max-jobs", "1", "--time", "00:30:00")
    wait_for(lambda: _training(results), p, timeout=300.0)
    (job,) = _jobs(slurm)
    conf.write_text(_conf_with_dead_slurmctld(slurm, tmp_path).read_text())
    subprocess.run(["scancel", job], env=slurm, check=True)
    out, _ = p.communicate(timeout=300)
    err = [ln for ln in out.splitlines() if ln.startswith("bench: error:")]
    assert p.returncode == 2 and len(err) == 1 and "Traceback" not in out, out
    assert "SLURM refused a job (sbatch: error: Batch job submission failed: Unable to contact slurm controller" in err[0]
    assert _released(slurm)


@pytest.mark.slow
def test_doctor_asks_slurm_about_the_job_it_would_submit(slurm, monkeypatch):
    """sinfo lists the partition either way; only a job of the options tells whether it can start (the
    default 1 GPU cannot on this GPU-less node)."""
    from bench import doctor
    from bench.run.slurm import SlurmOptions

    monkeypatch.setenv("PATH", slurm["PATH"])
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    c = doctor.backend(doctor.Options(backend="slurm"))
    assert c.status == "FAIL" and "debug* up 1" in c.detail and "Invalid generic resource" in c.detail, c
    c = doctor.backend(doctor.Options(backend="slurm", slurm=SlurmOptions(gpus_per_job=0, cpus_per_job=1, mem="1GB")))
    assert c.status == "ok" and "accepts a job of 0 GPU(s), 1 CPUs, 1GB" in c.detail, c


# ------------------------------------------------------------------------------------ no cluster needed


@pytest.mark.parametrize("text,seconds", [("90", 5400), ("30:15", 1815), ("24:00:00", 86400), ("1-02:03:04", 93784),
                                          ("2-12", 216000), ("0-00:05", 300)])
def test_time_limits_read_as_sbatch_reads_them(text, seconds):
    from bench.run.slurm import walltime_s

    assert walltime_s(text) == seconds


def _one_line(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("bench: error: ") and "\n" not in err, err
    return err


def test_slurm_mistakes_are_one_line_before_anything_is_submitted(ci_env, tmp_path, capsys):
    from bench import cli

    base = ["run", "--grid", "ci", "--data-root", str(ci_env[0]), "--results", str(tmp_path / "r"),
            "--set", f"booster.source={ci_env[1]}"]
    assert "--time 'soon'" in _one_line(capsys, cli.main([*base, "--backend", "slurm", "--time", "soon"]))
    assert "add --backend slurm" in _one_line(capsys, cli.main([*base, "--partition", "gpu"]))
    assert "--jobs is for the local backend" in _one_line(capsys, cli.main([*base, "--backend", "slurm", "--jobs", "2"]))
    bad = tmp_path / "cluster.yaml"
    bad.write_text("partition: gpu\nqueue: x\n")
    assert "unknown keys ['queue']" in _one_line(capsys, cli.main([*base, "--backend", "slurm", "--slurm-config", str(bad)]))
    bad.write_text("max_jobs: eight\n")
    assert "max_jobs must be a whole number, got 'eight'" in _one_line(
        capsys, cli.main([*base, "--backend", "slurm", "--slurm-config", str(bad)]))
    assert "'nope0' is not a valid network interface" in _one_line(
        capsys, cli.main([*base, "--backend", "slurm", "--interface", "nope0"]))
    # at a billionth of the GPU's peak every run needs days: longer than one job's limit, so refused
    err = _one_line(capsys, cli.main([*base, "--backend", "slurm", "--time", "01:00:00", "--utilisation", "1e-9"]))
    assert "5 runs are estimated longer than --time 01:00:00" in err
    assert not (tmp_path / "r").exists()


def test_cpu_jobs_are_priced_at_this_cpu_not_at_a_gpu(ci_env, one_thread):
    """With --gpus-per-job 0 the time guard times the runs' steps here: 400 epochs of the ci models fit a
    limit of START_S + 1 s at a GPU's speed (microseconds of FLOPs), not at this CPU's."""
    from bench.errors import BenchError
    from bench.run import slurm

    runs = _grid(ci_env, "train.epochs=400").runs
    assert slurm.START_S == 120
    slurm.check_fits(runs, slurm.SlurmOptions(gpus_per_job=1, time="00:02:01"))
    with pytest.raises(BenchError, match=r"runs are estimated longer than --time 00:02:01 .*timed on this machine's CPU"):
        slurm.check_fits(runs, slurm.SlurmOptions(gpus_per_job=0, cpus_per_job=1, time="00:02:01"))
