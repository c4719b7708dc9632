"""Processing one coding job: stream the input in chunks through the shared Predictor, write each chunk's
results idempotently, record progress per chunk on the job row, resume after a crash, honour cancellation.

No Celery here (services/worker/tasks.py is the thin task around it), so tests can drive it directly.

Exactly-once results: chunk n is written to `parts/<n>.part` through a temp file and a rename, and only then
does the row's `chunks_done` move to n+1 (a conditional UPDATE that also checks the job is still running and
no one else advanced it). A worker killed at any point leaves either a complete part or none; its successor
skips `chunks_done` chunks of input and rewrites any later part. The final result is the header plus the
parts in order, again written through a rename before the row says `succeeded`.

One worker at a time: a lease in Redis (renewed per chunk, expiring `job_lock_ttl_s` after the holder's last
chunk) keeps a redelivered task from running a job whose first worker is still alive.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session

from services.worker.settings import WorkerSettings
from shared import csvio, jobs
from shared.db.session import session_factory
from shared.db.tables import Job, JobStatus, utcnow
from shared.schemas import JobRecord, Prediction, PredictOptions

log = logging.getLogger(__name__)

EMPTY_RECORD = "job_title and duties_description are both empty"


class LeaseHeld(Exception):
    """Another live worker holds the job; try again after the lease could have lapsed."""


class JobGone(Exception):
    """The job's input is missing (expired or deleted): the job cannot run."""


# ----------------------------------------------------------------------------------------------------
# Lease
# ----------------------------------------------------------------------------------------------------

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class Lease:
    """A per-job lock in Redis with a time to live; only its holder (by random token) renews or frees it."""

    def __init__(self, redis_client: Any, job_id: str, ttl_s: float):
        self.redis = redis_client
        self.key = f"isco:job-lease:{job_id}"
        self.ttl_ms = int(ttl_s * 1000)
        self.token = secrets.token_hex(16)

    def acquire(self) -> bool:
        return bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        self.redis.eval(_RELEASE, 1, self.key, self.token)


# ----------------------------------------------------------------------------------------------------
# Predictor per worker process
# ----------------------------------------------------------------------------------------------------


class PredictorCache:
    """The model of this worker process: loaded once, swapped when a job needs another version.

    Jobs pin the version they started with (a resumed job keeps its model); new jobs take the registry's
    best, so a newly promoted model is picked up without restarting the worker.
    """

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.current: Any = None  # shared.predictor.Predictor (imported lazily: it pulls in torch)

    def _load(self, model_dir: Path) -> Any:
        from shared.predictor import Predictor, model_dir_version

        if self.current is not None and self.current.version == model_dir_version(model_dir):
            return self.current
        self.current = None  # free the old model before loading the next one
        self.current = Predictor.load(model_dir, self.settings.predictor_settings())
        return self.current

    def best(self) -> Any:
        """The predictor for new jobs: the configured model_dir, else the registry's best."""
        from shared.predictor import resolve_model_dir

        model_dir = resolve_model_dir(self.settings)
        if model_dir is None:
            raise RuntimeError("no model: the registry has no best model and ISCO_MODEL_DIR is not set")
        return self._load(Path(model_dir))

    def pinned(self, version: str) -> Any | None:
        """The predictor for `version`, or None when that version is no longer available."""
        if self.current is not None and self.current.version == version:
            return self.current
        from shared.registry import RegistryError, model_dir_for

        explicit = self.settings.model_dir
        try:
            model_dir = Path(explicit) if explicit else model_dir_for(self.settings, version)
        except RegistryError:
            return None
        predictor = self._load(model_dir)
        return predictor if predictor.version == version else None


# ----------------------------------------------------------------------------------------------------
# Input and output formats
# ----------------------------------------------------------------------------------------------------


@dataclass
class InputRow:
    cells: list[str] | None  # CSV cells (passed through); None for batch records
    record: dict[str, Any]  # id, job_title, duties_description
    error: str | None = None


