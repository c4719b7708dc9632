"""The review workflow: a job's queue of rows that need a human coder, their decisions, and what comes out.

Rows come from the job's result file (CSV jobs: the result CSV; batch jobs: the JSON lines result beside the
input records), so the worker's output is never rewritten. Decisions are rows in the metadata DB: one current
`ReviewDecision` per row plus an append-only `ReviewEvent` for each change (the audit trail). A coder decides
the rows of the review queue, and may check a seeded sample of the auto-coded rows as well (`audit_key`):
which rows are which is read from the result, so a decision needs no kind of its own. The reviewed result
adds `final_code`, `coded_by` and `final_status` at read time; the corrections export is the
`isco train --corrections` layout (job_title, duties_description, corrected_isco_code). Helpers flush; the
caller commits. Nothing here imports the model stack.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import json
import math
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import csvio, jobs
from shared.db.tables import Job, JobStatus, ReviewAction, ReviewDecision, ReviewEvent
from shared.schemas import REVIEW_REASONS, Prediction
from shared.taxonomy import Taxonomy, get_taxonomy

REVIEWED_COLUMNS = ["final_code", "coded_by", "final_status"]
CODED_BY_MODEL = "model"
CODED_BY_REVIEWER = "reviewer"
# Every reason routing gives says the model is not sure of a 4-digit answer, or that the answer is not an
# occupation to code: such a row has no default answer on the review page (the coder picks one).
UNSURE_REASONS = frozenset(REVIEW_REASONS)
STATUS_REASONS = frozenset({"not_an_occupation"})  # student, retired ...: usually uncodable
CORRECTIONS_HEADER = ["job_title", "duties_description", "corrected_isco_code"]
BATCH_CSV_INPUT = ["id", csvio.TITLE, csvio.DUTIES]
BATCH_SHOWN = (csvio.TITLE, csvio.DUTIES, csvio.INDUSTRY)  # a record's fields the row view shows apart
BATCH_INDUSTRY_OPTION = "industry"  # a batch job's option: some record of the batch gave an industry
REVIEWABLE_KINDS = ("csv", "batch")


class ReviewError(ValueError):
    """A decision that cannot be recorded (unknown row, invalid code); the message says why."""


class FinalStatus(enum.StrEnum):
    """What the `final_code` of a reviewed result's row is (the `final_status` column)."""

    auto_coded = "auto_coded"  # the model's code, not routed to review and not checked by a coder
    reviewed = "reviewed"  # a coder kept the model's unit group
    changed = "changed"  # a coder chose another unit group
    uncodable = "uncodable"  # a coder found no code (final_code empty)
    pending = "pending"  # in the review queue, not decided yet (final_code empty)
    failed = "failed"  # the row could not be coded (row_error; final_code empty)


@dataclass(frozen=True)
class Candidate:
    """One of the model's alternatives for a row."""

    code: str
    title: str
    confidence: float | None


@dataclass
class ResultRow:
    """One data row of a job's result, as the review page and the reviewed export see it."""

    number: int  # data rows counted from 1
    job_title: str
    duties_description: str
    isco_code: str  # the model's answer (may be a coarser group, or empty when not coded)
    unit_code: str
    candidates: list[Candidate] = field(default_factory=list)
    needs_review: bool = False
    review_reasons: list[str] = field(default_factory=list)
    row_error: str = ""
    cells: list[str] = field(default_factory=list)  # the row as the result CSV has it
    industry: str = ""  # the employer's industry, when the input gave one
    record: list[tuple[str, str]] = field(default_factory=list)  # the input's other columns (name, value)

    @property
    def in_queue(self) -> bool:
        """Rows a coder settles: those routed to review (a row that failed has nothing to review)."""
        return self.needs_review and not self.row_error

    @property
    def auto_coded(self) -> bool:
        """Rows the model coded alone (not routed to review, not failed): the audit sample's rows."""
        return not self.needs_review and not self.row_error

    @property
    def default_code(self) -> str | None:
        """The code Enter accepts on the review page: the model's own 4-digit answer, unless a review reason
        says the model is not sure of it or the text is no occupation (`UNSURE_REASONS`); else None, and the
        coder must choose. A row routed to review for another reason keeps the model's 4-digit answer."""
        coded_at_unit = len(self.isco_code) == 4 and self.isco_code == self.unit_code
        return self.isco_code if coded_at_unit and not UNSURE_REASONS & set(self.review_reasons) else None

    @property
    def status_answer(self) -> bool:
        """An answer that names a status, not a job (student, retired ...): "uncodable" is the usual code."""
        return bool(STATUS_REASONS & set(self.review_reasons))


