"""Model registry: one row per trained model version, an `is_best` alias, and the promotion rules.

Shaped like MLflow's model versions: a row is created `pending` before training, the model directory is
written to the model store, and only then is the row marked `ready` (or `failed`). Exactly one ready version
is the best; services poll `best_model` and hot-reload when its version changes.

Promotion rule: a candidate replaces the best only if it scores higher on the *same* evaluation data
(equal `eval_data_hash`). When the hashes differ the caller may score both on the candidate's evaluation
records that the best never saw (a `Rescore`: another split's test records may be the best's training
records) and pass that in; otherwise promotion is refused with the reason. Helpers here only
flush: the caller commits (CLI command, training task).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.session import session_scope
from shared.db.tables import ModelStatus, ModelVersion, utcnow
from shared.settings import CommonSettings

# Files that a complete model directory has; a version is only marked ready when they exist.
REQUIRED_ARTIFACTS = ("model.json", "labels.json")


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a candidate becomes the best model, and why (shown to the user and stored in metrics)."""

    promote: bool
    reason: str
    candidate_score: float | None = None
    best_version: str | None = None
    best_score: float | None = None
    rescored: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promote,
            "reason": self.reason,
            "candidate_score": self.candidate_score,
            "previous_best": self.best_version,
            "previous_best_score": self.best_score,
            "previous_best_rescored": self.rescored,
        }


@dataclass(frozen=True)
class Rescore:
    """Both models scored on the same records: the candidate's test records the current best never saw."""

    best_version: str
    candidate_score: float
    best_score: float
    records: int


def new_version_name(now: datetime | None = None) -> str:
    """A sortable, unique version name such as `v20261125-094512-3fa2`."""
    now = now or datetime.now(UTC)
    return f"v{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def get_version(session: Session, version: str) -> ModelVersion | None:
    """The row for `version`, or None."""
    return session.scalar(select(ModelVersion).where(ModelVersion.version == version))


def require_version(session: Session, version: str) -> ModelVersion:
    """The row for `version`; raises RegistryError naming the version when it is unknown."""
    mv = get_version(session, version)
    if mv is None:
        raise RegistryError(f"no model version {version!r} in the registry (see `isco models list`)")
    return mv


def list_versions(session: Session, limit: int | None = None) -> list[ModelVersion]:
    """Model versions, newest first."""
    stmt = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if limit:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def best_model(session: Session) -> ModelVersion | None:
    """The current best ready model version, or None when nothing has been promoted."""
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.is_best.is_(True), ModelVersion.status == ModelStatus.ready)
        .order_by(ModelVersion.promoted_at.desc())
        .limit(1)
    )


def resolve_model_dir(settings: CommonSettings, mv: ModelVersion) -> Path:
    """The directory of a model version on this machine.

    Rows store absolute paths; when the model store is mounted elsewhere (another container, a moved data dir)
    the same version directory under this machine's `model_store` is used instead.
    """
    path = Path(mv.path)
    if path.is_dir():
        return path
    local = settings.model_store / path.name
    return local if local.is_dir() else path


def best_model_dir(settings: CommonSettings) -> Path | None:
    """The directory of the best model, or None when the registry has no best model yet."""
    with session_scope(settings.db_url) as session:
        mv = best_model(session)
        return resolve_model_dir(settings, mv) if mv else None


def model_dir_for(settings: CommonSettings, version: str | None) -> Path:
    """The directory for a version name, a model directory path, or (None) the best model.

    Raises RegistryError with a clear message when nothing matches.
    """
    if version is None:
        best = best_model_dir(settings)
        if best is None:
            raise RegistryError("no best model in the registry: train one with `isco train` first")
        return best
    candidate = Path(version)
    if candidate.is_dir() and (candidate / "model.json").is_file():
        return candidate
    with session_scope(settings.db_url) as session:
        mv = require_version(session, version)
        if mv.status != ModelStatus.ready:
            raise RegistryError(f"model version {version!r} is {mv.status}, not ready")
        return resolve_model_dir(settings, mv)


