"""Jobs that survive faults: real Celery worker processes (with embedded beat, the reconciler), a private
redis-server, a private PostgreSQL database, a tiny registered model.

Each test starts a 1,500-row job in chunks of 20, injects one fault mid-job, and checks that the job ends
`succeeded` with every row exactly once, in input order. Short lease (10 s), heartbeat (2 s) and reconcile
interval (3 s) keep them fast. Each prints the time from the fault to the job's completion.

- Redis shut down without saving (every queued message lost) and started again empty.
- The worker's main process SIGKILLed: the supervisor (services/supervisor.py) restarts it.
- The pool process running the task SIGKILLed (as the OOM killer would): resumes within 60 s.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from services.supervisor import Child, Console, Supervisor
from services.worker.client import send_job
from shared.db.migrate import upgrade
from shared.db.session import get_engine, session_scope
from shared.db.tables import Job, JobStatus
from shared.jobs.files import input_path
from shared.jobs.leases import lease_holder_pid
from shared.jobs.settings import JobSettings
from shared.jobs.state import create_job
from shared.settings import REPO_ROOT
from tests.conftest import POSTGRES_URL
from tests.faults_support import RestartableRedis
from tests.jobs_support import (  # noqa: F401
    SESSION_TAG,
    CeleryWorker,
    celery_worker_command,
    pool_children,
    register_best,
    tiny_model_dir,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROWS = 1500
FAULT_SETTINGS = {
    "job_chunk_rows": 20,
    "job_lock_ttl_s": 10,
    "job_heartbeat_s": 2,
    "job_reconcile_interval_s": 3,
}


@dataclass
class FaultStack:
    settings: JobSettings
    redis: RestartableRedis
    tmp: Path

    def env(self, queue: str) -> dict[str, str]:
        return worker_env(self.settings, queue, **FAULT_SETTINGS)

    def queue(self) -> str:
        return f"faults-{SESSION_TAG}-{uuid.uuid4().hex[:6]}"

    def submit(self, queue: str, rows: int = ROWS) -> str:
        job_id = f"fault-{uuid.uuid4().hex[:10]}"
        settings = self.settings.model_copy(update={"job_queue": queue})
        path = input_path(settings, job_id, "csv")
        path.write_text(
            "job_title,duties_description,ref\n" + "".join(f"role {i},task {i},{i}\n" for i in range(rows)),
            encoding="utf-8",
        )
        with session_scope(settings.db_url) as session:
            create_job(
                session, job_id=job_id, kind="csv", owner_key_id=None, input_file=path, rows_total=rows,
                options={"top_k": 3}, settings=settings,
            )  # fmt: skip
        send_job(settings, job_id)  # what the gateway does after the commit
        return job_id

    def job(self, job_id: str) -> Job:
        with session_scope(self.settings.db_url) as session:
            job = session.get(Job, job_id)
            assert job is not None
            session.expunge(job)
            return job

    def wait_chunks(self, job_id: str, n: int, timeout: float = 120) -> None:
        wait_for(lambda: self.job(job_id).chunks_done >= n, timeout, 0.05, f"{n} chunks done")

    def finish(self, job_id: str, fault_at: float, what: str, logs: Any, timeout: float = 150) -> float:
        """Wait for the job to end; check every row exactly once, in order; return fault -> completion."""
        chunks_at_fault = self.job(job_id).chunks_done
        resumed_at: float | None = None
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id)).status not in (JobStatus.succeeded, JobStatus.failed):
            if resumed_at is None and job.chunks_done > chunks_at_fault + 1:
                resumed_at = time.monotonic()
            assert time.monotonic() < deadline, f"job stuck: {job.status} {job.rows_done}/{ROWS}\n{logs()}"
            time.sleep(0.1)
        done = time.monotonic()
        assert job.status == JobStatus.succeeded, (job.error, logs())
        assert (job.rows_done, job.rows_failed) == (ROWS, 0)
        assert job.result_path is not None
        rows = list(csv.DictReader(io.StringIO(Path(job.result_path).read_text(encoding="utf-8"))))
        assert [r["ref"] for r in rows] == [str(i) for i in range(ROWS)]  # none missing, none doubled
        resume = (resumed_at or done) - fault_at
        print(
            f"\n{what}: resumed {resume:.1f} s after the fault, "
            f"job complete {done - fault_at:.1f} s after it "
            f"({ROWS - chunks_at_fault * 20} rows left at the fault)"
        )
        return resume


@pytest.fixture(scope="module")
def faults(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,  # noqa: F811
    postgres_server_url: str,
) -> Iterator[FaultStack]:
    """A private PostgreSQL database (on the test server) and a private, restartable redis-server."""
    tmp = tmp_path_factory.mktemp("faults")
    name = f"isco_faults_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(db_url)
    register_best(db_url, tiny_model_dir, "tiny-jobs-1")
    broker = RestartableRedis()
    settings = JobSettings(
        env="test", data_dir=tmp / "data", database_url=db_url, redis_url=broker.url, **FAULT_SETTINGS
    )
    settings.ensure_dirs()
    try:
        yield FaultStack(settings, broker, tmp)
    finally:
        broker.stop()
        get_engine(db_url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_redis_restarted_mid_job(faults: FaultStack) -> None:
    queue = faults.queue()
    worker = CeleryWorker(faults.env(queue), queue, faults.tmp / f"{queue}.log", "redis", beat=True)
    try:
        worker.wait_ready()
        job_id = faults.submit(queue)
        faults.wait_chunks(job_id, 5)
        fault_at = time.monotonic()
        faults.redis.crash()  # `redis-cli shutdown nosave`: the queue and the lease are gone
        time.sleep(1.0)
        faults.redis.start()
        faults.finish(job_id, fault_at, "Redis restarted (nosave)", lambda: worker.tail(8000))
        assert worker.proc.poll() is None, "the worker must ride out the broker restart"
    finally:
        worker.stop()


def test_worker_main_process_killed_is_restarted_by_the_supervisor(faults: FaultStack) -> None:
    queue = faults.queue()
    log_path = faults.tmp / f"{queue}.log"
    console = Console(open(log_path, "w", encoding="utf-8"))  # noqa: SIM115 (closed below)
    supervisor = Supervisor(console, env={**os.environ, **faults.env(queue)}, cwd=REPO_ROOT)
    command = " ".join(celery_worker_command(queue, "main", faults.tmp / f"{queue}.beat"))
    worker = supervisor.start(Child("worker", command, "35", ready_marker=" ready."))
    loop = threading.Thread(target=supervisor.run_until_stopped, daemon=True)

    def logs() -> str:
        console.stream.flush()
        return log_path.read_text(encoding="utf-8")[-8000:]

    try:
        supervisor.wait_until("worker", worker.ready.is_set, 120)
        loop.start()
        job_id = faults.submit(queue)
        faults.wait_chunks(job_id, 5)
        assert worker.proc is not None
        first_pid = worker.proc.pid
        children = pool_children(first_pid)
        fault_at = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)  # the main process only; the supervisor clears its group
        faults.finish(job_id, fault_at, "worker main process SIGKILLed", logs)
        assert worker.restarts >= 1 and worker.proc.pid != first_pid
        assert "exited with code -9" in logs() and "worker restarted" in logs()
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        supervisor.stop_signal = signal.SIGTERM
        if loop.is_alive():
            loop.join(timeout=5)
        supervisor.stop_all(timeout=10)
        console.stream.close()


def test_pool_child_killed_resumes_within_a_minute(faults: FaultStack) -> None:
    queue = faults.queue()
    worker = CeleryWorker(faults.env(queue), queue, faults.tmp / f"{queue}.log", "child", beat=True)
    try:
        worker.wait_ready()
        job_id = faults.submit(queue)
        faults.wait_chunks(job_id, 5)
        child = lease_holder_pid(redis.Redis.from_url(faults.redis.url), job_id)
        assert child in pool_children(worker.proc.pid)
        fault_at = time.monotonic()
        os.kill(child, signal.SIGKILL)
        resume = faults.finish(job_id, fault_at, "pool process SIGKILLed", lambda: worker.tail(8000))
        assert resume < 60
        assert worker.proc.poll() is None
    finally:
        worker.stop()
