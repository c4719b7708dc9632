"""What a review produces: the reviewed result (the job's result plus `final_code`, `coded_by` and
`final_status`, added at read time) and the corrections file in the `isco train --corrections` layout
(job_title, duties_description, corrected_isco_code).
"""

from __future__ import annotations

import enum
import io
from collections.abc import Iterable, Iterator

from shared.csvio.reading import SNIFF_BYTES, sniff_layout
from shared.csvio.writing import format_row, header_line, writer
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
