"""How jobs and models read to a coder: a job's name (the uploaded file's, a batch's first titles, a training
run's purpose), a model's figures on each development set, and its coverage-precision curve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from services.gateway.settings import GatewaySettings
from shared import registry
from shared.db.tables import Job, ModelVersion
from shared.jobs.state import TRAINING

CURVE_NAMES = ("coverage_precision.png", "coverage-precision.png")

NAME_TITLES = 2  # a batch job's name quotes its first titles
NAME_TITLE_CHARS = 32


@lru_cache(maxsize=2048)
def _first_titles(input_path: str) -> tuple[str, ...]:
    """The first job titles of a batch job's input records (the input never changes once written)."""
    titles: list[str] = []
    try:
        with open(input_path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                text = str(record.get("job_title") or record.get("duties_description") or "").strip()
                if text:
                    titles.append(
                        text if len(text) <= NAME_TITLE_CHARS else text[: NAME_TITLE_CHARS - 1] + "…"
                    )
                if len(titles) == NAME_TITLES:
                    break
    except (OSError, ValueError):  # gone (expired) or unreadable: the name says less
        return ()
    return tuple(titles)


def job_name(job: Job) -> str:
    """A name a coder recognises a job by: the uploaded file's, a batch's first titles, a training run's
    purpose."""
    options = job.options or {}
    rows = job.rows_total or 0
    if job.kind == "csv":
        return str(options.get("filename") or f"CSV upload of {rows:,} rows")
    if job.kind == "batch":
        head = f"Batch of {rows:,} record{'' if rows == 1 else 's'}"
        titles = () if options.get("expired") else _first_titles(job.input_path)
        if not titles:
            return head
        return f"{head}: " + ", ".join(titles) + (", …" if rows > len(titles) else "")
    if job.kind == TRAINING:
        corrections = options.get("correction_rows")
        if corrections:
            return f"Retraining on {corrections:,} correction{'' if corrections == 1 else 's'}"
        return "Training run"
    return job.kind


_DATASET_WORDS = {"ilo": "ILO", "onet": "O*NET", "ons": "ONS", "esco": "ESCO", "isco": "ISCO"}


def dataset_name(name: str) -> str:
    """A dev set's file stem as words: `ilo_titles_dev` -> "ILO titles"."""
    words = name.removesuffix("_dev").replace("-", "_").split("_")
    return " ".join(_DATASET_WORDS.get(w.lower(), w) for w in words if w) or name


def _share(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Measure:
    """One figure of a model for coders: on which records, how often right, how much it codes alone."""

    on: str
    accuracy: float | None
    auto_coded: float | None = None
    auto_precision: float | None = None


def model_measures(mv: ModelVersion) -> list[Measure]:
    """A model's figures as a coder reads them: accuracy and the auto-coded share (and how often those auto
    codes are right) on each development set, else on the held-out test records."""
    metrics = mv.metrics if isinstance(mv.metrics, dict) else {}
    measured: list[tuple[str, Any]] = []
    devsets = metrics.get("devsets")
    if isinstance(devsets, dict):
        measured = [(dataset_name(str(name)), m) for name, m in sorted(devsets.items())]
    if not measured and isinstance(metrics.get("test"), dict):
        measured = [("held-out test records", metrics["test"])]
    out = []
    for on, m in measured:
        if not isinstance(m, dict):
            continue
        routing = m.get("routing")
        if not isinstance(routing, dict):
            routing = {}
        out.append(
            Measure(
                on,
                _share(m.get("accuracy")),
                _share(routing.get("auto_coded")),
                _share(routing.get("auto_coded_precision")),
            )
        )
    if not out and mv.eval_score is not None:
        out.append(Measure("held-out test records", mv.eval_score))
    return out


def curve_path(settings: GatewaySettings, version: Any) -> Path | None:
    try:
        model_dir = registry.resolve_model_dir(settings, version)
    except Exception:  # a version whose directory is gone has no curve to show
        return None
    for name in CURVE_NAMES:
        if (model_dir / name).is_file():
            return model_dir / name
    found = sorted(model_dir.glob("*coverage*precision*.png")) if model_dir.is_dir() else []
    return found[0] if found else None
