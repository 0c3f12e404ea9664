"""A real single-node SLURM cluster (munged, slurmctld, slurmd) in a temp folder, for the SLURM tests.

Debian's slurm-wlm and munge packages (installed by .ci/run); run as root, the daemons as root, no
cgroups (proctrack/linuxproc, task/none), the node's real hostname, CPUs and memory from `slurmd -C`.
Clients (sbatch, squeue, scancel, dask-jobqueue) find it through $SLURM_CONF.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def why_not() -> str | None:
    """Why this machine cannot start the test cluster, or None."""
    missing = [d for d in DAEMONS if not shutil.which(d, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run does)"
    if os.geteuid() != 0:
        return "the single-node SLURM test cluster runs its daemons as root; run the tests as root (CI does)"
    return None


def _node() -> dict:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    return dict(kv.split("=", 1) for kv in out.split())


def _sbin(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


@contextlib.contextmanager
def slurm_cluster(base: Path):
    """Start munged, slurmctld and slurmd under `base`; yield the environment for clients; stop them all."""
    base.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool", "munge"):
        (base / d).mkdir(exist_ok=True)
    os.chmod(base / "munge", 0o700)
    key = base / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = base / "munge" / "munge.sock"
    node = _node()
    conf = base / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=benchtest",
        f"SlurmctldHost={node['NodeName']}",
        "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
        f"StateSaveLocation={base / 'state'}", f"SlurmdSpoolDir={base / 'spool'}",
        f"SlurmctldPidFile={base / 'slurmctld.pid'}", f"SlurmdPidFile={base / 'slurmd.pid'}",
        f"SlurmctldLogFile={base / 'slurmctld.log'}", f"SlurmdLogFile={base / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none",
        "SwitchType=switch/none", "MailProg=/bin/true", "SlurmctldTimeout=30", "SlurmdTimeout=30",
        "InactiveLimit=0", "KillWait=5", "MinJobAge=30",
        f"NodeName={node['NodeName']} CPUs={node['CPUs']} RealMemory={node['RealMemory']} State=UNKNOWN",
        f"PartitionName=debug Nodes={node['NodeName']} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
        "",
    ]))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    procs = []
    try:
        procs.append(subprocess.Popen([_sbin("munged"), "-F", "--force", f"--key-file={key}", f"--socket={sock}",
                                       f"--pid-file={base / 'munge' / 'munged.pid'}", f"--seed-file={base / 'munge' / 'seed'}",
                                       f"--log-file={base / 'munge' / 'munged.log'}"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait(lambda: sock.exists(), procs, "munged", base / "munge" / "munged.log")
        procs.append(subprocess.Popen([_sbin("slurmctld"), "-D", "-i", "-f", str(conf)], env=env,
                                      stdout=open(base / "slurmctld.out", "w"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([_sbin("slurmd"), "-D", "-f", str(conf)], env=env,
                                      stdout=open(base / "slurmd.out", "w"), stderr=subprocess.STDOUT))

        def idle() -> bool:
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return r.returncode == 0 and r.stdout.strip() in ("idle", "mix", "alloc")

        _wait(idle, procs, "slurmctld/slurmd", base / "slurmctld.log", timeout=60)
        yield env
    finally:
        if any(p.poll() is None for p in procs[1:]):
            subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def _wait(cond, procs, what: str, log: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
    raise RuntimeError(f"{what} did not start; its log ends:\n{tail}")
