"""Test support for the job machinery: a real Redis, real Celery worker processes, a registered tiny model.

Redis: ISCO_TEST_REDIS_URL (CI: 127.0.0.1:6379 db 15) when reachable, else a private `redis-server` on a free
port. Every test session uses its own queue names, so parallel runs on one Redis do not take each other's
tasks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from services.supervisor import signal_group, spawn, stop_process
from shared.db.session import session_scope
from shared.db.tables import ModelStatus, ModelVersion, utcnow
from shared.settings import REPO_ROOT
from tests.conftest import IN_CI, REDIS_URL

SESSION_TAG = uuid.uuid4().hex[:8]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.exceptions.RedisError:
        return False


class PrivateRedis:
    """A throwaway redis-server on a free port (no persistence)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="isco-redis-")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 20
        while not redis_reachable(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def register_best(db_url: str, model_dir: Path, version: str) -> None:
    """Record a ready model version and make it the best (what a training run would have done)."""
    with session_scope(db_url) as session:
        session.query(ModelVersion).update({ModelVersion.is_best: False})
        session.add(
            ModelVersion(
                version=version,
                path=str(model_dir),
                base_model="tiny-bert",
                status=ModelStatus.ready,
                is_best=True,
                promoted_at=utcnow(),
            )
        )


def celery_worker_command(queue: str, name: str = "w", beat_schedule: Path | None = None) -> list[str]:
    """The worker command line the tests use (`-B`: with embedded beat, i.e. the job reconciler)."""
    cmd = [
        sys.executable, "-m", "celery", "-A", "services.worker.celery_app", "worker",
        "-Q", queue, "--concurrency", "1", "--pool", "prefork", "--loglevel", "INFO",
        "--hostname", f"{name}-{SESSION_TAG}-{uuid.uuid4().hex[:4]}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    if beat_schedule is not None:
        cmd += ["-B", "--schedule", str(beat_schedule)]
    return cmd


class CeleryWorker:
    """`celery -A services.worker.celery_app worker` as a real subprocess in its own process group, started
    and stopped the way the supervisor of `make run` does it (services/supervisor.py)."""

    def __init__(self, env: dict[str, str], queue: str, log_path: Path, name: str = "w", beat: bool = False):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        schedule = log_path.with_suffix(".beat") if beat else None
        self.proc = spawn(
            celery_worker_command(queue, name, schedule),
            env={**os.environ, **env},
            cwd=REPO_ROOT,
            stdout=self.log,
        )

    def wait_ready(self, timeout: float = 90) -> CeleryWorker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery worker exited early:\n{self.tail()}")
            if b" ready." in self.log_path.read_bytes():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"celery worker not ready after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crash or OOM kill would."""
        if self.proc.poll() is None:
            signal_group(self.proc, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, 20)
        self.log.close()


def pool_children(pid: int) -> list[int]:
    """The child processes of `pid` (a Celery worker's pool processes)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def worker_env(settings: Any, queue: str, **extra: Any) -> dict[str, str]:
    """Environment for a worker subprocess that shares the test's data dir, DB and Redis."""
    env = {
        "ISCO_ENV": "test",
        "ISCO_DATA_DIR": str(settings.data_dir),
        "ISCO_DATABASE_URL": settings.database_url,
        "ISCO_REDIS_URL": settings.redis_url,
        "ISCO_JOB_QUEUE": queue,
        "ISCO_WORKER_TYPE": "cpu",
        "ISCO_TORCH_THREADS": "1",
        "ISCO_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({f"ISCO_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def wait_for(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def purge_queue(redis_url: str, queue: str) -> None:
    """Remove a test queue and kombu's bindings for it (the names are unique to this session)."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"*{queue}*"))
    if keys:
        client.delete(*keys)


def iter_unique_rows(n: int) -> Iterator[str]:
    """Distinct (title, duties) pairs, so that deduplication cannot shorten a job."""
    titles = ["nurse", "welder", "teacher", "accountant", "driver", "baker", "plumber", "clerk"]
    for i in range(n):
        yield f"{titles[i % len(titles)]} {i},does task number {i},{i}"


@pytest.fixture(scope="session")
def test_redis_url() -> Iterator[str]:
    """The CI Redis (db 15) when reachable; otherwise a private redis-server for this session."""
    if redis_reachable(REDIS_URL):
        yield REDIS_URL
        return
    if IN_CI:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    private = PrivateRedis()
    try:
        yield private.url
    finally:
        private.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-jobs-1", "tiny-jobs-1")
