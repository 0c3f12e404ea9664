"""The GPU path, as far as a CPU shows it: which GPU and how many threads each worker gets (local pool, Dask), the
one-line error for more workers than GPUs, memory released after a failed run, fp32 scores and BCE targets under
bf16 autocast, the classification of CUDA errors, the device check and the per-device precision."""

from __future__ import annotations

import gc
import re
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import cli
from bench.config import RunConfig, override, resolve
from bench.data import task_spec
from bench.data.loading import load_splits
from bench.errors import BenchError
from bench.run import backends, gpus, worker
from bench.run.dispatch import RunOptions


# ------------------------------------------------------------------------------------------ which GPU


@pytest.mark.parametrize("workers, n_gpus, cpus, expected_gpus, expected_threads", [
    (4, 4, 16, ["0", "1", "2", "3"], 4),  # one GPU each
    (8, 4, 16, ["0", "1", "2", "3", "0", "1", "2", "3"], 2),  # --runs-per-gpu 2: two per GPU
    (2, 4, 3, ["0", "1"], 1),  # fewer workers than GPUs: the first ones; 3 CPUs // 2 workers
    (3, 0, 8, ["", "", ""], 2),  # CPU only
])
def test_worker_env_gives_each_worker_its_gpu_and_a_share_of_the_cpus(workers, n_gpus, cpus, expected_gpus,
                                                                      expected_threads):
    ids = [str(i) for i in range(n_gpus)]
    envs = [gpus.worker_env(i, workers, ids, cpus) for i in range(workers)]
    assert [",".join(e.gpus) for e in envs] == expected_gpus
    assert {e.threads for e in envs} == {expected_threads}
    if n_gpus:
        assert envs[0].environ()["CUDA_VISIBLE_DEVICES"] == "0"
    else:
        assert "CUDA_VISIBLE_DEVICES" not in envs[0].environ()


