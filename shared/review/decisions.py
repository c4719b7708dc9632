"""Review decisions: one current `ReviewDecision` per result row plus an append-only `ReviewEvent` for each
change (the audit trail), and the queries over them.

A coder decides the rows of the review queue, and may check a seeded sample of the auto-coded rows as well
(`shared.review.audit`): which rows are which is read from the result, so a decision needs no kind of its own.
Helpers flush; the caller (the request) commits.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.tables import Job, JobStatus, ReviewAction, ReviewDecision, ReviewEvent, utcnow
from shared.review.results import ResultRow
from shared.taxonomy import Taxonomy, get_taxonomy


class ReviewError(ValueError):
    """A decision that cannot be recorded (unknown row, invalid code); the message says why."""


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
    return record_final_code(
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


def audit_trail(session: Session, job_id: str) -> list[ReviewEvent]:
    """Every decision made on the job's rows, oldest first."""
    return list(
        session.scalars(select(ReviewEvent).where(ReviewEvent.job_id == job_id).order_by(ReviewEvent.id))
    )


def record_final_code(
    session: Session,
    job: Job,
    row_number: int,
    final_code: str | None,
    *,
    action: str,
    reviewer_name: str,
    reviewer_key_id: int | None = None,
    job_title: str = "",
    duties_description: str = "",
    model_code: str | None = None,
) -> ReviewDecision:
    """Record a reviewer's final code (None: uncodable) for one result row: the current decision is
    replaced and the change is added to the audit trail. Flushes; the request commits."""
    decision = session.scalars(
        select(ReviewDecision).where(ReviewDecision.job_id == job.id, ReviewDecision.row_number == row_number)
    ).first()
    previous = decision.final_code if decision is not None else None
    if decision is None:
        decision = ReviewDecision(
            job_id=job.id,
            row_number=row_number,
            job_title=job_title,
            duties_description=duties_description,
            model_code=model_code,
        )
        session.add(decision)
    decision.final_code = final_code
    decision.action = action
    decision.reviewer_key_id = reviewer_key_id
    decision.reviewer_name = reviewer_name
    decision.decided_at = utcnow()
    session.add(
        ReviewEvent(
            job_id=job.id,
            row_number=row_number,
            model_code=decision.model_code,
            previous_code=previous,
            final_code=final_code,
            action=action,
            reviewer_key_id=reviewer_key_id,
            reviewer_name=reviewer_name,
        )
    )
    session.flush()
    return decision


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


def decisions_by_job(session: Session, job_ids: Iterable[str]) -> dict[str, list[ReviewDecision]]:
    """The current decisions of several jobs (the job list's counts), by job id."""
    ids = list(job_ids)
    out: dict[str, list[ReviewDecision]] = {job_id: [] for job_id in ids}
    if ids:
        for d in session.scalars(select(ReviewDecision).where(ReviewDecision.job_id.in_(ids))):
            out[d.job_id].append(d)
    return out
