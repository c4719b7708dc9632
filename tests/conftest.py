"""Shared fixtures: settings on a temporary data dir, migrated databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.db.migrate import upgrade
from shared.settings import CommonSettings

POSTGRES_URL = os.environ.get("ISCO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ISCO_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _postgres_reachable() -> bool:
    try:
        with create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3}).connect():
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A private, migrated PostgreSQL database for this test session (dropped at the end).

    In CI PostgreSQL must be there; elsewhere its tests are skipped when it is not.
    """
    if not _postgres_reachable():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}")
        pytest.skip("PostgreSQL not reachable")
    name = f"isco_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    from shared.db.session import forget_engines

    forget_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'isco.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database on each supported backend; PostgreSQL tables start empty in each test."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
        return
    url = request.getfixturevalue("postgres_server_url")
    # Emptied before each test: other fixtures (e.g. a Celery worker's) share this session database.
    with create_engine(url).begin() as conn:
        conn.execute(text("TRUNCATE jobs, model_versions, api_keys RESTART IDENTITY CASCADE"))
    yield url


@pytest.fixture
def common_settings(tmp_path: Path, sqlite_url: str) -> CommonSettings:
    s = CommonSettings(env="test", data_dir=tmp_path / "data", database_url=sqlite_url, redis_url=REDIS_URL)
    s.ensure_dirs()
    return s