def test_threads_come_from_the_cpus_the_process_may_use(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert gpus.usable_cpus() == 3
    assert gpus.worker_env(0, 2, ()).threads == 1


def test_pool_workers_claim_slots_that_pick_their_gpu_and_threads(tmp_path, monkeypatch):
    """Two pool workers (simulated in a thread: no signal handlers in the test process) set CUDA_VISIBLE_DEVICES to
    their own GPU before CUDA starts, and their threads from the CPUs split between them."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test
    monkeypatch.setattr(backends, "execute", lambda task: {"gpu": __import__("os").environ["CUDA_VISIBLE_DEVICES"],
                                                             "threads": torch.get_num_threads(), "device": task.device})
    monkeypatch.setattr(backends, "keep_loky_worker", lambda: None)
    setup = backends.PoolSetup(slot_dir=str(tmp_path), n_slots=2, cpus=4, gpus=("5", "7"))
    task = worker.Task(cfg=RunConfig(), data_root=".", live_log=None, device=None)
    seen = []
    before = torch.get_num_threads()
    try:
        for _ in range(2):  # a fresh process each time, as loky's: its state is new, the other's slot lock held
            backends._POOL_STATE.pop("slot_dir", None)
            t = threading.Thread(target=lambda: seen.append(backends._pool_execute(task, setup)))
            t.start()
            t.join()
    finally:
        torch.set_num_threads(before)
        for fd in backends._POOL_STATE.pop("slot_fds", []):
            __import__("os").close(fd)
        backends._POOL_STATE.clear()
    assert [s["gpu"] for s in seen] == ["5", "7"]
    assert [s["threads"] for s in seen] == [2, 2]
    assert [s["device"] for s in seen] == ["cuda", "cuda"]


def test_dask_layout_ranks_workers_per_host():
    info = {  # as Client.scheduler_info()["workers"]
        "tcp://10.0.0.1:4001": {"host": "10.0.0.1", "name": "b"},
        "tcp://10.0.0.1:4000": {"host": "10.0.0.1", "name": "a"},
        "tcp://10.0.0.2:4000": {"host": "10.0.0.2", "name": "c"},
        "tcp://10.0.0.1:4002": {"host": "10.0.0.1", "name": "c"},
    }
    assert gpus.dask_layout(info) == {"tcp://10.0.0.1:4000": (0, 3), "tcp://10.0.0.1:4001": (1, 3),
                                      "tcp://10.0.0.1:4002": (2, 3), "tcp://10.0.0.2:4000": (0, 1)}


@pytest.mark.slow  # a LocalCluster of two processes: 20-100 s on a busy 2-core machine
def test_dask_workers_on_one_host_each_get_their_own_gpu_and_threads():
    """A real LocalCluster: two worker processes with a GPU resource; the GPUs are pretended inside the workers
    (this machine has none), the rest is the real setup a run does."""
    distributed = pytest.importorskip("distributed")

    def probe():
        import os

        import torch as t

        from bench.run import backends as b
        from bench.run import gpus as g

        g.visible_gpus = lambda: ("0", "1")  # what NVML would report on a 2-GPU host
        b.dask_worker_setup({})
        return os.environ.get("CUDA_VISIBLE_DEVICES"), t.get_num_threads(), os.getpid()

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        addresses = list(client.scheduler_info()["workers"])
        results = client.gather([client.submit(probe, workers=[a], resources={"GPU": 1}, pure=False)
                                 for a in addresses])
    assert sorted(r[0] for r in results) == ["0", "1"] and len({r[2] for r in results}) == 2
    assert {r[1] for r in results} == {max(1, gpus.usable_cpus() // 2)}


def test_more_jobs_than_gpus_is_a_one_line_error_unless_runs_per_gpu(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(backends, "visible_gpus", lambda: ("0", "1", "2", "3"))
    with pytest.raises(BenchError, match=r"--jobs 8 on 4 GPUs would put up to 2 runs on each GPU; use --runs-per-gpu"):
        RunOptions(jobs=8).check()
    assert RunOptions(runs_per_gpu=2).check().jobs == 8
    assert RunOptions(jobs=4).check().jobs == 4
    assert RunOptions(jobs=8, device="cpu").check().jobs == 8  # CPU workers: no GPU to share
    rc = cli.main(["run", "--grid", "smoke", "--results", str(tmp_path / "r"), "--jobs", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--runs-per-gpu" in err


def test_the_dask_hint_says_how_each_worker_gets_its_gpu(monkeypatch):
    distributed = pytest.importorskip("distributed")

    def unreachable(*a, **k):
        raise OSError("Timed out trying to connect to tcp://127.0.0.1:1")

    monkeypatch.setattr(distributed, "Client", unreachable)
    with pytest.raises(BenchError) as e:
        backends.connect("tcp://127.0.0.1:1")
    assert "CUDA_VISIBLE_DEVICES=i dask worker" in str(e.value)


# --------------------------------------------------------------------------------------- failed runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bench.data import write_fixture

    root = tmp_path_factory.mktemp("gpu") / "medmnist"
    write_fixture(root, "breastmnist", 28, n=(32, 16, 16))
    write_fixture(root, "chestmnist", 28, n=(32, 16, 16))
    return root


def _cfg(task: str = "breastmnist", **sets) -> RunConfig:
    base = {"data.task": task, "vit.arch": "tiny", "vit.depth": 1, "vit.patch": 7, "train.batch_size": 8,
            "train.eval_batch_size": 64, "train.warmup_epochs": 0, "train.epochs": 1}
    return resolve(override(RunConfig(), {**base, **sets}))


def test_a_failed_run_drops_its_model_before_memory_is_released(tiny, monkeypatch, one_thread):
    """The model of a run that raised must be gone when free_memory runs (the traceback of the handler held it)."""
    import bench.models.build
    import bench.train

    refs, alive_at_release = [], []
    real_build = bench.train.build_model

    def build(cfg, spec):
        model, info = real_build(cfg, spec)
        refs.append(weakref.ref(model))
        return model, info

    def boom(*a, **k):
        raise RuntimeError("a failure after the model was built")

    def release():
        gc.collect()
        alive_at_release.append(refs[-1]() is not None)

    monkeypatch.setattr(bench.train, "build_model", build)
    monkeypatch.setattr(bench.train, "predict", boom)
    monkeypatch.setattr(worker, "free_memory", release)
    out = worker.execute(worker.Task(cfg=_cfg(), data_root=str(tiny), live_log=None, device="cpu"))
    assert out["row"]["status"] == "failed" and "after the model was built" in out["row"]["error"]
    assert alive_at_release == [False]
    assert refs[-1]() is None
    assert out["row"]["precision"] == "fp32" and not out.get("fatal")


# ------------------------------------------------------------------------------------- fp32 scores


def test_scores_and_bce_targets_stay_fp32_under_bf16_autocast(tiny, one_thread):
    """The head runs outside autocast: under CPU bf16 autocast its logits are fp32 and equal the fp32 product of the
    (bf16) features; BCE with label smoothing 0.1 uses targets 0.95 / 0.05 (not bf16's 0.9492 / 0.0500)."""
    from bench.metrics import MULTI_LABEL, loss_fn
    from bench.models.build import build_model

    spec = task_spec("chestmnist", 28)
    cfg = _cfg("chestmnist")
    model, _ = build_model(cfg, spec)
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        feats = model.backbone.forward_head(model.backbone.forward_features(x), pre_logits=True)
    assert logits.dtype == torch.float32
    head = model.backbone.head
    expected = (feats.double() @ head.weight.double().T + head.bias.double()).detach()  # the head in float64, from the features
    np.testing.assert_allclose(logits.double().numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)

    labels = torch.tensor([[1, 0] * 7, [0, 1] * 7])
    z = torch.randn(2, 14).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(MULTI_LABEL, 0.1)(z, labels)
    zz, y = z.double().numpy(), np.where(labels.numpy() == 1, 0.95, 0.05)
    by_hand = np.mean(np.logaddexp(0, zz) - y * zz)  # BCE with logits, closed form
    assert loss.dtype == torch.float32
    assert abs(loss.item() - by_hand) < 1e-6


def test_a_run_under_bf16_autocast_scores_fp32_logits(tiny, monkeypatch, one_thread):
    """fit's val and test logits under bf16 autocast are fp32 values, not bf16 ones cast up."""
    import bench.train

    real_engine, real_scores = bench.train.build_engine, bench.train.scores_from_logits
    logits = []

    def bf16_engine(cfg, spec, device):
        engine, info = real_engine(cfg, spec, device)
        engine.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        return engine, info

    def scores(task_type, z):
        logits.append(z)
        return real_scores(task_type, z)

    monkeypatch.setattr(bench.train, "build_engine", bf16_engine)
    monkeypatch.setattr(bench.train, "scores_from_logits", scores)
    spec = task_spec("breastmnist", 28)
    splits = load_splits(spec, tiny, download=False)
    result = bench.train.fit(_cfg(), splits, spec, torch.device("cpu"))
    assert result.y_score.dtype == np.float64 and len(logits) == 2  # val, test
    for z in logits:
        assert z.dtype == torch.float32
        assert (z.to(torch.bfloat16).float() != z).any()  # bf16 logits cast up would all round-trip


# ------------------------------------------------------------------------------------- CUDA errors


@pytest.mark.parametrize("message, kind", [
    ("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously reported at "
     "some other API call, so the stacktrace below might be incorrect.", "fatal"),
    ("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.",
     "fatal"),
    ("CUDA error: uncorrectable ECC error encountered", "fatal"),
    ("CUDA error: unspecified launch failure", "fatal"),
    ("CUDA error: misaligned address", "fatal"),
    ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.06 GiB is "
     "free.", "oom"),
    ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", "oom"),
    ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", "oom"),
    ("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE", "oom"),
    ("CUDA error: out of memory", "oom"),
    ("mat1 and mat2 shapes cannot be multiplied (8x192 and 384x2)", None),
    ("train loss is nan at epoch 3", None),
])
def test_cuda_errors_are_told_apart(message, kind):
    assert worker.failure_kind(RuntimeError(message)) == kind


def test_the_allocators_own_exception_and_a_wrapped_one_are_oom():
    assert worker.failure_kind(torch.cuda.OutOfMemoryError("whatever")) == "oom"
    try:
        try:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        except RuntimeError as inner:
            raise ValueError("while evaluating") from inner
    except ValueError as e:
        assert worker.failure_kind(e) == "fatal"


def test_a_fatal_cuda_error_fails_the_run_and_marks_it(tiny, monkeypatch, one_thread):
    import bench.train

    def illegal(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(bench.train, "predict", illegal)
    out = worker.execute(worker.Task(cfg=_cfg(), data_root=str(tiny), live_log=None, device="cpu"))
    assert out["fatal"] and out["row"]["error"].startswith("fatal CUDA error: RuntimeError: CUDA error: an illegal memory access")
    assert not out["row"]["oom_retry"]  # not mistaken for an out-of-memory


def test_the_serial_backend_stops_the_grid_after_a_fatal_error(monkeypatch):
    task = worker.Task(cfg=RunConfig(), data_root=".", live_log=None, device=None)
    outs = iter([{"row": {"run_id": "r1", "error": "fatal CUDA error: x", "cuda_visible_devices": "3"}, "fatal": True}])
    monkeypatch.setattr(backends, "execute", lambda t, progress=None: next(outs))
    stream = backends.serial([task, task, task], lambda t: None)
    assert next(stream)[1]["fatal"]
    with pytest.raises(BenchError, match=r"GPU 3 hit a fatal CUDA error in run r1 .*2 runs not started"):
        next(stream)


def test_the_pool_retires_a_gpu_after_a_fatal_error_and_goes_on_with_the_others(tmp_path, monkeypatch, capsys):
    """The pool's bookkeeping, with joblib run in this process: the fatal run goes to another GPU, the next round has
    one GPU fewer (and as many workers per GPU as before), every run ends ok, and one line says it."""
    import joblib

    class InProcess:  # joblib.Parallel, serially, here
        rounds: list = []

        def __init__(self, n_jobs, **kw):
            InProcess.rounds.append(n_jobs)

        def __call__(self, calls):
            return (f(*a, **k) for f, a, k in calls)

    def fake_execute(task, setup):
        gpu = setup.gpus[task.cfg.seed % len(setup.gpus)]
        row = {"run_id": f"r{task.cfg.seed}", "status": "ok", "cuda_visible_devices": gpu, "error": None,
               "setup_gpus": setup.gpus}
        if gpu == "1":
            return {"row": {**row, "status": "failed", "error": "fatal CUDA error: illegal memory access"}, "fatal": True}
        return {"row": row}

    monkeypatch.setattr(joblib, "Parallel", InProcess)
    monkeypatch.setattr(backends, "_pool_execute", fake_execute)
    monkeypatch.setattr(backends, "run_id", lambda cfg: f"r{cfg.seed}")
    tasks = [worker.Task(cfg=RunConfig(seed=s), data_root=".", live_log=None, device="cuda") for s in range(4)]
    setup = backends.PoolSetup(slot_dir=str(tmp_path), n_slots=6, cpus=6, gpus=("0", "1", "2"))
    outs = [out["row"] for _, out in backends.pool(tasks, 6, setup, tmp_path)]
    assert sorted(r["run_id"] for r in outs) == ["r0", "r1", "r2", "r3"] and all(r["status"] == "ok" for r in outs)
    assert {r["cuda_visible_devices"] for r in outs} <= {"0", "2"}
    assert InProcess.rounds == [4, 3]  # min(jobs, runs left); then 2 per GPU on the 2 left, for the 3 runs left
    assert [r["setup_gpus"] for r in outs][1:] == [("0", "2")] * 3
    err = capsys.readouterr().err
    assert err.count("GPU 1 hit a fatal CUDA error in run r1") == 1 and "GPU 1 retired" in err and "GPUs 0,2" in err


# --------------------------------------------------------------------------------- devices, precision


def test_a_gpu_index_that_does_not_exist_is_a_one_line_error(monkeypatch):
    from bench.train import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(BenchError, match=r"there is no GPU 2, torch sees 2 \(cuda:0 to cuda:1"):
        pick_device("cuda:2")


@pytest.mark.parametrize("capability, native_bf16, expected", [((9, 0), True, "bf16"), ((8, 0), True, "bf16"),
                                                               ((7, 0), False, "fp16"), ((7, 5), False, "fp16"),
                                                               ((6, 0), False, "fp32")])
def test_precision_is_bf16_only_where_native(monkeypatch, capability, native_bf16, expected):
    from contextlib import nullcontext

    from bench.train import precision

    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["emulation"] = including_emulation
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "device", lambda d: nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    assert precision(torch.device("cuda:0")) == expected
    assert asked["emulation"] is False


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                         (True, True, "bf16"), (False, False, "fp32")])
def test_cpu_precision_is_bf16_only_with_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    """AVX512-BF16 or AMX: bf16, with the math attention backend under autocast; else (AVX2, AVX-512 without BF16:
    torch would emulate it) fp32 without autocast."""
    from contextlib import nullcontext

    from bench.train import autocast, precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert precision(cpu) == expected
    ctx = autocast(cpu, precision(cpu))
    if expected == "fp32":
        assert isinstance(ctx, nullcontext)
        return
    q = torch.randn(2, 3, 17, 64, requires_grad=True)
    flash = torch.nn.functional.scaled_dot_product_attention(q, q, q).grad_fn.name()
    assert "Flash" in flash  # the default CPU kernel, whose bf16 backward is the slow one
    for _ in range(2):  # reusable, as predict enters it once per batch
        with ctx:
            assert (q @ q.mT).dtype == torch.bfloat16
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
            assert out.dtype == torch.bfloat16 and "Flash" not in out.grad_fn.name()  # the math path: bmm, softmax
        assert torch.is_autocast_enabled("cpu") is False


