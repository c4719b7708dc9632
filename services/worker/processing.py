"""Processing one coding job: stream the input in chunks through the shared Predictor, write each chunk's
results idempotently, record progress per chunk on the job row, resume after a crash, honour cancellation.

No Celery here (services/worker/tasks.py is the thin task around it), so tests can drive it directly.

Exactly-once results: chunk n is written to `parts/<n>.part` atomically (`shared.files`), and only then
does the row's `chunks_done` move to n+1 (a conditional UPDATE that also checks the job is still running and
no one else advanced it). A worker killed at any point leaves either a complete part or none; its successor
skips `chunks_done` chunks of input and rewrites any later part. The final result is the header plus the
parts in order, again written through a rename before the row says `succeeded`.

One worker at a time: a lease in Redis (`shared.jobs.leases.Lease`), renewed by a heartbeat thread every
`job_heartbeat_s` and lapsing `job_lock_ttl_s` after its holder stops, keeps a redelivered task from running a
job whose first worker is still alive. A task that finds the lease held waits for it to lapse (its holder
died: this task takes over) or ends (the holder is alive and renewing; if it dies later, the reconciler
re-sends the job). Row coding is `shared.coding`, the engine `isco predict` uses too.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from services.worker.settings import WorkerSettings
from shared.coding import EMPTY_RECORD, InputRow, Memo, chunks, code_rows, csv_rows
from shared.csvio.reading import CsvFormatError, read_layout
from shared.csvio.writing import header_line, result_header, result_row, writer
from shared.db.session import session_factory
from shared.db.tables import Job, JobStatus, utcnow
from shared.files import atomic_open, atomic_write
from shared.holder import PredictorHolder
from shared.jobs.files import delete_job_files, part_path, parts_dir, result_path
from shared.jobs.leases import Lease, clear_sent
from shared.jobs.state import advance, fail, finish, restart_progress, start
from shared.predictor import Predictor
from shared.schemas import Prediction, PredictOptions

log = logging.getLogger(__name__)

__all__ = ["EMPTY_RECORD", "JobProcessor", "LeaseHeld", "Memo", "code_rows"]


class LeaseHeld(Exception):
    """Another live worker holds the job (it renewed its lease while we waited)."""


class JobGone(Exception):
    """The job's input is missing (expired or deleted): the job cannot run."""


class Heartbeat:
    """Renews a lease every `interval_s` in a daemon thread while a job runs.

    `lost` is set when the lease was taken over or vanished (e.g. Redis restarted empty); the job loop then
    re-takes it if it is free, or stops. With `retake` the heartbeat re-takes a vanished lease itself (a
    training run cannot stop half-way to do it). Redis errors are retried at the next beat: the lease lapses
    on its own if they last.
    """

    def __init__(self, lease: Lease, interval_s: float, retake: bool = False):
        self.lease = lease
        self.interval_s = interval_s
        self.retake = retake
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{lease.key}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.lease.renew() and not (self.retake and self.lease.acquire()):
                    self.lost.set()
            except Exception as exc:  # Redis down: keep trying; the lease lapses by itself if it stays down
                log.warning("lease %s: heartbeat failed: %s", self.lease.key, exc)


# ----------------------------------------------------------------------------------------------------
# Input and output formats
# ----------------------------------------------------------------------------------------------------


class JobFormat:
    """How one kind of job reads its input and writes results (csv: CSV in, CSV out; batch: JSON lines)."""

    def __init__(self, job: Job):
        self.job = job
        self.path = Path(job.input_path)
        if not job.input_path or not self.path.is_file():
            raise JobGone("the job's input file is missing (it expired or was deleted)")
        self.layout = read_layout(self.path) if job.kind == "csv" else None

    def rows(self) -> Iterator[InputRow]:
        if self.layout is not None:
            yield from csv_rows(self.path, self.layout)
        else:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield InputRow(None, json.loads(line))

    def header(self) -> str:
        if self.layout is None:
            return ""
        return header_line(result_header(self.layout.header), self.layout.delimiter)

    def render(self, rows: Sequence[InputRow], outcomes: Sequence[Prediction | str]) -> str:
        if self.layout is not None:
            out = io.StringIO()
            w = writer(out, self.layout.delimiter)
            for row, outcome in zip(rows, outcomes, strict=True):
                assert row.cells is not None
                w.writerow(result_row(row.cells, outcome))
            return out.getvalue()
        lines = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, str):
                lines.append(json.dumps({"id": row.record.get("id"), "error": outcome}))
            else:
                lines.append(outcome.model_copy(update={"id": row.record.get("id")}).model_dump_json())
        return "\n".join(lines) + "\n" if lines else ""


# ----------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    status: str  # the job's status after this run, or "held" / "lost-lease" / "missing"
    chunks_run: int = 0


