"""The engine cache across a fork: a Celery pool process gets its own connections, the parent keeps its."""

from __future__ import annotations

import multiprocessing
from typing import Any

from sqlalchemy import text

from shared.db.session import get_engine


def _backend_pid(url: str) -> int:
    with get_engine(url).connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _child(url: str, out: Any) -> None:
    out.put(_backend_pid(url))


def test_a_forked_child_gets_its_own_connection_and_the_parents_stays_open(postgres_server_url: str) -> None:
    parent = _backend_pid(postgres_server_url)  # the connection stays in the parent's pool
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child, args=(postgres_server_url, out))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    # sharing the parent's pooled connection, two processes would break each other's transactions
    assert out.get(timeout=5) != parent
    # the child dropped the inherited pool without closing the parent's connection
    assert _backend_pid(postgres_server_url) == parent