def create_pending(
    session: Session,
    *,
    version: str,
    path: Path,
    base_model: str,
    data_hash: str | None = None,
    parent_version: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """Record a model version that is about to be trained (status pending)."""
    if get_version(session, version) is not None:
        raise RegistryError(f"model version {version!r} already exists")
    mv = ModelVersion(
        version=version,
        path=str(Path(path).resolve()),
        base_model=base_model[:300],
        status=ModelStatus.pending,
        is_best=False,
        metrics=metrics or {},
        data_hash=data_hash,
        parent_version=parent_version,
    )
    session.add(mv)
    session.flush()
    return mv


def mark_ready(
    session: Session,
    version: str,
    *,
    metrics: dict[str, Any],
    eval_score: float,
    eval_data_hash: str,
) -> ModelVersion:
    """Mark a pending version ready. Its directory must already be complete: artifacts first, then the row."""
    mv = require_version(session, version)
    if mv.status != ModelStatus.pending:
        raise RegistryError(
            f"model version {version!r} is {mv.status}; only a pending version can become ready"
        )
    model_dir = Path(mv.path)
    missing = [name for name in REQUIRED_ARTIFACTS if not (model_dir / name).is_file()]
    if missing:
        raise RegistryError(f"model directory {model_dir} is incomplete (missing {', '.join(missing)})")
    mv.status = ModelStatus.ready
    mv.metrics = metrics
    mv.eval_score = float(eval_score)
    mv.eval_data_hash = eval_data_hash
    mv.error = None
    session.flush()
    return mv


def mark_failed(session: Session, version: str, error: str) -> ModelVersion:
    """Mark a version failed with the error; a failed version can never be promoted."""
    mv = require_version(session, version)
    mv.status = ModelStatus.failed
    mv.is_best = False
    mv.error = error[:10_000]
    session.flush()
    return mv


def decide_promotion(
    candidate: ModelVersion,
    best: ModelVersion | None,
    *,
    rescore: Rescore | None = None,
    min_delta: float = 0.0,
) -> PromotionDecision:
    """Apply the promotion rule without changing anything.

    `rescore`: both models scored on the same records, for when they were evaluated on different data
    (different `eval_data_hash`).
    """
    if candidate.status != ModelStatus.ready:
        return PromotionDecision(False, f"{candidate.version} is {candidate.status}, not ready")
    if candidate.eval_score is None or not candidate.eval_data_hash:
        return PromotionDecision(False, f"{candidate.version} has no evaluation score")
    score = candidate.eval_score
    if best is None:
        return PromotionDecision(True, "no current best model", score)
    if best.version == candidate.version:
        return PromotionDecision(
            False, f"{candidate.version} is already the best model", score, best.version, best.eval_score
        )
    if best.eval_data_hash == candidate.eval_data_hash and best.eval_score is not None:
        best_score, rescored, where = best.eval_score, False, "the same evaluation data"
    elif rescore is not None and rescore.best_version == best.version:
        score, best_score, rescored = rescore.candidate_score, rescore.best_score, True
        where = (
            f"{rescore.records:,} of the candidate's test records the best never saw (the best was evaluated "
            f"on other data, hash {(best.eval_data_hash or 'none')[:12]} vs {candidate.eval_data_hash[:12]}, "
            "so both were re-scored)"
        )
    else:
        return PromotionDecision(
            False,
            f"not comparable: {best.version} was evaluated on other data (hash "
            f"{(best.eval_data_hash or 'none')[:12]} vs {candidate.eval_data_hash[:12]}); "
            "re-score it on the same data or promote by hand with --force",
            score,
            best.version,
            best.eval_score,
        )
    if score > best_score + min_delta:
        return PromotionDecision(
            True,
            f"{score:.4f} beats {best.version} ({best_score:.4f}) on {where}",
            score,
            best.version,
            best_score,
            rescored,
        )
    return PromotionDecision(
        False,
        f"{score:.4f} does not beat {best.version} ({best_score:.4f}) on {where}",
        score,
        best.version,
        best_score,
        rescored,
    )


def set_best(session: Session, version: str) -> ModelVersion:
    """Make `version` the one best model (no rule applied: callers decide). Records the promotion time."""
    mv = require_version(session, version)
    if mv.status != ModelStatus.ready:
        raise RegistryError(f"model version {version!r} is {mv.status}; only a ready version can be the best")
    _lock_best(session)
    session.execute(update(ModelVersion).where(ModelVersion.id != mv.id).values(is_best=False))
    mv.is_best = True
    mv.promoted_at = utcnow()
    session.flush()
    return mv


def promote(
    session: Session,
    version: str,
    *,
    force: bool = False,
    rescore: Rescore | None = None,
    min_delta: float = 0.0,
) -> PromotionDecision:
    """Promote `version` to best if it beats the current best on the same evaluation data (or with force)."""
    candidate = require_version(session, version)
    best = best_model(session)
    decision = decide_promotion(candidate, best, rescore=rescore, min_delta=min_delta)
    if not decision.promote and force:
        if candidate.status != ModelStatus.ready:
            return decision
        if best is not None and best.version == candidate.version:
            return decision
        decision = PromotionDecision(
            True,
            f"forced by hand ({decision.reason})",
            decision.candidate_score,
            decision.best_version,
            decision.best_score,
            decision.rescored,
        )
    if decision.promote:
        set_best(session, version)
    return decision


def rollback(session: Session, to_version: str | None = None) -> ModelVersion:
    """Make an earlier model the best again.

    Without `to_version`: the ready version promoted most recently *before* the current best. Rolling back
    does not touch promotion times, so repeated rollbacks walk further back in the promotion history.
    """
    current = best_model(session)
    target: ModelVersion | None
    if to_version is not None:
        target = require_version(session, to_version)
    else:
        if current is None or current.promoted_at is None:
            raise RegistryError("no current best model to roll back from")
        target = session.scalar(
            select(ModelVersion)
            .where(
                ModelVersion.status == ModelStatus.ready,
                ModelVersion.promoted_at.is_not(None),
                ModelVersion.promoted_at < current.promoted_at,
                ModelVersion.id != current.id,
            )
            .order_by(ModelVersion.promoted_at.desc())
            .limit(1)
        )
        if target is None:
            raise RegistryError(
                f"{current.version} is the first promoted model; there is nothing to roll back to"
            )
    if target.status != ModelStatus.ready:
        raise RegistryError(
            f"model version {target.version!r} is {target.status}; only a ready version can be best"
        )
    _lock_best(session)
    session.execute(update(ModelVersion).where(ModelVersion.id != target.id).values(is_best=False))
    target.is_best = True
    session.flush()
    return target


def _lock_best(session: Session) -> None:
    # Serialise concurrent promotions on PostgreSQL (row locks on the current best); SQLite locks the file.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(ModelVersion.id).where(ModelVersion.is_best.is_(True)).with_for_update()).all()


def describe(mv: ModelVersion) -> dict[str, Any]:
    """A JSON-friendly summary of a version row (for `isco models show` and logs)."""
    return {
        "version": mv.version,
        "status": mv.status,
        "is_best": mv.is_best,
        "path": mv.path,
        "base_model": mv.base_model,
        "parent_version": mv.parent_version,
        "eval_score": mv.eval_score,
        "eval_data_hash": mv.eval_data_hash,
        "data_hash": mv.data_hash,
        "created_at": mv.created_at.isoformat() if mv.created_at else None,
        "promoted_at": mv.promoted_at.isoformat() if mv.promoted_at else None,
        "error": mv.error,
        "metrics": mv.metrics,
    }