def test_cost_uses_the_peak_of_the_precision_the_gpu_runs(monkeypatch):
    from bench import cost

    assert cost.GPUS["H100"].peak("bf16") == 989.0
    assert cost.GPUS["V100"].precision == "fp16" and cost.GPUS["V100"].peak(cost.GPUS["V100"].precision) == 125.0
    c = cost.GridCost(flops=125e12 * 3600, runs=1, unknown={})
    assert c.gpu_hours(cost.GPUS["V100"], 1.0) == pytest.approx(1.0)


def test_deterministic_sets_torch_flags_for_its_run_only(tiny, monkeypatch, one_thread):
    import os

    import bench.train

    spec = task_spec("breastmnist", 28)
    splits = load_splits(spec, tiny, download=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []
    real = bench.train.build_engine

    def probe(cfg, spec, device):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        return real(cfg, spec, device)

    monkeypatch.setattr(bench.train, "build_engine", probe)
    try:
        a = bench.train.fit(_cfg(**{"train.deterministic": True}), splits, spec, torch.device("cpu"))
        bench.train.fit(_cfg(), splits, spec, torch.device("cpu"))
    finally:
        bench.train.set_determinism(False)
    assert seen[0] == (True, True, ":4096:8")
    assert seen[1][:2] == (False, False)
    assert np.isfinite(a.y_score).all()


def test_deterministic_is_not_in_the_run_id_at_its_default():
    from bench.config import run_id

    assert run_id(_cfg()) == run_id(_cfg(**{"train.deterministic": False}))
    assert run_id(_cfg()) != run_id(_cfg(**{"train.deterministic": True}))


def test_resampling_matmuls_run_without_tf32(monkeypatch):
    """The pixel-exact resize turns TF32 off around its matmuls, whatever was set globally, and restores it."""
    from bench.data.augment import geometry

    seen = []
    real = geometry.to_pixels

    def spy(x):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return real(x)

    monkeypatch.setattr(geometry, "to_pixels", spy)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        x = torch.randint(0, 255, (2, 1, 8, 8)).float()
        w = torch.eye(8).expand(2, 8, 8)
        out = geometry.resize_windows(x, w, w)
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert seen == [False, False]
    assert torch.equal(out, x)


# ------------------------------------------------------------------------------------------ bench doctor


def test_doctor_runs_the_cpu_path_and_says_what_it_could_not_check(tiny, capsys, one_thread):
    rc = cli.main(["doctor", "--quick", "--grid", "smoke", "--data-root", str(tiny)])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = {ln[7:21].strip(): ln[:6] for ln in out.splitlines() if ln.startswith("[")}
    assert lines["devices"] == "[ ok ]" and lines["paper step"] == "[ ok ]" and lines["memory"] == "[ ok ]"
    assert lines["bit for bit"] == "[ ok ]" and lines["backend"] == "[ ok ]" and lines["grid inputs"] == "[ ok ]"
    assert lines["precision"] == "[ ok ]" and "cpu fp32 (no native bf16" in out  # conftest: fp32 in-process
    for gpu_only in ("two on one GPU", "OOM retry"):
        assert lines[gpu_only] == "[skip]"
    assert "TFLOP/s" in out and "identical" in out and "no GPU here" in out
    assert re.search(r"MFU \d+\.\d% of this CPU's \d+ GFLOP/s fp32 \(torch.mm, 1 threads\)", out)
    assert out.strip().splitlines()[-1].startswith("7 checks ok, 0 failed, 2 not run")


def test_doctor_fails_a_grid_whose_llm_is_neither_cached_nor_fetchable(tiny, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from bench import doctor, doctor_inputs

    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndefaults:\n  data: {task: breastmnist, size: 28}\n"
                    "  booster: {source: someone/not-cached-llm}\nvariants:\n  rllm: {booster.variant: rllm}\n"
                    "seeds: [0]\n")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    c = doctor_inputs.grid_inputs(doctor.Options(grid=str(grid), data_root=str(tiny)))
    assert c.status == "FAIL" and "someone/not-cached-llm" in c.detail and "HF_HUB_OFFLINE" in c.detail


def test_doctor_calls_corrupt_data_and_incomplete_llms_missing_and_lists_every_one(tmp_path, tiny_llm, monkeypatch):
    """Issue 34 item 14: a truncated data file is corrupt (as `bench data list` says), a hub model whose cache holds
    only config.json is not here, a local folder whose weights are cut off is broken, and every missing input is
    named (9 data files: none cut off at 6)."""
    import shutil

    from huggingface_hub import constants

    from bench import doctor, doctor_inputs
    from bench.data import write_fixture

    root = tmp_path / "medmnist"
    write_fixture(root, "breastmnist", 28, n=(32, 16, 16))
    npz = root / "breastmnist.npz"
    npz.write_bytes(npz.read_bytes()[:-500])
    hub = tmp_path / "hub" / "models--org--config-only"
    sha = "0" * 40
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(sha)
    (hub / "snapshots" / sha).mkdir(parents=True)
    shutil.copy(tiny_llm("llama") / "config.json", hub / "snapshots" / sha / "config.json")
    cut = tmp_path / "cut-llm"
    shutil.copytree(tiny_llm("llama"), cut)
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:1000])
    others = ["pathmnist", "dermamnist", "octmnist", "pneumoniamnist", "bloodmnist", "tissuemnist", "organamnist",
              "organcmnist"]
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndefaults:\n  data: {size: 28}\nvariants:\n  rllm: {booster.variant: rllm}\n"
                    f"axes:\n  data.task: [breastmnist, {', '.join(others)}]\n  booster.source: [org/config-only, {cut}]\n"
                    "seeds: [0]\n")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(doctor_inputs, "_reachable", lambda url, timeout=5.0: f"{url} unreachable: no network")
    c = doctor_inputs.grid_inputs(doctor.Options(grid=str(grid), data_root=str(root)))
    assert c.status == "FAIL", c.detail
    assert "breastmnist.npz is corrupt" in c.detail and "org/config-only" in c.detail
    assert f"{cut / 'model.safetensors'} is truncated or corrupt" in c.detail
    assert all(f"{t}.npz" in c.detail for t in others) and "11 missing" in c.detail, c.detail


