"""Which rows a coder walks through: a finished job's review queue, and the audit sample of its auto-coded
rows.

A job's rows are read from its result file once and kept for recently used jobs (reading a large result on
every keystroke would be slow), keyed by the result file and its modification time, so a rewritten result is
read again. The audit sample is seeded (`shared.review.audit.audit_key`): the same job shows the same rows.
"""

from __future__ import annotations

import heapq
import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Generic, TypeVar

from cachetools import LRUCache, cached
from fastapi import Depends, HTTPException, Request
from starlette.datastructures import URL

from shared.db.tables import Job, ReviewDecision
from shared.review.audit import AUDIT_MAX_ROWS, audit_key, audit_size
from shared.review.results import ResultCounts, ResultRow, count_result, iter_result_rows

QUEUE = "queue"
AUDIT = "audit"
QUEUES_KEPT = 16  # jobs whose rows are kept (each up to its queue and `AUDIT_MAX_ROWS` audit rows)
COUNTS_KEPT = 512  # jobs whose counts are kept, for the job list

EXPIRED = HTTPException(410, detail={"error": "expired", "message": "the result file is gone"})


@dataclass
class JobQueue:
    """What the row pages need of a finished job: the review queue, the audit pool and the counts."""

    rows: list[ResultRow]  # the rows in the review queue, in order
    counts: ResultCounts
    # auto-coded rows in audit order (`audit_key`), the first `AUDIT_MAX_ROWS` of them
    audit_pool: list[ResultRow] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return self.counts.total_rows

    @property
    def auto_coded(self) -> int:
        return self.counts.auto_coded

    @property
    def failed(self) -> int:
        return self.counts.failed

    def audit_sample(self, size: int) -> list[ResultRow]:
        """The audit sample of `size` rows, in row order."""
        return sorted(self.audit_pool[:size], key=lambda r: r.number)

    def decidable_row(self, number: int) -> ResultRow | None:
        """A row of the review queue, or an auto-coded row a coder checks (one the audit can sample)."""
        return next((r for r in self.rows if r.number == number), None) or next(
            (r for r in self.audit_pool if r.number == number), None
        )


def read_queue(job: Job) -> JobQueue:
    """One pass over the result: the queue rows, the counts, and the auto-coded rows with the smallest audit
    keys (a bounded heap, so a large job's auto-coded rows are not all kept)."""
    rows: list[ResultRow] = []
    pool: list[tuple[int, int, ResultRow]] = []  # (-key, -number, row): a max-heap on the key
    total = failed = auto = 0
    queue_numbers = array("L")
    for row in iter_result_rows(job):
        total += 1
        if row.in_queue:
            rows.append(row)
            queue_numbers.append(row.number)
        elif row.row_error:
            failed += 1
        else:
            auto += 1
            item = (-audit_key(job.id, row.number), -row.number, row)
            if len(pool) < AUDIT_MAX_ROWS:
                heapq.heappush(pool, item)
            elif item > pool[0]:
                heapq.heapreplace(pool, item)
    counts = ResultCounts(total, auto, failed, queue_numbers)
    ordered = [row for _key, _number, row in sorted(pool, reverse=True)]
    return JobQueue(rows, counts, ordered)


T = TypeVar("T")


def result_key(job: Job) -> tuple[str, float]:
    """A job's result file and its modification time; 410 when the file is gone (expired)."""
    path = Path(job.result_path or "")
    if not path.is_file():
        raise EXPIRED
    return str(path), path.stat().st_mtime


class ResultCache(Generic[T]):
    """Something read from a job's result file, kept for the `size` most recently used results."""

    def __init__(self, read: Callable[[Job], T], size: int):
        self._read = read
        self._entries: LRUCache[tuple[str, float], T] = LRUCache(maxsize=size)
        self._lock = threading.Lock()  # routes run in the thread pool
        remember = cached(self._entries, key=result_key, lock=self._lock)
        self.get: Callable[[Job], T] = remember(self._read_result)

    def _read_result(self, job: Job) -> T:
        try:
            return self._read(job)
        except FileNotFoundError:  # removed between the key and the read
            raise EXPIRED from None

    def peek(self, job: Job) -> T | None:
        """The kept value, without reading the file."""
        key = result_key(job)
        with self._lock:
            return self._entries.get(key)


@dataclass
class ReviewCaches:
    """The review page's per-process caches (one per app, made in `create_app`)."""

    queues: ResultCache[JobQueue] = field(default_factory=lambda: ResultCache(read_queue, QUEUES_KEPT))
    counts: ResultCache[ResultCounts] = field(default_factory=lambda: ResultCache(count_result, COUNTS_KEPT))

    def job_counts(self, job: Job) -> ResultCounts:
        """A job's counts, from an open queue when there is one (no second read of the file)."""
        opened = self.queues.peek(job)
        return opened.counts if opened is not None else self.counts.get(job)


def get_review_caches(request: Request) -> ReviewCaches:
    caches: ReviewCaches = request.app.state.review_caches
    return caches


ReviewCachesDep = Annotated[ReviewCaches, Depends(get_review_caches)]


@dataclass(frozen=True)
class RowList:
    """The rows one view walks through: the review queue, or an audit sample of `audit_rows` rows."""

    mode: str  # QUEUE or AUDIT
    rows: list[ResultRow]
    audit_rows: int | None = None

    def url(self, request: Request, job: Job, number: int | None = None) -> URL:
        if self.mode == AUDIT:
            base = request.url_for("review_audit", job_id=job.id).include_query_params(rows=self.audit_rows)
            return base.include_query_params(row=number) if number else base
        base = request.url_for("review_job", job_id=job.id)
        return base.include_query_params(row=number) if number else base

    def next_undecided(self, decisions: dict[int, ReviewDecision], after: int = 0) -> int | None:
        numbers = [r.number for r in self.rows if r.number not in decisions]
        later = [n for n in numbers if n > after]
        candidates = later or numbers
        return candidates[0] if candidates else None


def queue_list(queue: JobQueue) -> RowList:
    return RowList(QUEUE, queue.rows)


def audit_list(queue: JobQueue, rows: int | None, share: float | None) -> RowList:
    """The audit sample of `rows` rows, or `share` percent of the auto-coded rows (default: the audit's)."""
    size = audit_size(queue.auto_coded, share / 100 if share is not None else None, rows)
    return RowList(AUDIT, queue.audit_sample(size), size)
