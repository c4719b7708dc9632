"""Test support for the review page: finished jobs (through the job module) whose results need review."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.csvio.writing import header_line, result_header, result_row, write_rows
from shared.db.session import session_scope
from shared.db.tables import JobStatus, utcnow
from shared.jobs.files import input_path, result_path
from shared.jobs.settings import JobSettings
from shared.jobs.state import create_job, new_job_id, transition
from shared.schemas import Alternative, GroupRef, Prediction
from shared.taxonomy import get_taxonomy


@dataclass(frozen=True)
class Case:
    """One input row and what the model said: ranked (code, confidence); review when the top is unsure."""

    title: str
    duties: str
    ranked: tuple[tuple[str, float], ...]
    needs_review: bool
    industry: str = ""  # the employer's industry; a job gets the column (field) when a case has one
    reasons: tuple[str, ...] | None = None  # review reasons; default: not_coded when it needs review
    coded: bool | None = None  # answered at 4 digits; default: when it does not need review
    language: str | None = None  # the language the row was coded as (Prediction.language)


# rows 1..6 of the standard job: 1, 3, 4, 6 need review
CASES = (
    Case("staff nurse", "cares for ward patients", (("2221", 0.41), ("3221", 0.32), ("5321", 0.1)), True),
    Case("welder", "welds steel frames", (("7212", 0.96), ("7214", 0.02)), False),
    Case("bookkeeper", "keeps accounts", (("4311", 0.38), ("3313", 0.35), ("2411", 0.12)), True),
    Case("pipe fitter", "installs water pipes", (("7233", 0.22), ("7214", 0.2), ("8111", 0.1)), True),
    Case("primary school teacher", "teaches children aged 6-11", (("2341", 0.93), ("2342", 0.03)), False),
    Case("=cmd", "", (("9629", 0.05), ("5249", 0.04)), True),  # formula-like text, neutralised in the CSV
)  # fmt: skip


def prediction(case: Case, version: str = "tiny-review-1") -> Prediction:
    taxonomy = get_taxonomy()
    code, confidence = case.ranked[0]
    path = [
        GroupRef(code=g.code, level=g.level, title=g.title, confidence=confidence)
        for g in taxonomy.ancestors(code)
    ]
    coded = not case.needs_review if case.coded is None else case.coded
    reasons = case.reasons if case.reasons is not None else ("not_coded",) if case.needs_review else ()
    return Prediction(
        coded=coded,
        isco_code=code if coded else None,
        level=4 if coded else None,
        title=taxonomy.title(code) if coded else None,
        confidence=confidence if coded else None,
        is_fallback=not coded,
        unit_code=code,
        unit_title=taxonomy.title(code),
        unit_confidence=confidence,
        alternatives=[Alternative(code=c, title=taxonomy.title(c), confidence=p) for c, p in case.ranked],
        path=path,
        model_version=version,
        needs_review=case.needs_review,
        review_reasons=list(reasons),
        language=case.language,
    )


def finished_csv_job(
    db_url: str,
    settings: JobSettings,
    owner_key_id: int | None,
    cases: tuple[Case, ...] = CASES,
    extra: tuple[str, ...] = (),
    filename: str = "survey.csv",
) -> str:
    """A succeeded CSV job with a result file as the worker writes it (header + rows, RESULT columns); `extra`
    names more input columns after the texts (row i's value: "NAME-i")."""
    job_id = new_job_id()
    settings.ensure_dirs()
    with_industry = any(c.industry for c in cases)
    header = (
        ["ref", "job_title", "duties_description"] + (["Industry"] if with_industry else []) + list(extra)
    )

    def cells(i: int, c: Case) -> list[str]:
        return (
            [f"r{i}", c.title, c.duties]
            + ([c.industry] if with_industry else [])
            + [f"{x}-{i}" for x in extra]
        )

    input_file = input_path(settings, job_id, "csv")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    for i, case in enumerate(cases, start=1):
        w.writerow(cells(i, case))
    input_file.write_text(buf.getvalue(), encoding="utf-8")
    result = result_path(settings, job_id, "csv")
    result.parent.mkdir(parents=True, exist_ok=True)
    with open(result, "w", encoding="utf-8", newline="") as f:
        f.write(header_line(result_header(header)))
        write_rows(
            f,
            (result_row(cells(i, c), prediction(c)) for i, c in enumerate(cases, start=1)),
        )
    _record_succeeded_job(
        db_url, settings, job_id, "csv", owner_key_id, input_file, result, len(cases),
        {"top_k": 5, "thresholds": None, "filename": filename}, model_version="tiny-review-1",
    )  # fmt: skip
    return job_id


def audit_cases(auto: int, queued: int) -> tuple[Case, ...]:
    """`auto` auto-coded rows and `queued` rows that need review: rows 5, 10, 15 ... (while they last)."""
    assert 5 * queued <= auto + queued, "every fifth row needs review"
    units = get_taxonomy().unit_groups
    out = []
    for i in range(auto + queued):
        codes = [units[(11 * i + j * 17) % len(units)] for j in range(3)]
        queue_row = i % 5 == 4 and i // 5 < queued
        ranked = tuple(zip(codes, (0.4, 0.3, 0.1) if queue_row else (0.97, 0.02, 0.01), strict=True))
        out.append(Case(f"job {i + 1}", f"duties of row {i + 1}", ranked, queue_row))
    return tuple(out)


def many_cases(n: int) -> tuple[Case, ...]:
    """n rows that all need review (for the 20-row timing)."""
    taxonomy = get_taxonomy()
    units = taxonomy.unit_groups
    out = []
    for i in range(n):
        codes = [units[(7 * i + j * 13) % len(units)] for j in range(3)]
        out.append(
            Case(
                f"occupation {i}", f"duties of row {i}", tuple(zip(codes, (0.4, 0.3, 0.1), strict=True)), True
            )
        )
    return tuple(out)


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def tail(path: Path) -> str:
    return path.read_text()[-2000:] if path.exists() else ""


def finished_batch_job(
    db_url: str, settings: JobSettings, owner_key_id: int | None, cases: tuple[Case, ...] = CASES
) -> str:
    """A succeeded batch job: JSON lines of records in, JSON lines of predictions (or errors) out."""
    job_id = new_job_id()
    settings.ensure_dirs()
    input_file = input_path(settings, job_id, "batch")
    with_industry = any(c.industry for c in cases)
    input_file.write_text(
        "".join(json.dumps({"id": f"b{i}", "job_title": c.title, "duties_description": c.duties}
                           | ({"industry": c.industry} if with_industry else {})) + "\n"
                for i, c in enumerate(cases, start=1)),
        encoding="utf-8",
    )  # fmt: skip
    result = result_path(settings, job_id, "batch")
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text("".join(prediction(c).model_dump_json() + "\n" for c in cases), encoding="utf-8")
    _record_succeeded_job(
        db_url, settings, job_id, "batch", owner_key_id, input_file, result, len(cases),
        {"top_k": 5, "thresholds": None} | ({"industry": True} if with_industry else {}),
    )  # fmt: skip
    return job_id


def _record_succeeded_job(
    db_url: str,
    settings: JobSettings,
    job_id: str,
    kind: str,
    owner_key_id: int | None,
    input_file: Path,
    result: Path,
    rows: int,
    options: dict[str, Any],
    **finished: Any,
) -> None:
    """The job row, taken queued -> running -> succeeded through the job module, as a worker would."""
    with session_scope(db_url) as session:
        create_job(
            session,
            job_id=job_id,
            kind=kind,
            owner_key_id=owner_key_id,
            input_file=input_file,
            rows_total=rows,
            options=options,
            settings=settings,
        )
        transition(session, job_id, JobStatus.running, only_from=(JobStatus.queued,), started_at=utcnow())
        transition(
            session,
            job_id,
            JobStatus.succeeded,
            only_from=(JobStatus.running,),
            rows_done=rows,
            result_path=str(result),
            finished_at=utcnow(),
            **finished,
        )
