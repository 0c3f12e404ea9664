"""A throwaway PostgreSQL cluster on 127.0.0.1 for the tests that need a real database server (bench tune's
RDB storage, and a database dropped mid-study). Skips when psycopg2 or the server binaries are missing."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    """A local TCP port nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    url: str
    ctl: list[str]  # pg_ctl with the cluster's folder and log
    start_args: list[str]

    def stop(self) -> None:
        """An immediate stop: every connection dropped, as a crashed or restarted server."""
        subprocess.run([*self.ctl, "-m", "immediate", "stop"], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        subprocess.run([*self.ctl, *self.start_args], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    import psycopg2  # noqa: F401 - the test extra's driver for PostgreSQL URLs: a missing one is a broken install
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    if not initdb:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql; .ci/run installs it)")
    bindir = Path(initdb).parent
    data = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    cluster = Cluster(
        url=f"postgresql://bench@127.0.0.1:{port}/postgres",
        ctl=[*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-t", "60"],
        start_args=["-o", f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={data} -c fsync=off",
                    "start"])
    try:
        try:
            subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-U", "bench", "--auth=trust",
                            "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
            cluster.start()
        except subprocess.CalledProcessError as e:
            pytest.fail(f"could not start PostgreSQL: {e.stderr.decode(errors='replace')[-500:]}")
        yield cluster
    finally:
        subprocess.run([*cluster.ctl, "-m", "immediate", "stop"], check=False, capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)
