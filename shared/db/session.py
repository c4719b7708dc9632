"""Engine and session factory. Requests and tasks commit at their boundary; helpers only flush."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, tuple[int, Engine]] = {}  # url -> (the process that made it, the engine)
_engines_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """One pooled engine per URL per process.

    A forked child (a Celery pool process) gets its own: the parent's pool holds connections the parent still
    uses (its start-up reconciliation opens one before the pool forks again), and two processes on one
    connection break each other's transactions ("can't change 'autocommit' now: connection in
    transaction" at the pre-ping). The child drops the inherited pool without closing those connections
    (`dispose(close=False)`, SQLAlchemy's recipe for pools and os.fork())."""
    pid = os.getpid()
    with _engines_lock:
        cached = _engines.get(url)
        if cached is not None and cached[0] == pid:
            return cached[1]
        if cached is not None:
            cached[1].dispose(close=False)
        engine = _new_engine(url)
        _engines[url] = (pid, engine)
        return engine


def forget_engines() -> None:
    """Close this process's engines and forget them (tests that restart the database use it)."""
    with _engines_lock:
        for pid, engine in _engines.values():
            engine.dispose(close=pid == os.getpid())
        _engines.clear()


def _new_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the gateway read job progress while a worker writes it.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error: the boundary of a request or a task."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """`transaction` on the database at `url` (for CLI commands and tasks)."""
    with transaction(session_factory(url)) as session:
        yield session
