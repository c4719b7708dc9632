"""Retrain with corrections: the review decisions become a corrections file and a training job is queued.

Used by the review page and by `isco review retrain`. The run goes through the trainer's usual evaluation and
promotion (services/trainer/pipeline.py); the gateway only writes the file and sends the task by name to the
`training` queue (services/worker/client.py), so it never imports the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.worker.client import enqueue_training
from shared.db.tables import ReviewDecision, utcnow
from shared.files import atomic_write
from shared.jobs.settings import JobSettings
from shared.review.decisions import ReviewError
from shared.review.exports import corrections_csv


def corrections_dir(settings: JobSettings) -> Path:
    return settings.data_dir / "corrections"


def write_corrections(
    settings: JobSettings, decisions: Sequence[ReviewDecision], label: str
) -> tuple[Path, int]:
    """Decisions with a code as a corrections CSV on the shared volume (the training worker reads it there):
    (path, rows). Raises ReviewError when there is none."""
    coded = [d for d in decisions if d.final_code]
    if not coded:
        raise ReviewError("There are no review decisions with a code yet: nothing to retrain on.")
    folder = corrections_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label}-{utcnow().strftime('%Y%m%dT%H%M%S%f')}.csv"
    atomic_write(path, corrections_csv(coded))
    return path, len(coded)


def queue_retraining(
    settings: JobSettings,
    decisions: Sequence[ReviewDecision],
    owner_key_id: int | None,
    *,
    label: str,
    trainer_settings: dict[str, Any] | None = None,
) -> str:
    """Write the corrections file and queue a training job on the `training` queue; returns the job id."""
    path, rows = write_corrections(settings, decisions, label)
    options: dict[str, Any] = {"corrections": str(path), "correction_rows": rows, "source": "review"}
    if trainer_settings:
        options["settings"] = trainer_settings
    return enqueue_training(settings, options, owner_key_id)