class JobFormat:
    """How one kind of job reads its input and writes results (csv: CSV in, CSV out; batch: JSON lines)."""

    def __init__(self, job: Job):
        self.job = job
        self.path = Path(job.input_path)
        if not job.input_path or not self.path.is_file():
            raise JobGone(f"the job's input file is missing ({job.input_path or 'expired'})")
        self.layout = csvio.read_layout(self.path) if job.kind == "csv" else None

    def rows(self) -> Iterator[InputRow]:
        if self.layout is not None:
            layout = self.layout
            for row in csvio.iter_rows(self.path, layout):
                title, duties = layout.texts(row.cells)
                yield InputRow(row.cells, {"job_title": title, "duties_description": duties}, row.error)
        else:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield InputRow(None, json.loads(line))

    def header(self) -> str:
        if self.layout is None:
            return ""
        return csvio.header_line(csvio.result_header(self.layout.header), self.layout.delimiter)

    def render(self, rows: Sequence[InputRow], outcomes: Sequence[Prediction | str]) -> str:
        if self.layout is not None:
            out = io.StringIO()
            w = csvio.writer(out, self.layout.delimiter)
            for row, outcome in zip(rows, outcomes, strict=True):
                assert row.cells is not None
                w.writerow(csvio.result_row(row.cells, outcome))
            return out.getvalue()
        lines = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, str):
                lines.append(json.dumps({"id": row.record.get("id"), "error": outcome}))
            else:
                lines.append(outcome.model_copy(update={"id": row.record.get("id")}).model_dump_json())
        return "\n".join(lines) + "\n" if lines else ""


