"""`isco review export|retrain`: the review decisions as a corrections file, or a training run on them.

    isco review export -o corrections.csv [--job ID] [--key KEY_ID]
    isco review retrain [--key KEY_ID] [--profile quick]

Operator commands (they read the metadata DB directly): without --key they take every key's decisions.
`retrain` queues the run on the `training` queue, as the page's "Retrain with corrections" does; a training
worker (`celery ... -Q training`) runs it through the usual evaluation and promotion.
"""

from __future__ import annotations

from pathlib import Path

import typer
from sqlalchemy.orm import Session

from services.gateway.review.retrain import queue_retraining
from shared.db.session import session_scope
from shared.db.tables import ReviewDecision
from shared.jobs.settings import JobSettings
from shared.review.decisions import ReviewError, all_decisions, owner_decisions
from shared.review.exports import corrections_csv

app = typer.Typer(help="Review decisions: export them as corrections, retrain on them.", no_args_is_help=True)


def _decisions(session: Session, key: int | None, job: str | None) -> list[ReviewDecision]:
    if key is not None:
        return owner_decisions(session, key, job)
    return all_decisions(session, job)


@app.command("export")
def export(
    output: Path = typer.Option(..., "-o", "--output", help="where to write the corrections CSV"),
    job: str | None = typer.Option(None, "--job", help="only this job's decisions"),
    key: int | None = typer.Option(None, "--key", help="only the decisions on this key's jobs (key id)"),
) -> None:
    """Write decisions in the `isco train --corrections` format (job_title, duties_description,
    corrected_isco_code); rows marked uncodable are left out."""
    settings = JobSettings()
    with session_scope(settings.db_url) as session:
        decisions = _decisions(session, key, job)
        text = corrections_csv(decisions)
    output.write_text(text, encoding="utf-8")
    rows = text.count("\n") - 1
    typer.echo(f"wrote {rows} corrections ({len(decisions)} decisions) to {output}")


@app.command("retrain")
def retrain(
    key: int | None = typer.Option(None, "--key", help="only the decisions on this key's jobs (key id)"),
    profile: str | None = typer.Option(None, "--profile", help="trainer profile (e.g. quick, full)"),
) -> None:
    """Queue a training run on the `training` queue that learns from the review decisions."""
    settings = JobSettings()
    with session_scope(settings.db_url) as session:
        decisions = _decisions(session, key, None)
        try:
            job_id = queue_retraining(
                settings,
                decisions,
                key,
                label=f"key-{key}" if key is not None else "all",
                trainer_settings={"profile": profile} if profile else None,
            )
        except ReviewError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
    typer.echo(job_id)
    typer.echo(f"training job {job_id} queued on the training queue ({len(decisions)} decisions)", err=True)
