"""What a job's result download and a review produce: the reviewed result (the job's result plus
`final_code`, `coded_by` and `final_status`, added at read time), a batch job's result as JSON or in its CSV
form, and the corrections file in the `isco train --corrections` layout (job_title, duties_description,
corrected_isco_code).
"""

from __future__ import annotations

import enum
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from shared.csvio.reading import SNIFF_BYTES, sniff_layout
from shared.csvio.writing import format_row, header_line, result_row, writer
from shared.csvio.writing import result_header as header_for_input
from shared.db.tables import Job, ReviewDecision
from shared.review.results import ResultRow, batch_csv_cells, batch_csv_input, iter_result_rows, result_header
from shared.schemas import Prediction

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


def iter_reviewed_csv(job: Job, decisions: dict[int, ReviewDecision]) -> Iterator[str]:
    """The job's result CSV with `final_code`, `coded_by` and `final_status` appended, as text chunks."""
    delimiter = ","
    if job.kind == "csv":
        with open(job.result_path or "", "rb") as f:
            delimiter = sniff_layout(f.read(SNIFF_BYTES)).delimiter
    yield header_line([*result_header(job), *REVIEWED_COLUMNS], delimiter)
    buffer: list[str] = []
    for row in iter_result_rows(job):
        buffer.append(format_row([*row.cells, *reviewed_cells(row, decisions.get(row.number))], delimiter))
        if len(buffer) >= 500:
            yield "".join(buffer)
            buffer = []
    if buffer:
        yield "".join(buffer)


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
    `decisions`, each result also says `final_code` and `coded_by` (null where there is none yet) and
    `final_status` (auto_coded, reviewed, changed, uncodable, pending or failed)."""
    yield json.dumps({"job_id": job.id, "model_version": job.model_version})[:-1].encode() + b', "results": ['
    if decisions is None:
        with open(result, "rb") as f:
            lines: Iterator[bytes] = (line.strip() for line in f)
            yield from _joined(line for line in lines if line)
    else:
        yield from _joined(_reviewed_lines(job, result, decisions))
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


def iter_batch_csv(job: Job, records: Path, result: Path) -> Iterator[bytes]:
    """The CSV form of a batch result: id, job_title, duties_description (and industry when a record gave
    one), the result columns, row_error."""
    columns = batch_csv_input(job)
    yield header_line(header_for_input(columns)).encode()
    with open(records, encoding="utf-8") as inputs, open(result, encoding="utf-8") as outputs:
        buffer: list[str] = []
        for record_line, result_line in zip(inputs, outputs, strict=False):
            cells = batch_csv_cells(json.loads(record_line), columns)
            outcome = json.loads(result_line)
            value: Prediction | str = (
                outcome["error"] if "error" in outcome else Prediction.model_validate(outcome)
            )
            buffer.append(format_row(result_row(cells, value)))
            if len(buffer) >= 500:
                yield "".join(buffer).encode()
                buffer = []
        if buffer:
            yield "".join(buffer).encode()