def test_doctor_measures_the_grids_own_heaviest_model_and_batch(tmp_path, tiny_llm, one_thread):
    """Issue 34 item 15: the memory figure and --runs-per-gpu were of ViT-S/224 at batch 32 whatever --grid said.
    With a grid, the step is its heaviest run (here the rllm at 64 px, batch 16, over a baseline at 28 px, batch 8)
    with its LLM's shape (the tiny LLaMA's config), at its own batch on a GPU."""
    import json

    import torch

    from bench import doctor, doctor_inputs
    from bench.grid import load_grid

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(f"name: g\ndefaults:\n  data: {{task: breastmnist}}\n  vit: {{arch: tiny, depth: 2}}\n"
                         f"  booster: {{source: {tiny_llm('llama')}, layer: -1}}\nvariants:\n"
                         "  baseline: {booster.variant: baseline, data.size: 28, train.batch_size: 8}\n"
                         "  rllm: {booster.variant: rllm, data.size: 64, train.batch_size: 16}\nseeds: [0]\n")
    grid = load_grid(str(grid_file))
    cfg, what = doctor_inputs.grid_step(grid, tmp_path / "gpu", gpu=True)
    assert (cfg.label, cfg.data.size, cfg.train.batch_size, cfg.booster.init) == ("rllm", 64, 16, "random")
    hidden = json.loads((tiny_llm("llama") / "config.json").read_text())["hidden_size"]
    assert json.loads((Path(cfg.booster.source) / "config.json").read_text())["hidden_size"] == hidden
    assert "grid g's heaviest run (rllm: breastmnist@64" in what and "batch 16" in what
    tmp = tmp_path / "cpu"
    tmp.mkdir()
    speed, memory = doctor.paper_step(torch.device("cpu"), doctor.Options(grid=str(grid_file)), tmp, lambda s: None,
                                      grid)
    assert speed.status == "ok" and "grid g's heaviest run (rllm: breastmnist@64" in speed.detail, speed.detail
    assert "batch 1 (its own 16 on a GPU)" in speed.detail and "at batch 1)" in memory.detail, memory.detail


