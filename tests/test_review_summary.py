"""A job at a glance (shared/review/summary.py): the counts by status, by major group and by confidence, from
real result files (CSV and batch jobs written as the worker writes them) and real decisions in the DB; the
statuses always agree with the reviewed result's `final_status`, row by row.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from shared.db.session import session_scope
from shared.db.tables import Job, ReviewAction
from shared.jobs.settings import JobSettings
from shared.review.decisions import decisions_for_job, record_decision
from shared.review.exports import FinalStatus, final_cells, final_status
from shared.review.results import iter_result_rows
from shared.review.summary import MAJOR_GROUPS, JobSummary, confidence_bin, profile_rows, summarise
from tests.conftest import REDIS_URL
from tests.review_support import audit_cases, finished_batch_job, finished_csv_job

# CASES (rows 1..6): 1 staff nurse 2221 (0.41, queue), 2 welder 7212 (0.96, auto), 3 bookkeeper 4311 (0.38,
# queue), 4 pipe fitter 7233 (0.22, queue), 5 teacher 2341 (0.93, auto), 6 "=cmd" 9629 (0.05, queue)


def _settings(db_url: str, tmp_path: Path) -> JobSettings:
    return JobSettings(env="test", data_dir=tmp_path / "data", database_url=db_url, redis_url=REDIS_URL)


def _decide(db_url: str, job_id: str, decisions: dict[int, tuple[ReviewAction, str | None]]) -> None:
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        rows = {r.number: r for r in iter_result_rows(job)}
        for number, (action, code) in decisions.items():
            record_decision(session, job, rows[number], action, code, reviewer_key_id=None, reviewer_name="t")


def _summary_and_truth(db_url: str, job_id: str) -> tuple[JobSummary, Counter[str], Counter[str], list[int]]:
    """The summary, and the same counts computed row by row from the result and the reviewed result's
    own rules (final_status, final_cells)."""
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        decisions = decisions_for_job(session, job_id)
        rows = list(iter_result_rows(job))
        summary = summarise(profile_rows(rows), decisions)
        statuses: Counter[str] = Counter()
        majors: Counter[str] = Counter()
        bins = [0] * 10
        for row in rows:
            decision = decisions.get(row.number)
            status = final_status(row, decision)
            statuses[status] += 1
            code = final_cells(row, decision)[0] or (row.unit_code if status == FinalStatus.pending else "")
            majors[code[:1] or "none"] += 1
            if row.candidates and row.candidates[0].confidence is not None:
                bins[min(int(row.candidates[0].confidence * 10), 9)] += 1
    return summary, statuses, majors, bins


def test_an_unreviewed_job_counts_the_models_routes_codes_and_confidences(
    sqlite_url: str, tmp_path: Path
) -> None:
    job_id = finished_csv_job(sqlite_url, _settings(sqlite_url, tmp_path), None)
    summary, statuses, majors, bins = _summary_and_truth(sqlite_url, job_id)
    assert summary.total_rows == 6
    assert (summary.auto_coded, summary.to_review, summary.settled, summary.failed) == (2, 4, 0, 0)
    assert summary.share(summary.auto_coded) == pytest.approx(2 / 6)
    by_major = {m.code: m.rows for m in summary.majors}
    # 2221, 2341 -> 2; 7212, 7233 -> 7; 4311 -> 4; 9629 -> 9 (rows to review count by the model's answer)
    assert by_major == {"1": 0, "2": 2, "3": 0, "4": 1, "5": 0, "6": 0, "7": 2, "8": 0, "9": 1, "0": 0}
    assert [m.code for m in summary.majors] == list(MAJOR_GROUPS)
    assert summary.majors[1].title == "Professionals"
    assert summary.majors[-1].title == "Armed Forces Occupations"
    # confidences 0.41, 0.96, 0.38, 0.22, 0.93, 0.05
    assert summary.confidence_bins == (1, 0, 1, 1, 1, 0, 0, 0, 0, 2)
    assert list(summary.confidence_bins) == bins and summary.no_confidence == 0
    assert statuses == {"auto_coded": 2, "pending": 4}


def test_decisions_move_rows_to_settled_and_their_codes_to_the_coders_major_group(
    db_url: str, tmp_path: Path
) -> None:
    job_id = finished_csv_job(db_url, _settings(db_url, tmp_path), None)
    _decide(
        db_url,
        job_id,
        {
            1: (ReviewAction.accept, "2221"),  # reviewed: same code
            3: (ReviewAction.alternative, "3313"),  # changed: 4 -> 3
            6: (ReviewAction.uncodable, None),  # uncodable: no code
            5: (ReviewAction.search, "7126"),  # an audited auto-coded row, changed: 2 -> 7
        },
    )
    summary, statuses, majors, bins = _summary_and_truth(db_url, job_id)
    s = summary
    assert {str(k): v for k, v in s.statuses.items() if v} == dict(statuses)
    assert dict(statuses) == {"reviewed": 1, "changed": 2, "uncodable": 1, "auto_coded": 1, "pending": 1}
    assert (s.auto_coded, s.to_review, s.settled, s.failed) == (1, 1, 4, 0)
    by_major = {m.code: m.rows for m in s.majors if m.rows}
    assert by_major == {"2": 1, "3": 1, "7": 3} and s.no_code == 1
    assert by_major == {k: v for k, v in majors.items() if k != "none"} and majors["none"] == 1
    # the histogram is the model's: review does not move it
    assert list(s.confidence_bins) == bins == [1, 0, 1, 1, 1, 0, 0, 0, 0, 2]


def test_a_batch_job_with_failed_rows_and_many_rows(sqlite_url: str, tmp_path: Path) -> None:
    settings = _settings(sqlite_url, tmp_path)
    cases = audit_cases(auto=40, queued=8)
    job_id = finished_batch_job(sqlite_url, settings, None, cases)
    # two rows fail, as a worker writes them (an error instead of a prediction)
    with session_scope(sqlite_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.result_path
        result = Path(job.result_path)
    lines = result.read_text(encoding="utf-8").splitlines()
    for at in (0, 4):  # row 1 (auto-coded) and row 5 (in the queue)
        lines[at] = '{"error": "job_title and duties_description are both empty"}'
    result.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _decide(sqlite_url, job_id, {10: (ReviewAction.uncodable, None), 2: (ReviewAction.accept, None)})
    summary, statuses, majors, bins = _summary_and_truth(sqlite_url, job_id)
    s = summary
    assert s.total_rows == 48 and s.failed == 2 and s.no_confidence == 2
    assert {str(k): v for k, v in s.statuses.items() if v} == dict(statuses)
    assert (s.auto_coded, s.to_review, s.settled) == (38, 6, 2)
    assert sum(s.confidence_bins) == 46 and list(s.confidence_bins) == bins
    by_major = {m.code: m.rows for m in s.majors if m.rows}
    assert by_major == {k: v for k, v in majors.items() if k != "none"}
    assert s.no_code == majors["none"] == 3  # two failed rows, one uncodable
    assert sum(by_major.values()) + s.no_code == 48


def test_confidence_bins_are_tenths_with_one_in_the_last() -> None:
    assert [confidence_bin(c) for c in (0.0, 0.05, 0.1, 0.499, 0.5, 0.9, 0.99, 1.0, -0.1, 1.2)] == [
        0, 0, 1, 4, 5, 9, 9, 9, 0, 9,
    ]  # fmt: skip


def test_an_empty_result_has_no_shares() -> None:
    summary = summarise(profile_rows([]), {})
    assert summary.total_rows == 0 and summary.share(0) == 0.0 and summary.no_code == 0
    assert all(m.rows == 0 for m in summary.majors) and sum(summary.confidence_bins) == 0