def _plain(cell: str) -> str:
    """A result cell without the apostrophe that `csvio.neutralise` put before a formula-like text."""
    return cell[1:] if cell.startswith("'") and csvio.neutralise(cell[1:]) == cell else cell


def _floats(joined: str) -> list[float | None]:
    out: list[float | None] = []
    for part in joined.split("|"):
        try:
            out.append(float(part))
        except ValueError:
            out.append(None)
    return out


def _candidates(codes: list[str], confidences: list[float | None], taxonomy: Taxonomy) -> list[Candidate]:
    out = []
    for i, code in enumerate(c for c in codes if c):
        title = taxonomy.title(code) if code in taxonomy else ""
        out.append(Candidate(code, title, confidences[i] if i < len(confidences) else None))
    return out


def batch_csv_input(job: Job) -> list[str]:
    """The input columns of a batch job's CSV form: id, job_title, duties_description, and industry only when
    a record of the batch gave one (`BATCH_INDUSTRY_OPTION`), so a batch without it reads as it always did."""
    with_industry = bool((job.options or {}).get(BATCH_INDUSTRY_OPTION))
    return [*BATCH_CSV_INPUT, csvio.INDUSTRY] if with_industry else list(BATCH_CSV_INPUT)


def batch_csv_cells(record: dict[str, object], columns: list[str]) -> list[str]:
    """A batch record's input cells in the CSV form (`batch_csv_input` columns)."""
    return [str(record.get(column) or "") for column in columns]


def result_header(job: Job) -> list[str]:
    """The header of the job's result CSV (batch jobs: their CSV form)."""
    if job.kind == "csv":
        with open(job.result_path or "", encoding="utf-8-sig", newline="") as f:
            first = f.readline()
        layout = csvio.sniff_layout(first.encode("utf-8"), complete=True)
        return [_plain(h) for h in next(csv.reader([first], delimiter=layout.delimiter))]
    return csvio.result_header(batch_csv_input(job))


def iter_result_rows(job: Job, taxonomy: Taxonomy | None = None) -> Iterator[ResultRow]:
    """Every data row of a succeeded job's result, in input order. Raises FileNotFoundError when expired."""
    taxonomy = taxonomy or get_taxonomy()
    path = Path(job.result_path or "")
    if not path.is_file():
        raise FileNotFoundError(f"the result of job {job.id} is gone")
    if job.kind == "csv":
        yield from _csv_rows(path, taxonomy)
    else:
        yield from _batch_rows(Path(job.input_path), path, taxonomy, batch_csv_input(job))


def _csv_rows(path: Path, taxonomy: Taxonomy) -> Iterator[ResultRow]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        head = f.readline()
        layout = csvio.sniff_layout(head.encode("utf-8"), complete=True)
        f.seek(0)
        reader = csv.reader(f, delimiter=layout.delimiter)
        header = [_plain(h).replace("\ufeff", "") for h in next(reader)]
        # the result columns are the last ones; input columns come first (job_title/duties as in the input)
        at = {name: i for i, name in enumerate(header)}
        base = len(header) - len(csvio.JOB_RESULT_COLUMNS)
        result_at = {name: base + i for i, name in enumerate(csvio.JOB_RESULT_COLUMNS)}
        title_at = layout.title_index if layout.title_index is not None else at.get(csvio.TITLE)
        duties_at = layout.duties_index if layout.duties_index is not None else at.get(csvio.DUTIES)
        shown = {title_at, duties_at, layout.industry_index}
        others = [(header[i] or f"column {i + 1}", i) for i in range(base) if i not in shown]
        for number, cells in enumerate(reader, start=1):
            if not cells:
                continue

            def cell(index: int | None, cells: list[str] = cells) -> str:
                return _plain(cells[index]) if index is not None and index < len(cells) else ""

            codes = cell(result_at["top_codes"]).split("|")
            yield ResultRow(
                number=number,
                job_title=cell(title_at),
                duties_description=cell(duties_at),
                industry=cell(layout.industry_index).strip(),
                isco_code=cell(result_at["isco_code"]),
                unit_code=cell(result_at["unit_code"]),
                candidates=_candidates(codes, _floats(cell(result_at["top_confidences"])), taxonomy),
                needs_review=cell(result_at["needs_review"]).lower() == "true",
                review_reasons=[r for r in cell(result_at["review_reasons"]).split("|") if r],
                row_error=cell(result_at[csvio.ROW_ERROR]),
                cells=list(cells),
                record=[(name, cell(i)) for name, i in others],
            )