def test_doctor_refuses_a_bad_grid_before_any_work(capsys, monkeypatch):
    """Issue 34 item 13e: `--grid nosuchgrid` is one line and exit 2 before the paper-mode step."""
    from bench import doctor

    def no_work(*a, **k):
        raise AssertionError("the paper step ran before the grid was checked")

    monkeypatch.setattr(doctor, "paper_step", no_work)
    assert cli.main(["doctor", "--quick", "--grid", "nosuchgrid"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "unknown grid 'nosuchgrid'" in err and "[" not in out


def test_doctor_checks_slurm_through_sinfo(tmp_path, monkeypatch):
    """(Against a real cluster, with sbatch --test-only: tests/test_slurm.py.)"""
    from bench import doctor

    monkeypatch.setenv("PATH", str(tmp_path))
    assert doctor.backend(doctor.Options(backend="slurm")).status == "FAIL"  # no sinfo on PATH
    assert doctor.backend(doctor.Options(backend="dask")).status == "FAIL"  # no scheduler given


def test_doctor_option_mistakes_and_a_missing_gpu_are_one_line(capsys):
    assert cli.main(["doctor", "--batch", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch must be >= 1" in err
    from bench import doctor

    checks = doctor.run_checks(doctor.Options(device="cuda:7"), say=lambda s: None)
    assert [c.status for c in checks] == ["FAIL"] and "cuda:7" in checks[0].detail