class JobProcessor:
    """Runs jobs in one worker process (one at a time)."""

    def __init__(
        self, settings: WorkerSettings, predictors: PredictorHolder | None = None, redis_client: Any = None
    ):
        self.settings = settings
        # the model of this worker process: the best for new jobs, the pinned version for resumed ones
        self.predictors = predictors or PredictorHolder(settings.predictor_settings())
        self.redis = redis_client
        self.sessions = session_factory(settings.db_url)

    def _redis(self) -> Any:
        if self.redis is None:
            import redis

            self.redis = redis.Redis.from_url(self.settings.redis_url)
        return self.redis

    def run(self, job_id: str) -> RunResult:
        """Run (or resume) a job to its end. Raises LeaseHeld when a live worker holds it."""
        redis_client = self._redis()
        clear_sent(redis_client, job_id)
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                log.warning("job %s: no such job (deleted?)", job_id)
                return RunResult("missing")
            if JobStatus(job.status).finished:
                if job.status == JobStatus.cancelled:
                    self._cleanup_cancelled(job)
                return RunResult(job.status)
            lease = Lease(redis_client, job_id, self.settings.job_lock_ttl_s)
            if not self._acquire(lease):
                raise LeaseHeld(job_id)
            try:
                with Heartbeat(lease, self.settings.job_heartbeat_s) as heartbeat:
                    return self._run_leased(session, job, lease, heartbeat)
            finally:
                try:
                    lease.release()
                except Exception as exc:  # the lease lapses by itself
                    log.warning("job %s: could not release the lease: %s", job_id, exc)

    def _acquire(self, lease: Lease) -> bool:
        """Take the lease, waiting up to one lease time for a dead holder's lease to lapse (a task redelivered
        after its worker died finds the old lease still there). False: the holder kept renewing it."""
        deadline = time.monotonic() + self.settings.job_lock_ttl_s + self.settings.job_heartbeat_s
        while not lease.acquire():
            if time.monotonic() > deadline:
                return False
            time.sleep(min(1.0, self.settings.job_heartbeat_s))
        return True

    def _fail(self, session: Session, job: Job, error: str) -> RunResult:
        fail(session, job.id, error, self.settings)
        session.commit()
        shutil.rmtree(parts_dir(self.settings, job.id), ignore_errors=True)
        log.error("job %s failed: %s", job.id, error)
        return RunResult(JobStatus.failed)

    def _cleanup_cancelled(self, job: Job) -> None:
        delete_job_files(self.settings, job)

    def _start(self, session: Session, job: Job) -> Predictor:
        """Mark the job running and pick its model: the pinned version when resuming, else the best."""
        values: dict[str, Any] = {}
        predictor = self.predictors.pinned(job.model_version) if job.model_version else None
        if job.model_version and predictor is None:
            # the pinned model is gone: start over with the current best rather than mix two models
            log.warning("job %s: model %s is gone; restarting with the best model", job.id, job.model_version)
            shutil.rmtree(parts_dir(self.settings, job.id), ignore_errors=True)
            restart_progress(session, job.id)
        if predictor is None:
            predictor = self.predictors.best()
        options = dict(job.options or {})
        # the chunk size is fixed for the job's life: resuming skips chunks_done x chunk_rows rows
        options.setdefault("chunk_rows", self.settings.job_chunk_rows)
        values.update(options=options, model_version=predictor.version)
        if job.started_at is None:
            values["started_at"] = utcnow()
        start(session, job.id, **values)  # conditional: a cancel that landed since we read must win
        session.commit()
        session.refresh(job)
        return predictor

    def _run_leased(self, session: Session, job: Job, lease: Lease, heartbeat: Heartbeat) -> RunResult:
        try:
            fmt = JobFormat(job)
        except (JobGone, CsvFormatError) as exc:
            return self._fail(session, job, str(exc))
        predictor = self._start(session, job)
        if job.status != JobStatus.running:  # cancelled between our read and our update
            return self._interrupted(session, job)
        options = PredictOptions.model_validate(
            {k: v for k, v in job.options.items() if k in ("top_k", "thresholds")}
        )
        chunk_rows = int(job.options["chunk_rows"])
        parts = parts_dir(self.settings, job.id)
        parts.mkdir(parents=True, exist_ok=True)
        memo = Memo(self.settings.job_memo_entries)
        start_chunk = job.chunks_done
        if start_chunk:
            log.info("job %s: resuming at chunk %d (%d rows done)", job.id, start_chunk, job.rows_done)
        rows = islice(fmt.rows(), start_chunk * chunk_rows, None)
        ran = 0
        for index, chunk in enumerate(chunks(rows, chunk_rows), start=start_chunk):
            outcomes = code_rows(chunk, predictor, options, memo)
            atomic_write(part_path(self.settings, job.id, index), fmt.render(chunk, outcomes))
            failed = sum(1 for o in outcomes if isinstance(o, str))
            advanced = advance(session, job.id, index, len(chunk), failed)
            session.commit()
            ran += 1
            if not advanced:
                return self._interrupted(session, job)
            if heartbeat.lost.is_set():
                # the lease vanished (Redis restarted empty) or lapsed: carry on only if no one else took it
                if not lease.acquire():
                    log.warning("job %s: lease lost after chunk %d; another worker carries on", job.id, index)
                    return RunResult("lost-lease", ran)
                heartbeat.lost.clear()
        return self._finish(session, job, fmt, ran)

    def _interrupted(self, session: Session, job: Job) -> RunResult:
        session.refresh(job)
        if job.status == JobStatus.cancelled:
            log.info("job %s cancelled after %d rows", job.id, job.rows_done)
            self._cleanup_cancelled(job)
            return RunResult(JobStatus.cancelled)
        log.warning("job %s: progress moved elsewhere (status %s); stopping", job.id, job.status)
        return RunResult(job.status)

    def _finish(self, session: Session, job: Job, fmt: JobFormat, ran: int) -> RunResult:
        session.refresh(job)
        if job.status != JobStatus.running:
            return self._interrupted(session, job)
        result = result_path(self.settings, job.id, job.kind)
        with atomic_open(result) as out:
            out.write(fmt.header())
            for index in range(job.chunks_done):
                with open(part_path(self.settings, job.id, index), encoding="utf-8", newline="") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        done = finish(session, job.id, result, self.settings)
        session.commit()
        if not done:
            return self._interrupted(session, job)
        shutil.rmtree(parts_dir(self.settings, job.id), ignore_errors=True)
        session.refresh(job)
        log.info(
            "job %s succeeded: %d rows (%d failed), model %s",
            job.id,
            job.rows_done,
            job.rows_failed,
            job.model_version,
        )
        return RunResult(JobStatus.succeeded, ran)
