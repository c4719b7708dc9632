"""Registry: pending -> ready/failed, promotion only on equal eval data, rollback (SQLite + PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import registry
from shared.db.session import session_scope
from shared.registry import RegistryError
from shared.settings import CommonSettings


def _model_dir(root: Path, version: str) -> Path:
    d = root / version
    d.mkdir(parents=True)
    (d / "model.json").write_text(json.dumps({"version": version}))
    (d / "labels.json").write_text(json.dumps({"codes": ["1111"]}))
    return d


def _ready(url: str, root: Path, version: str, score: float, eval_hash: str = "h1") -> None:
    with session_scope(url) as s:
        registry.create_pending(s, version=version, path=_model_dir(root, version), base_model="tiny")
        registry.mark_ready(
            s, version, metrics={"test": {"accuracy": score}}, eval_score=score, eval_data_hash=eval_hash
        )


def _best(url: str) -> str | None:
    with session_scope(url) as s:
        mv = registry.best_model(s)
        return mv.version if mv else None


def test_lifecycle_and_first_promotion(db_url: str, tmp_path: Path) -> None:
    with session_scope(db_url) as s:
        mv = registry.create_pending(s, version="v1", path=tmp_path / "v1", base_model="tiny", data_hash="d")
        assert mv.status == "pending" and not mv.is_best
    with session_scope(db_url) as s:
        # Artifacts first: a row cannot become ready before its directory is complete.
        with pytest.raises(RegistryError, match="incomplete"):
            registry.mark_ready(s, "v1", metrics={}, eval_score=0.5, eval_data_hash="h1")
    _model_dir(tmp_path, "v1")
    with session_scope(db_url) as s:
        registry.mark_ready(s, "v1", metrics={"x": 1}, eval_score=0.5, eval_data_hash="h1")
        decision = registry.promote(s, "v1")
    assert decision.promote and "no current best" in decision.reason
    assert _best(db_url) == "v1"
    with session_scope(db_url) as s:
        with pytest.raises(RegistryError, match="already exists"):
            registry.create_pending(s, version="v1", path=tmp_path / "v1", base_model="tiny")


def test_promotion_only_when_better_on_same_data(db_url: str, tmp_path: Path) -> None:
    _ready(db_url, tmp_path, "v1", 0.60)
    with session_scope(db_url) as s:
        assert registry.promote(s, "v1").promote
    _ready(db_url, tmp_path, "worse", 0.55)
    _ready(db_url, tmp_path, "equal", 0.60)
    _ready(db_url, tmp_path, "better", 0.70)
    _ready(db_url, tmp_path, "other_data", 0.90, eval_hash="h2")
    with session_scope(db_url) as s:
        assert not registry.promote(s, "worse").promote
        assert not registry.promote(s, "equal").promote  # must beat, not tie
        decision = registry.promote(s, "other_data")
        assert not decision.promote and "not comparable" in decision.reason
        # both re-scored on the candidate's records the best never saw: the candidate loses there
        lost = registry.Rescore(best_version="v1", candidate_score=0.80, best_score=0.95, records=100)
        decision = registry.promote(s, "other_data", rescore=lost)
        assert decision.promote is False and decision.candidate_score == 0.80 and "100 of" in decision.reason
    assert _best(db_url) == "v1"
    with session_scope(db_url) as s:
        decision = registry.promote(s, "better")
        assert (
            decision.promote and decision.best_version == "v1" and "same evaluation data" in decision.reason
        )
    assert _best(db_url) == "better"
    with session_scope(db_url) as s:
        decision = registry.promote(
            s,
            "other_data",
            rescore=registry.Rescore(
                best_version="better", candidate_score=0.85, best_score=0.50, records=100
            ),
        )
        assert decision.promote and decision.rescored
    assert _best(db_url) == "other_data"
    with session_scope(db_url) as s:
        assert sum(mv.is_best for mv in registry.list_versions(s)) == 1


def test_failed_and_pending_versions_never_promote(db_url: str, tmp_path: Path) -> None:
    with session_scope(db_url) as s:
        registry.create_pending(s, version="p", path=_model_dir(tmp_path, "p"), base_model="tiny")
        registry.create_pending(s, version="f", path=_model_dir(tmp_path, "f"), base_model="tiny")
        registry.mark_failed(s, "f", "RuntimeError: boom")
    with session_scope(db_url) as s:
        assert not registry.promote(s, "p").promote
        assert not registry.promote(s, "f", force=True).promote
        with pytest.raises(RegistryError, match="failed"):
            registry.set_best(s, "f")
        with pytest.raises(RegistryError, match="only a pending version"):
            registry.mark_ready(s, "f", metrics={}, eval_score=1.0, eval_data_hash="h")
        assert registry.require_version(s, "f").error == "RuntimeError: boom"
        with pytest.raises(RegistryError, match="no model version 'nope'"):
            registry.promote(s, "nope")
    assert _best(db_url) is None


def test_force_and_rollback(db_url: str, tmp_path: Path) -> None:
    for version, score in (("a", 0.5), ("b", 0.6), ("c", 0.4)):
        _ready(db_url, tmp_path, version, score)
    with session_scope(db_url) as s:
        registry.promote(s, "a")
    with session_scope(db_url) as s:
        registry.promote(s, "b")
    with session_scope(db_url) as s:
        decision = registry.promote(s, "c", force=True)
        assert decision.promote and decision.reason.startswith("forced")
    assert _best(db_url) == "c"
    with session_scope(db_url) as s:
        assert registry.rollback(s).version == "b"
    with session_scope(db_url) as s:
        assert registry.rollback(s).version == "a"  # walks further back, not back and forth
    with session_scope(db_url) as s:
        with pytest.raises(RegistryError, match="nothing to roll back"):
            registry.rollback(s)
    with session_scope(db_url) as s:
        assert registry.rollback(s, "c").version == "c"
    assert _best(db_url) == "c"


def test_best_model_dir(db_url: str, tmp_path: Path) -> None:
    settings = CommonSettings(env="test", data_dir=tmp_path / "data", database_url=db_url)
    assert registry.best_model_dir(settings) is None
    with pytest.raises(RegistryError, match="isco train"):
        registry.model_dir_for(settings, None)
    _ready(db_url, settings.model_store, "v1", 0.5)
    with session_scope(db_url) as s:
        registry.promote(s, "v1")
    assert registry.best_model_dir(settings) == (settings.model_store / "v1").resolve()
    assert registry.model_dir_for(settings, "v1") == (settings.model_store / "v1").resolve()
    assert registry.model_dir_for(settings, str(settings.model_store / "v1")) == settings.model_store / "v1"
    # The model store moved (another container, a copied data dir): the version is found under the new one.
    moved = CommonSettings(env="test", data_dir=tmp_path / "elsewhere", database_url=db_url)
    (moved.model_store).mkdir(parents=True)
    (settings.model_store / "v1").rename(moved.model_store / "v1")
    assert registry.best_model_dir(moved) == moved.model_store / "v1"


def test_version_names_sort_by_time() -> None:
    from datetime import UTC, datetime

    a = registry.new_version_name(datetime(2026, 1, 1, tzinfo=UTC))
    b = registry.new_version_name(datetime(2026, 1, 2, tzinfo=UTC))
    assert a < b and a.startswith("v20260101-")


def test_models_cli_promote_and_rollback(sqlite_url: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.cli import build_app

    settings_env = {
        "ISCO_ENV": "test",
        "ISCO_DATA_DIR": str(tmp_path / "var"),
        "ISCO_DATABASE_URL": sqlite_url,
        "COLUMNS": "200",
    }

    def isco(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(build_app(), list(args), env=settings_env, catch_exceptions=False)

    assert isco("db", "upgrade").exit_code == 0
    _ready(sqlite_url, tmp_path, "a", 0.6)
    _ready(sqlite_url, tmp_path, "b", 0.5)
    assert isco("models", "promote", "a").exit_code == 0
    refused = isco("models", "promote", "b")
    assert refused.exit_code == 1 and "does not beat a" in refused.output
    assert isco("models", "promote", "b", "--force").exit_code == 0 and _best(sqlite_url) == "b"
    rolled = isco("models", "rollback")
    assert rolled.exit_code == 0 and "a is the best model again" in rolled.output
    nothing = isco("models", "rollback")
    assert nothing.exit_code == 2 and "nothing to roll back" in nothing.output
    unknown = isco("models", "show", "zzz")
    assert unknown.exit_code == 2 and "no model version 'zzz'" in unknown.output
