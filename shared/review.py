"""The review workflow: a job's queue of rows that need a human coder, their decisions, and what comes out.

Rows come from the job's result file (CSV jobs: the result CSV; batch jobs: the JSON lines result beside the
input records), so the worker's output is never rewritten. Decisions are rows in the metadata DB: one current
`ReviewDecision` per row plus an append-only `ReviewEvent` for each change (the audit trail). The reviewed
result adds `final_code` and `coded_by` at read time; the corrections export is the
`isco train --corrections` layout (job_title, duties_description, corrected_isco_code). Helpers flush; the
caller commits. Nothing here imports the model stack.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import csvio, jobs
from shared.db.tables import Job, JobStatus, ReviewAction, ReviewDecision, ReviewEvent
from shared.schemas import Prediction
from shared.taxonomy import Taxonomy, get_taxonomy

REVIEWED_COLUMNS = ["final_code", "coded_by"]
CODED_BY_MODEL = "model"
CODED_BY_REVIEWER = "reviewer"
CORRECTIONS_HEADER = ["job_title", "duties_description", "corrected_isco_code"]
BATCH_CSV_INPUT = ["id", csvio.TITLE, csvio.DUTIES]
BATCH_INDUSTRY_OPTION = "industry"  # a batch job's option: some record of the batch gave an industry
REVIEWABLE_KINDS = ("csv", "batch")


class ReviewError(ValueError):
    """A decision that cannot be recorded (unknown row, invalid code); the message says why."""


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

    @property
    def in_queue(self) -> bool:
        """Rows a coder settles: those routed to review (a row that failed has nothing to review)."""
        return self.needs_review and not self.row_error


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
        for number, cells in enumerate(reader, start=1):
            if not cells:
                continue

            def cell(index: int | None, cells: list[str] = cells) -> str:
                return _plain(cells[index]) if index is not None and index < len(cells) else ""

            codes = cell(result_at["top_codes"]).split("|")
            yield ResultRow(
                number=number,
                job_title=cell(layout.title_index if layout.title_index is not None else at.get(csvio.TITLE)),
                duties_description=cell(
                    layout.duties_index if layout.duties_index is not None else at.get(csvio.DUTIES)
                ),
                industry=cell(layout.industry_index).strip(),
                isco_code=cell(result_at["isco_code"]),
                unit_code=cell(result_at["unit_code"]),
                candidates=_candidates(codes, _floats(cell(result_at["top_confidences"])), taxonomy),
                needs_review=cell(result_at["needs_review"]).lower() == "true",
                review_reasons=[r for r in cell(result_at["review_reasons"]).split("|") if r],
                row_error=cell(result_at[csvio.ROW_ERROR]),
                cells=list(cells),
            )


def _batch_rows(records: Path, results: Path, taxonomy: Taxonomy, columns: list[str]) -> Iterator[ResultRow]:
    with open(records, encoding="utf-8") as inputs, open(results, encoding="utf-8") as outputs:
        for number, (record_line, result_line) in enumerate(zip(inputs, outputs, strict=False), start=1):
            record = json.loads(record_line)
            title, duties = record.get(csvio.TITLE) or "", record.get(csvio.DUTIES) or ""
            industry = str(record.get(csvio.INDUSTRY) or "").strip()
            outcome = json.loads(result_line)
            cells = batch_csv_cells(record, columns)
            if "error" in outcome:
                yield ResultRow(number, title, duties, "", "", row_error=outcome["error"], industry=industry,
                                cells=csvio.result_row(cells, outcome["error"]))  # fmt: skip
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


def iter_reviewed_csv(job: Job, decisions: dict[int, ReviewDecision]) -> Iterator[str]:
    """The job's result CSV with `final_code` and `coded_by` appended, as text chunks."""
    delimiter = ","
    if job.kind == "csv":
        with open(job.result_path or "", "rb") as f:
            delimiter = csvio.sniff_layout(f.read(csvio.SNIFF_BYTES)).delimiter
    yield csvio.header_line([*result_header(job), *REVIEWED_COLUMNS], delimiter)
    buffer: list[str] = []
    for row in iter_result_rows(job):
        buffer.append(csvio.format_row([*row.cells, *final_cells(row, decisions.get(row.number))], delimiter))
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


def search_codes(query: str, limit: int = 20, taxonomy: Taxonomy | None = None) -> list[tuple[str, str]]:
    """Unit groups whose code starts with the query or whose title contains all of its words."""
    taxonomy = taxonomy or get_taxonomy()
    q = query.strip().lower()
    if not q:
        return []
    words = q.split()
    hits: list[tuple[int, str, str]] = []
    for code in taxonomy.unit_groups:
        title = taxonomy.title(code)
        low = title.lower()
        if code.startswith(q):
            hits.append((0, code, title))
        elif all(w in low for w in words):
            hits.append((1 if low.startswith(words[0]) else 2, code, title))
    hits.sort()
    return [(code, title) for _, code, title in hits[:limit]]