def _batch_rows(records: Path, results: Path, taxonomy: Taxonomy, columns: list[str]) -> Iterator[ResultRow]:
    with open(records, encoding="utf-8") as inputs, open(results, encoding="utf-8") as outputs:
        for number, (record_line, result_line) in enumerate(zip(inputs, outputs, strict=False), start=1):
            record = json.loads(record_line)
            title, duties = record.get(csvio.TITLE) or "", record.get(csvio.DUTIES) or ""
            industry = str(record.get(csvio.INDUSTRY) or "").strip()
            outcome = json.loads(result_line)
            cells = batch_csv_cells(record, columns)
            others = [(k, "" if v is None else str(v)) for k, v in record.items() if k not in BATCH_SHOWN]
            if "error" in outcome:
                yield ResultRow(number, title, duties, "", "", row_error=outcome["error"], industry=industry,
                                cells=csvio.result_row(cells, outcome["error"]), record=others)  # fmt: skip
                continue
            p = Prediction.model_validate(outcome)
            yield ResultRow(
                number=number,
                job_title=title,
                duties_description=duties,
                isco_code=p.isco_code or "",
                unit_code=p.unit_code,
                candidates=[
                    Candidate(a.code, a.title or _title(taxonomy, a.code), a.confidence)
                    for a in p.alternatives[:5]
                ],
                needs_review=p.needs_review,
                review_reasons=list(p.review_reasons),
                cells=csvio.result_row(cells, p),
                industry=industry,
                record=others,
            )


def _title(taxonomy: Taxonomy, code: str) -> str:
    return taxonomy.title(code) if code in taxonomy else ""


# ----------------------------------------------------------------------------------------------------
# Decisions
# ----------------------------------------------------------------------------------------------------


def decisions_for_job(session: Session, job_id: str) -> dict[int, ReviewDecision]:
    """The current decision of each decided row, by row number."""
    rows = session.scalars(select(ReviewDecision).where(ReviewDecision.job_id == job_id))
    return {d.row_number: d for d in rows}


def count_decisions(session: Session, job_id: str) -> int:
    """How many rows of the job have a decision."""
    return int(session.scalar(select(func.count()).where(ReviewDecision.job_id == job_id)) or 0)


def has_decisions(session: Session, job_id: str) -> bool:
    return count_decisions(session, job_id) > 0


def record_decision(
    session: Session,
    job: Job,
    row: ResultRow,
    action: ReviewAction,
    code: str | None,
    *,
    reviewer_key_id: int | None,
    reviewer_name: str,
    taxonomy: Taxonomy | None = None,
) -> ReviewDecision:
    """Set (or change) the decision on a row and append it to the audit trail (flushed, not committed).

    accept: the model's unit group; alternative: one of the row's candidates; search: any unit group;
    uncodable: no code. Raises ReviewError for a code that the action does not allow.
    """
    taxonomy = taxonomy or get_taxonomy()
    if job.status != JobStatus.succeeded:
        raise ReviewError(f"the job is {job.status}; only finished jobs can be reviewed")
    if row.row_error:
        raise ReviewError(f"row {row.number} failed ({row.row_error}); there is no coding to review")
    final: str | None
    if action == ReviewAction.accept:
        final = row.unit_code
    elif action == ReviewAction.uncodable:
        final = None
    else:
        try:
            final = taxonomy.normalise(code or "")
        except ValueError as exc:
            raise ReviewError(str(exc)) from None
        if action == ReviewAction.alternative and final not in {c.code for c in row.candidates}:
            raise ReviewError(f"{final} is not one of the model's alternatives for row {row.number}")
    if final is not None and (final not in taxonomy or taxonomy.group(final).level != 4):
        raise ReviewError(f"{final!r} is not an ISCO-08 unit group")
    decision: ReviewDecision = jobs.record_final_code(
        session,
        job,
        row.number,
        final,
        action=str(action),
        reviewer_name=reviewer_name,
        reviewer_key_id=reviewer_key_id,
        job_title=row.job_title,
        duties_description=row.duties_description,
        model_code=row.unit_code or None,
    )
    return decision


def audit_trail(session: Session, job_id: str) -> list[ReviewEvent]:
    """Every decision made on the job's rows, oldest first."""
    return list(
        session.scalars(select(ReviewEvent).where(ReviewEvent.job_id == job_id).order_by(ReviewEvent.id))
    )


@dataclass(frozen=True)
class QueueCounts:
    """Progress of a job's review: rows in the queue, decided, left, and auto-coded rows."""

    total_rows: int
    auto_coded: int
    in_queue: int
    decided: int

    @property
    def left(self) -> int:
        return self.in_queue - self.decided


