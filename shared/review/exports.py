"""What a job's result download and a review produce: the reviewed result (the job's result plus
`final_code`, `coded_by` and `final_status`, added at read time, reviewed or not) as CSV, .xlsx or (batch
jobs) JSON, and the corrections file in the `isco train --corrections` layout (job_title, duties_description,
corrected_isco_code).
"""

from __future__ import annotations

import enum
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from shared.csvio.reading import SNIFF_BYTES, sniff_layout
from shared.csvio.workbook import write_xlsx
from shared.csvio.writing import format_row, neutralise, writer
from shared.db.tables import Job, ReviewDecision
from shared.review.results import ResultRow, iter_result_rows, result_header

REVIEWED_COLUMNS = ["final_code", "coded_by", "final_status"]
CODED_BY_MODEL = "model"
CODED_BY_REVIEWER = "reviewer"
CORRECTIONS_HEADER = ["job_title", "duties_description", "corrected_isco_code"]


class FinalStatus(enum.StrEnum):
    """What the `final_code` of a reviewed result's row is (the `final_status` column)."""

    auto_coded = "auto_coded"  # the model's code, not routed to review and not checked by a coder
    reviewed = "reviewed"  # a coder kept the model's unit group
    changed = "changed"  # a coder chose another unit group
    uncodable = "uncodable"  # a coder found no code (final_code empty)
    pending = "pending"  # in the review queue, not decided yet (final_code empty)
    failed = "failed"  # the row could not be coded (row_error; final_code empty)


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


def reviewed_rows(job: Job, decisions: dict[int, ReviewDecision]) -> Iterator[list[str]]:
    """The job's result as rows, header first, with `REVIEWED_COLUMNS` appended to every one: the same
    columns whether or not a coder has decided anything (no decisions: the model's code where it did not
    route the row to review, `pending` where it did). Cells are neutralised (`writing.neutralise`)."""
    yield [neutralise(h) for h in [*result_header(job), *REVIEWED_COLUMNS]]
    for row in iter_result_rows(job):
        yield [*row.cells, *reviewed_cells(row, decisions.get(row.number))]


def iter_reviewed_csv(job: Job, decisions: dict[int, ReviewDecision]) -> Iterator[str]:
    """The job's result CSV with `final_code`, `coded_by` and `final_status` appended, as text chunks."""
    delimiter = ","
    if job.kind == "csv":
        with open(job.result_path or "", "rb") as f:
            delimiter = sniff_layout(f.read(SNIFF_BYTES)).delimiter
    buffer: list[str] = []
    for cells in reviewed_rows(job, decisions):
        buffer.append(format_row(cells, delimiter))
        if len(buffer) >= 500:
            yield "".join(buffer)
            buffer = []
    if buffer:
        yield "".join(buffer)


def write_reviewed_xlsx(job: Job, decisions: dict[int, ReviewDecision], dest: Path) -> int:
    """The reviewed result (`reviewed_rows`: the CSV's columns and cells) as an .xlsx at `dest`, every cell
    text; returns the number of data rows."""
    return write_xlsx(reviewed_rows(job, decisions), dest)


def corrections_csv(decisions: Iterable[ReviewDecision]) -> str:
    """Decisions as an `isco train --corrections` file; uncodable rows carry no code and are left out.

    Texts are written as coded (not formula-neutralised): the file is training input, read back verbatim."""
    buf = io.StringIO()
    w = writer(buf)
    w.writerow(CORRECTIONS_HEADER)
    for d in decisions:
        if d.final_code:
            w.writerow([d.job_title, d.duties_description, d.final_code])
    return buf.getvalue()


def iter_batch_json(
    job: Job, result: Path, decisions: dict[int, ReviewDecision] | None = None
) -> Iterator[bytes]:
    """{"job_id", "model_version", "results": [...]} streamed from the JSON lines result; with review
    `decisions` (the API always passes them, empty before any review, so the fields do not depend on the
    review state), each result also says `final_code` and `coded_by` (null where there is none yet) and
    `final_status` (auto_coded, reviewed, changed, uncodable, pending or failed)."""
    yield json.dumps({"job_id": job.id, "model_version": job.model_version})[:-1].encode() + b', "results": ['
    if decisions is None:
        with open(result, "rb") as f:
            lines: Iterator[bytes] = (line.strip() for line in f)
            yield from _joined(line for line in lines if line)
    else:
        yield from _joined(_reviewed_lines(job, result, decisions))
    yield b"]}"


def iter_csv_job_json(job: Job, decisions: dict[int, ReviewDecision]) -> Iterator[bytes]:
    """A CSV job's result as JSON: {"job_id", "model_version", "rows": [{column: cell, ...}, ...]}, the same
    columns and cells as its CSV (`reviewed_rows`), for clients that read JSON only."""
    rows = reviewed_rows(job, decisions)
    header = next(rows)
    yield json.dumps({"job_id": job.id, "model_version": job.model_version})[:-1].encode() + b', "rows": ['
    yield from _joined(json.dumps(dict(zip(header, cells, strict=True))).encode() for cells in rows)
    yield b"]}"


def _joined(items: Iterable[bytes]) -> Iterator[bytes]:
    first = True
    for item in items:
        yield (b"" if first else b",") + item
        first = False


def _reviewed_lines(job: Job, result: Path, decisions: dict[int, ReviewDecision]) -> Iterator[bytes]:
    with open(result, encoding="utf-8") as f:
        # line for line, as `iter_result_rows` pairs them with the input records
        for row, line in zip(iter_result_rows(job), f, strict=False):
            final_code, coded_by, status = reviewed_cells(row, decisions.get(row.number))
            outcome = json.loads(line)
            outcome.update(final_code=final_code or None, coded_by=coded_by or None, final_status=status)
            yield json.dumps(outcome, ensure_ascii=False).encode()