def chunks(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def write_atomically(path: Path, text: str) -> None:
    """Write to a temp name in the same directory, fsync, rename: readers see all of it or nothing."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# Coding a chunk
# ----------------------------------------------------------------------------------------------------


class Memo:
    """Results of (title, duties) pairs already coded in this job: repeated rows cost nothing."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.data: OrderedDict[tuple[str, str], Prediction] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Prediction | None:
        return self.data.get(key)

    def put(self, key: tuple[str, str], value: Prediction) -> None:
        if self.max_entries <= 0:
            return
        self.data[key] = value
        if len(self.data) > self.max_entries:
            self.data.popitem(last=False)


def code_rows(
    rows: Sequence[InputRow], predictor: Any, options: PredictOptions, memo: Memo
) -> list[Prediction | str]:
    """A Prediction or a row error for each row; each distinct (title, duties) goes to the model once."""
    outcomes: list[Prediction | str | None] = [None] * len(rows)
    todo: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        if row.error:
            outcomes[i] = row.error
            continue
        title = str(row.record.get("job_title") or "")
        duties = str(row.record.get("duties_description") or "")
        if not title.strip() and not duties.strip():
            outcomes[i] = EMPTY_RECORD
            continue
        key = (title, duties)
        known = memo.get(key)
        if known is not None:
            outcomes[i] = known
        else:
            todo.setdefault(key, []).append(i)
    if todo:
        keys = list(todo)
        records = []
        for title, duties in keys:
            try:
                records.append(JobRecord(job_title=title, duties_description=duties))
            except ValidationError as exc:  # pragma: no cover - empty rows are caught above
                for i in todo[(title, duties)]:
                    outcomes[i] = str(exc.errors()[0]["msg"])
                records.append(JobRecord(job_title="-"))
        for key, prediction in zip(keys, predictor.predict(records, options), strict=True):
            memo.put(key, prediction)
            for i in todo[key]:
                if outcomes[i] is None:
                    outcomes[i] = prediction
    return [o if o is not None else "internal error: no result" for o in outcomes]


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
        self, settings: WorkerSettings, predictors: PredictorCache | None = None, redis_client: Any = None
    ):
        self.settings = settings
        self.predictors = predictors or PredictorCache(settings)
        self.redis = redis_client
        self.sessions = session_factory(settings.db_url)

    def _redis(self) -> Any:
        if self.redis is None:
            import redis

            self.redis = redis.Redis.from_url(self.settings.redis_url)
        return self.redis

    def run(self, job_id: str) -> RunResult:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                log.warning("job %s: no such job (deleted?)", job_id)
                return RunResult("missing")
            if JobStatus(job.status).finished:
                if job.status == JobStatus.cancelled:
                    self._cleanup_cancelled(job)
                return RunResult(job.status)
            lease = Lease(self._redis(), job_id, self.settings.job_lock_ttl_s)
            if not lease.acquire():
                raise LeaseHeld(job_id)
            try:
                return self._run_leased(session, job, lease)
            finally:
                lease.release()

    def _fail(self, session: Session, job: Job, error: str) -> RunResult:
        now = utcnow()
        jobs.transition(
            session,
            job.id,
            JobStatus.failed,
            only_from=jobs.ACTIVE,
            error=error[:10_000],
            finished_at=now,
            expires_at=now + timedelta(hours=self.settings.job_ttl_hours),
        )
        session.commit()
        shutil.rmtree(jobs.parts_dir(self.settings, job.id), ignore_errors=True)
        log.error("job %s failed: %s", job.id, error)
        return RunResult(JobStatus.failed)

    def _cleanup_cancelled(self, job: Job) -> None:
        jobs.delete_job_files(self.settings, job)

    def _start(self, session: Session, job: Job) -> Any:
        """Mark the job running and pick its model: the pinned version when resuming, else the best."""
        values: dict[str, Any] = {}
        predictor = self.predictors.pinned(job.model_version) if job.model_version else None
        if job.model_version and predictor is None:
            # the pinned model is gone: start over with the current best rather than mix two models
            log.warning("job %s: model %s is gone; restarting with the best model", job.id, job.model_version)
            shutil.rmtree(jobs.parts_dir(self.settings, job.id), ignore_errors=True)
            values.update(chunks_done=0, rows_done=0, rows_failed=0)
        if predictor is None:
            predictor = self.predictors.best()
        options = dict(job.options or {})
        # the chunk size is fixed for the job's life: resuming skips chunks_done x chunk_rows rows
        options.setdefault("chunk_rows", self.settings.job_chunk_rows)
        values.update(options=options, model_version=predictor.version, status=JobStatus.running)
        if job.started_at is None:
            values["started_at"] = utcnow()
        # conditional: a cancel that landed since we read the row must win
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status.in_([str(s) for s in jobs.ACTIVE]))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        session.refresh(job)
        return predictor

    def _run_leased(self, session: Session, job: Job, lease: Lease) -> RunResult:
        try:
            fmt = JobFormat(job)
        except (JobGone, csvio.CsvFormatError) as exc:
            return self._fail(session, job, str(exc))
        predictor = self._start(session, job)
        if job.status != JobStatus.running:  # cancelled between our read and our update
            return self._interrupted(session, job)
        options = PredictOptions.model_validate(
            {k: v for k, v in job.options.items() if k in ("top_k", "thresholds")}
        )
        chunk_rows = int(job.options["chunk_rows"])
        parts = jobs.parts_dir(self.settings, job.id)
        parts.mkdir(parents=True, exist_ok=True)
        memo = Memo(self.settings.job_memo_entries)
        start_chunk = job.chunks_done
        if start_chunk:
            log.info("job %s: resuming at chunk %d (%d rows done)", job.id, start_chunk, job.rows_done)
        rows = islice(fmt.rows(), start_chunk * chunk_rows, None)
        ran = 0
        for index, chunk in enumerate(chunks(rows, chunk_rows), start=start_chunk):
            outcomes = code_rows(chunk, predictor, options, memo)
            write_atomically(jobs.part_path(self.settings, job.id, index), fmt.render(chunk, outcomes))
            failed = sum(1 for o in outcomes if isinstance(o, str))
            advanced = cast(
                CursorResult[Any],
                session.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.status == JobStatus.running, Job.chunks_done == index)
                    .values(
                        chunks_done=index + 1,
                        rows_done=Job.rows_done + len(chunk),
                        rows_failed=Job.rows_failed + failed,
                    )
                    .execution_options(synchronize_session=False)
                ),
            ).rowcount
            session.commit()
            ran += 1
            if not advanced:
                return self._interrupted(session, job)
            if not lease.renew() and not lease.acquire():
                log.warning("job %s: lease lost after chunk %d; another worker carries on", job.id, index)
                return RunResult("lost-lease", ran)
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
        result = jobs.result_path(self.settings, job.id, job.kind)
        tmp = result.with_name(f"{result.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            out.write(fmt.header())
            for index in range(job.chunks_done):
                with open(jobs.part_path(self.settings, job.id, index), encoding="utf-8", newline="") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, result)
        now = utcnow()
        done = jobs.transition(
            session,
            job.id,
            JobStatus.succeeded,
            only_from=(JobStatus.running,),
            result_path=str(result),
            finished_at=now,
            expires_at=now + timedelta(hours=self.settings.job_ttl_hours),
        )
        session.commit()
        if not done:
            return self._interrupted(session, job)
        shutil.rmtree(jobs.parts_dir(self.settings, job.id), ignore_errors=True)
        session.refresh(job)
        log.info(
            "job %s succeeded: %d rows (%d failed), model %s",
            job.id,
            job.rows_done,
            job.rows_failed,
            job.model_version,
        )
        return RunResult(JobStatus.succeeded, ran)
