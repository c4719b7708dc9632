"""Retrain with corrections: the review decisions become a corrections file and a training job is queued.

Used by the review page and by `isco review retrain`. The run goes through the trainer's usual evaluation and
promotion (services/trainer/pipeline.py); the gateway only writes the file and sends the task by name.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from services.worker.client import enqueue_training
from shared import review
from shared.db.tables import utcnow
from shared.jobs import JobSettings


def corrections_dir(settings: JobSettings) -> Path:
    return settings.data_dir / "corrections"


def write_corrections(settings: JobSettings, session: Session, owner_key_id: int | None) -> tuple[Path, int]:
    """The key's decisions (with a code) as a corrections CSV on the shared volume: (path, rows)."""
    decisions = [d for d in review.owner_decisions(session, owner_key_id) if d.final_code]
    if not decisions:
        raise review.ReviewError("There are no review decisions with a code yet: nothing to retrain on.")
    folder = corrections_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"key-{owner_key_id if owner_key_id is not None else 'dev'}-{stamp}.csv"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(review.corrections_csv(decisions), encoding="utf-8")
    tmp.replace(path)
    return path, len(decisions)


def queue_retraining(settings: JobSettings, session: Session, owner_key_id: int | None) -> str:
    """Write the corrections file and queue a training job on the `training` queue; returns the job id."""
    path, rows = write_corrections(settings, session, owner_key_id)
    return enqueue_training(
        settings, {"corrections": str(path), "correction_rows": rows, "source": "review"}, owner_key_id
    )