def counts(rows: Iterable[ResultRow], decisions: dict[int, ReviewDecision]) -> QueueCounts:
    total = auto = queue = decided = 0
    for row in rows:
        total += 1
        if row.in_queue:
            queue += 1
            decided += row.number in decisions
        elif not row.row_error:
            auto += 1
    return QueueCounts(total, auto, queue, decided)


# ----------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------


def final_cells(row: ResultRow, decision: ReviewDecision | None) -> list[str]:
    """`final_code`, `coded_by` of a row: the coder's decision, else the model's code for rows that did not
    need review, else empty (still in the queue, or the row failed)."""
    if decision is not None:
        return [decision.final_code or "", CODED_BY_REVIEWER]
    if row.in_queue or row.row_error:
        return ["", ""]
    return [row.isco_code, CODED_BY_MODEL]


def final_status(row: ResultRow, decision: ReviewDecision | None) -> FinalStatus:
    """What the row's `final_code` is: the model's (auto_coded), a coder's (reviewed: the model's unit group
    kept; changed; uncodable), or none yet (pending) or ever (failed)."""
    if row.row_error:
        return FinalStatus.failed
    if decision is not None:
        if decision.final_code is None:
            return FinalStatus.uncodable
        return FinalStatus.reviewed if decision.final_code == decision.model_code else FinalStatus.changed
    return FinalStatus.pending if row.in_queue else FinalStatus.auto_coded


def reviewed_cells(row: ResultRow, decision: ReviewDecision | None) -> list[str]:
    """The `REVIEWED_COLUMNS` of a row."""
    return [*final_cells(row, decision), str(final_status(row, decision))]


def iter_reviewed_csv(job: Job, decisions: dict[int, ReviewDecision]) -> Iterator[str]:
    """The job's result CSV with `final_code`, `coded_by` and `final_status` appended, as text chunks."""
    delimiter = ","
    if job.kind == "csv":
        with open(job.result_path or "", "rb") as f:
            delimiter = csvio.sniff_layout(f.read(csvio.SNIFF_BYTES)).delimiter
    yield csvio.header_line([*result_header(job), *REVIEWED_COLUMNS], delimiter)
    buffer: list[str] = []
    for row in iter_result_rows(job):
        buffer.append(
            csvio.format_row([*row.cells, *reviewed_cells(row, decisions.get(row.number))], delimiter)
        )
        if len(buffer) >= 500:
            yield "".join(buffer)
            buffer = []
    if buffer:
        yield "".join(buffer)


def corrections_csv(decisions: Iterable[ReviewDecision]) -> str:
    """Decisions as an `isco train --corrections` file; uncodable rows carry no code and are left out.

    Texts are written as coded (not formula-neutralised): the file is training input, read back verbatim."""
    buf = io.StringIO()
    w = csvio.writer(buf)
    w.writerow(CORRECTIONS_HEADER)
    for d in decisions:
        if d.final_code:
            w.writerow([d.job_title, d.duties_description, d.final_code])
    return buf.getvalue()


def owner_decisions(
    session: Session, owner_key_id: int | None, job_id: str | None = None
) -> list[ReviewDecision]:
    """Decisions on the jobs of one key (optionally one job), in job and row order."""
    stmt = select(ReviewDecision).join(Job, Job.id == ReviewDecision.job_id)
    stmt = stmt.where(
        Job.owner_key_id.is_(None) if owner_key_id is None else Job.owner_key_id == owner_key_id
    )
    if job_id is not None:
        stmt = stmt.where(ReviewDecision.job_id == job_id)
    return list(session.scalars(stmt.order_by(ReviewDecision.job_id, ReviewDecision.row_number)))


def all_decisions(session: Session, job_id: str | None = None) -> list[ReviewDecision]:
    """Every key's decisions (optionally one job's), in job and row order: for operators (`isco review`)."""
    stmt = select(ReviewDecision)
    if job_id is not None:
        stmt = stmt.where(ReviewDecision.job_id == job_id)
    return list(session.scalars(stmt.order_by(ReviewDecision.job_id, ReviewDecision.row_number)))


# ----------------------------------------------------------------------------------------------------
# The audit of auto-coded rows, and counts for the job list
# ----------------------------------------------------------------------------------------------------

AUDIT_SHARE = 0.05  # the audit sample's default size: this share of a job's auto-coded rows ...
AUDIT_MIN_ROWS = 20  # ... but at least this many (all of them in a smaller job)
AUDIT_MAX_ROWS = 2000  # the largest sample the page offers (the rows it keeps in memory per job)


