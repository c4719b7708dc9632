"""A finished job's result read back as rows: what the review page, the audit and the reviewed export see.

Rows come from the job's result file (CSV jobs: the result CSV; batch jobs: the JSON lines result beside the
input records), so the worker's output is never rewritten. Which rows are in the review queue, auto-coded or
failed is read from the result's routing cells. Nothing here imports the model stack.
"""

from __future__ import annotations

import csv
import json
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.csvio.reading import DUTIES, INDUSTRY, TITLE, sniff_layout
from shared.csvio.writing import JOB_RESULT_COLUMNS, ROW_ERROR, neutralise, result_row
from shared.csvio.writing import result_header as header_for_input
from shared.db.tables import Job
from shared.schemas import REVIEW_REASONS, Prediction
from shared.taxonomy import Taxonomy, get_taxonomy

# Every reason routing gives says the model is not sure of a 4-digit answer, or that the answer is not an
# occupation to code: such a row has no default answer on the review page (the coder picks one).
UNSURE_REASONS = frozenset(REVIEW_REASONS)
STATUS_REASONS = frozenset({"not_an_occupation"})  # student, retired ...: usually uncodable
BATCH_CSV_INPUT = ["id", TITLE, DUTIES]
BATCH_SHOWN = (TITLE, DUTIES, INDUSTRY)  # a record's fields the row view shows apart
BATCH_INDUSTRY_OPTION = "industry"  # a batch job's option: some record of the batch gave an industry
REVIEWABLE_KINDS = ("csv", "batch")
_LEGACY = [c for c in JOB_RESULT_COLUMNS if c not in ("language", "language_detected")]


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
    language: str = ""  # ISO 639-1: the language the row was coded as (empty in older results)

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
    """A result cell without the apostrophe that `neutralise` put before a formula-like text."""
    return cell[1:] if cell.startswith("'") and neutralise(cell[1:]) == cell else cell


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
    return [*BATCH_CSV_INPUT, INDUSTRY] if with_industry else list(BATCH_CSV_INPUT)


def batch_csv_cells(record: dict[str, object], columns: list[str]) -> list[str]:
    """A batch record's input cells in the CSV form (`batch_csv_input` columns)."""
    return [str(record.get(column) or "") for column in columns]


def result_header(job: Job) -> list[str]:
    """The header of the job's result CSV (batch jobs: their CSV form)."""
    if job.kind == "csv":
        with open(job.result_path or "", encoding="utf-8-sig", newline="") as f:
            first = f.readline()
        layout = sniff_layout(first.encode("utf-8"), complete=True)
        return [_plain(h) for h in next(csv.reader([first], delimiter=layout.delimiter))]
    return header_for_input(batch_csv_input(job))


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
        layout = sniff_layout(head.encode("utf-8"), complete=True)
        f.seek(0)
        reader = csv.reader(f, delimiter=layout.delimiter)
        header = [_plain(h).replace("\ufeff", "") for h in next(reader)]
        # the result columns are the last ones; input columns come first (job_title/duties as in the input)
        at = {name: i for i, name in enumerate(header)}
        # results written before the language columns existed end without them
        columns = JOB_RESULT_COLUMNS if header[-len(JOB_RESULT_COLUMNS) :] == JOB_RESULT_COLUMNS else _LEGACY
        base = len(header) - len(columns)
        result_at = {name: base + i for i, name in enumerate(columns)}
        title_at = layout.title_index if layout.title_index is not None else at.get(TITLE)
        duties_at = layout.duties_index if layout.duties_index is not None else at.get(DUTIES)
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
                language=cell(result_at.get("language")),
                row_error=cell(result_at[ROW_ERROR]),
                cells=list(cells),
                record=[(name, cell(i)) for name, i in others],
            )


def _batch_rows(records: Path, results: Path, taxonomy: Taxonomy, columns: list[str]) -> Iterator[ResultRow]:
    with open(records, encoding="utf-8") as inputs, open(results, encoding="utf-8") as outputs:
        for number, (record_line, result_line) in enumerate(zip(inputs, outputs, strict=False), start=1):
            record = json.loads(record_line)
            title, duties = record.get(TITLE) or "", record.get(DUTIES) or ""
            industry = str(record.get(INDUSTRY) or "").strip()
            outcome = json.loads(result_line)
            cells = batch_csv_cells(record, columns)
            others = [(k, "" if v is None else str(v)) for k, v in record.items() if k not in BATCH_SHOWN]
            if "error" in outcome:
                yield ResultRow(number, title, duties, "", "", row_error=outcome["error"], industry=industry,
                                cells=result_row(cells, outcome["error"]), record=others)  # fmt: skip
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
                language=p.language or "",
                cells=result_row(cells, p),
                industry=industry,
                record=others,
            )


def _title(taxonomy: Taxonomy, code: str) -> str:
    return taxonomy.title(code) if code in taxonomy else ""


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
            layout = sniff_layout(f.readline().encode("utf-8"), complete=True)
            f.seek(0)
            reader = csv.reader(f, delimiter=layout.delimiter)
            width = len(next(reader))
            review_at = width - len(JOB_RESULT_COLUMNS) + JOB_RESULT_COLUMNS.index("needs_review")
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
