"""Private servers that a fault test may stop and start: a redis-server and a PostgreSQL cluster of its own.

The machine's shared Redis and PostgreSQL serve other tests (and other people): a test that simulates an
outage stops one of these instead, on a free port in a temporary directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from services.supervisor import free_port


def _wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not up after {timeout} s")
        time.sleep(0.05)


class RestartableRedis:
    """A redis-server on a fixed free port; `crash()` drops it and its data (like `shutdown nosave`),
    `start()` brings it back empty on the same port."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or "redis-server"
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="isco-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.exceptions.RedisError:
            return False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(self.answers, 20, "redis-server")

    def crash(self) -> None:
        """`redis-cli shutdown nosave`: the server goes, and every queued message with it."""
        try:
            redis.Redis.from_url(self.url).shutdown(nosave=True)
        except redis.exceptions.ConnectionError:
            pass  # the connection drops as the server exits
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb into a temp dir, trust auth, a free port)."""

    def __init__(self) -> None:
        bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bindirs:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bin = Path(bindirs[-1])
        self.dir = Path(tempfile.mkdtemp(prefix="isco-pg-"))
        self.dir.chmod(0o777)
        self.data = self.dir / "data"
        self.port = free_port()
        # PostgreSQL refuses to run as root: run it as the postgres user when we are root
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*self.as_user, str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def answers(self) -> bool:
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
            capture_output=True,
        )
        return result.returncode == 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.as_user, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "synchronous_commit=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        _wait(self.answers, 60, "PostgreSQL")

    def stop(self, cleanup: bool = False) -> None:
        """Fast shutdown (SIGINT): open connections are cut, as when the server goes down."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if cleanup:
            shutil.rmtree(self.dir, ignore_errors=True)