def audit_key(job_id: str, number: int) -> int:
    """A row's place in its job's audit order: a keyed hash of the row number, seeded with the job id.

    The sample of size k is the k auto-coded rows with the smallest keys, so it is the same for every coder
    and every process, it is a uniform random sample, and a larger share only adds rows to a smaller one."""
    digest = hashlib.blake2b(number.to_bytes(8, "little"), key=job_id.encode()[:64], digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def audit_size(auto_coded: int, share: float | None = None, rows: int | None = None) -> int:
    """How many auto-coded rows to check: `rows`, else `share` of them (rounded up), else the default
    (`AUDIT_SHARE`, at least `AUDIT_MIN_ROWS`); never more than there are, nor than `AUDIT_MAX_ROWS`."""
    if rows is not None:
        wanted = rows
    elif share is not None:
        wanted = math.ceil(round(auto_coded * share, 6))  # rounded first: 100 * 0.07 is 7.000000000000001
    else:
        wanted = max(math.ceil(round(auto_coded * AUDIT_SHARE, 6)), AUDIT_MIN_ROWS)
    return max(0, min(wanted, auto_coded, AUDIT_MAX_ROWS))


@dataclass(frozen=True)
class AuditCounts:
    """Auto-coded rows a coder checked, and how many of them got another code (or none)."""

    checked: int
    changed: int


def audit_counts(decisions: Iterable[ReviewDecision], queue: ResultCounts) -> AuditCounts:
    """Decisions on rows outside the review queue are audit decisions (failed rows take none)."""
    checked = changed = 0
    for d in decisions:
        if not queue.in_queue(d.row_number):
            checked += 1
            changed += d.final_code != d.model_code
    return AuditCounts(checked, changed)


@dataclass(frozen=True)
class ResultCounts:
    """A finished job's rows by route: auto-coded, in the review queue (their numbers), failed."""

    total_rows: int
    auto_coded: int
    failed: int
    queue_rows: array[int]  # row numbers in the review queue, ascending

    def in_queue(self, number: int) -> bool:
        at = bisect_left(self.queue_rows, number)
        return at < len(self.queue_rows) and self.queue_rows[at] == number


def count_result(job: Job) -> ResultCounts:
    """Count a succeeded job's result by route, reading only the routing cells (much faster than
    `iter_result_rows`, for the job list). Raises FileNotFoundError when the result is gone."""
    path = Path(job.result_path or "")
    if not path.is_file():
        raise FileNotFoundError(f"the result of job {job.id} is gone")
    total = failed = 0
    queue = array("L")
    if job.kind == "csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            layout = csvio.sniff_layout(f.readline().encode("utf-8"), complete=True)
            f.seek(0)
            reader = csv.reader(f, delimiter=layout.delimiter)
            width = len(next(reader))
            review_at = width - len(csvio.JOB_RESULT_COLUMNS) + csvio.JOB_RESULT_COLUMNS.index("needs_review")
            error_at = width - 1
            for number, cells in enumerate(reader, start=1):
                if not cells:
                    continue
                total += 1
                if len(cells) > error_at and cells[error_at]:
                    failed += 1
                elif len(cells) > review_at and cells[review_at].lower() == "true":
                    queue.append(number)
    else:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                outcome = json.loads(line)
                total += 1
                if "error" in outcome:
                    failed += 1
                elif outcome.get("needs_review"):
                    queue.append(number)
    return ResultCounts(total, total - failed - len(queue), failed, queue)


def decisions_by_job(session: Session, job_ids: Iterable[str]) -> dict[str, list[ReviewDecision]]:
    """The current decisions of several jobs (the job list's counts), by job id."""
    ids = list(job_ids)
    out: dict[str, list[ReviewDecision]] = {job_id: [] for job_id in ids}
    if ids:
        for d in session.scalars(select(ReviewDecision).where(ReviewDecision.job_id.in_(ids))):
            out[d.job_id].append(d)
    return out


def owner_jobs(session: Session, owner_key_id: int | None, offset: int, limit: int) -> tuple[list[Job], int]:
    """One page of a key's jobs, newest first, and how many jobs the key has in all."""
    owned = Job.owner_key_id.is_(None) if owner_key_id is None else Job.owner_key_id == owner_key_id
    total = int(session.scalar(select(func.count()).select_from(Job).where(owned)) or 0)
    page = session.scalars(
        select(Job).where(owned).order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)
    )
    return list(page), total
