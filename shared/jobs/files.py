"""A job's files on the shared volume, and deleting them.

uploads/<job_id>.csv | .jsonl       the input (CSV upload, or JSON lines of batch records)
results/<job_id>/parts/<n>.part      one finished chunk of results, written to a temp name and renamed
results/<job_id>/result.csv | .jsonl the final result: header + parts in chunk order
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from shared.db.tables import Job
from shared.settings import CommonSettings

JobKind = Literal["csv", "batch"]  # prediction jobs, by the form of their input


def input_path(settings: CommonSettings, job_id: str, kind: JobKind) -> Path:
    return settings.uploads_dir / f"{job_id}.{'csv' if kind == 'csv' else 'jsonl'}"


def job_dir(settings: CommonSettings, job_id: str) -> Path:
    return settings.results_dir / job_id


def parts_dir(settings: CommonSettings, job_id: str) -> Path:
    return job_dir(settings, job_id) / "parts"


def part_path(settings: CommonSettings, job_id: str, chunk: int) -> Path:
    return parts_dir(settings, job_id) / f"{chunk:08d}.part"


def result_path(settings: CommonSettings, job_id: str, kind: str) -> Path:
    return job_dir(settings, job_id) / f"result.{'csv' if kind == 'csv' else 'jsonl'}"


def delete_job_files(settings: CommonSettings, job: Job) -> None:
    """Remove a job's input and results (missing files are fine: deletion may be repeated)."""
    Path(job.input_path).unlink(missing_ok=True)
    shutil.rmtree(job_dir(settings, job.id), ignore_errors=True)
