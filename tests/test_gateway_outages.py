"""The gateway when its dependencies fail, and its small promises to clients.

A private PostgreSQL cluster and a private redis-server (tests/faults_support.py) are stopped under a real
uvicorn server: every answer is 503 JSON naming the dependency, never a 500, the client's keep-alive
connection stays open, /ready says which dependency is down, and service comes back when they do. Also:
offline /docs, unknown threshold keys refused, no server paths in job errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.gateway.app import create_app
from services.gateway.auth import create_api_key
from services.gateway.settings import GatewaySettings
from shared.db.migrate import upgrade
from shared.db.session import get_engine, session_scope
from shared.db.tables import Job
from shared.jobs.settings import JobSettings
from shared.jobs.state import create_job, fail
from shared.jobs.views import JobView
from tests.faults_support import PrivatePostgres, RestartableRedis
from tests.serving_helpers import ServerThread, free_port

pytestmark = pytest.mark.timeout(240)

CSV = b"job_title,duties_description\nnurse,cares for patients\n"


class ConnectionCounter(httpx.HTTPTransport):
    """An httpx transport that counts the TCP connections it opens (keep-alive means: one)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        before = {id(c) for c in self._pool.connections}
        response = super().handle_request(request)
        self.opened += len({id(c) for c in self._pool.connections} - before)
        return response


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("outage")
    pg = PrivatePostgres()
    broker = RestartableRedis()
    try:
        upgrade(pg.url)
        settings = GatewaySettings(
            env="test",
            data_dir=tmp / "data",
            database_url=pg.url,
            redis_url=broker.url,
            inference_url=f"http://127.0.0.1:{free_port()}",  # nothing there: /ready reports it
            inference_retries=0,
            inference_connect_timeout_s=1,
            api_key_cache_s=600,  # the key is checked once: the outage then hits the route itself
        )
        settings.ensure_dirs()
        with session_scope(pg.url) as session:
            key, _ = create_api_key(session, "outage", settings.secret_key)
            unseen_key, _ = create_api_key(session, "not yet used", settings.secret_key)
        app = create_app(settings)
        with ServerThread(app) as url:
            yield {
                "url": url,
                "key": key,
                "unseen_key": unseen_key,
                "pg": pg,
                "broker": broker,
                "settings": settings,
            }
    finally:
        get_engine(pg.url).dispose()
        pg.stop(cleanup=True)
        broker.stop()


def _is_503_json(response: httpx.Response, dependency: str) -> dict[str, Any]:
    assert response.status_code == 503, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("connection", "").lower() != "close"
    detail = response.json()["detail"]
    assert detail["dependency"] == dependency and detail["message"]
    return detail


def test_database_outage_is_503_json_and_keeps_the_connection(outage_stack: dict[str, Any]) -> None:
    pg: PrivatePostgres = outage_stack["pg"]
    transport = ConnectionCounter()
    headers = {"Authorization": f"Bearer {outage_stack['key']}"}
    with httpx.Client(base_url=outage_stack["url"], headers=headers, transport=transport, timeout=30) as c:
        assert c.get("/jobs").status_code == 200
        pg.stop()
        stopped = time.monotonic()
        try:
            detail = _is_503_json(c.get("/jobs"), "database")
            assert detail["error"] == "database_unavailable"
            upload = c.post("/predict/csv", files={"file": ("in.csv", CSV, "text/csv")})
            assert _is_503_json(upload, "database")["error"] == "database_unavailable"
            assert _is_503_json(c.get("/jobs/nope"), "database")
            # a key the gateway has not cached yet cannot be checked: the same 503, not a 401 or a 500
            unseen = {"Authorization": f"Bearer {outage_stack['unseen_key']}"}
            checked = c.get("/jobs", headers=unseen)
            assert _is_503_json(checked, "database")["error"] == "database_unavailable"
            assert checked.headers["retry-after"] == "5"
            ready = c.get("/ready")
            assert ready.status_code == 503
            body = ready.json()
            assert "database" in body["down"] and body["database"].startswith("down: ")
            assert body["broker"] == "ok"
            while time.monotonic() - stopped < 5:  # a few seconds of requests against a database that is down
                _is_503_json(c.get("/jobs"), "database")
                time.sleep(0.25)
            assert transport.opened == 1, "the gateway dropped the keep-alive connection"
        finally:
            pg.start()
        back = time.monotonic()
        deadline = back + 30
        while (r := c.get("/jobs")).status_code != 200:
            assert r.status_code == 503, r.text
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        print(
            f"\nPostgreSQL stopped for {back - stopped:.1f} s: 503 JSON throughout, the connection kept; "
            f"serving again {time.monotonic() - back:.1f} s after it came back"
        )
        assert transport.opened == 1


def test_broker_outage_is_503_json_and_ready_names_it(outage_stack: dict[str, Any]) -> None:
    broker: RestartableRedis = outage_stack["broker"]
    headers = {"Authorization": f"Bearer {outage_stack['key']}"}
    with httpx.Client(base_url=outage_stack["url"], headers=headers, timeout=60) as c:
        broker.crash()
        try:
            upload = c.post("/predict/csv", files={"file": ("in.csv", CSV, "text/csv")})
            assert _is_503_json(upload, "broker")["error"] == "queue_unavailable"
            ready = c.get("/ready").json()
            assert "broker" in ready["down"] and ready["database"] == "ok"
            assert c.get("/jobs").status_code == 200  # what does not need the broker still works
        finally:
            broker.start()
        ready = c.get("/ready").json()
        assert "broker" not in ready["down"] and ready["broker"] == "ok"


def test_docs_work_offline(outage_stack: dict[str, Any]) -> None:
    with httpx.Client(base_url=outage_stack["url"], timeout=30) as c:
        page = c.get("/docs")
        assert page.status_code == 200
        assert "/docs-assets/swagger-ui-bundle.js" in page.text and "/docs-assets/swagger-ui.css" in page.text
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        script = c.get("/docs-assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
        assert c.get("/docs-assets/swagger-ui.css").status_code == 200
        assert c.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict/job", {"job_title": "nurse", "thresholds": {"units": 0.3}}),
        ("/predict/batch", {"records": [{"job_title": "nurse"}], "thresholds": {"unit": 0.3, "minr": 0.2}}),
    ],
)
def test_unknown_threshold_keys_are_refused(outage_stack: dict[str, Any], path: str, body: Any) -> None:
    headers = {"Authorization": f"Bearer {outage_stack['key']}"}
    response = httpx.post(outage_stack["url"] + path, json=body, headers=headers, timeout=30)
    assert response.status_code == 422, response.text
    fields = [e["field"] for e in response.json()["detail"]]
    assert any(f.startswith("thresholds.") for f in fields), fields


def test_job_errors_show_no_server_paths(outage_stack: dict[str, Any], tmp_path: Path) -> None:
    settings = JobSettings(database_url=outage_stack["settings"].database_url, env="test")
    secret_place = tmp_path / "srv" / "isco" / "uploads" / "abc.csv"
    with session_scope(settings.db_url) as session:
        create_job(
            session, job_id="pathy", kind="csv", owner_key_id=None, input_file=secret_place, rows_total=1,
            options={}, settings=settings,
        )  # fmt: skip
        fail(session, "pathy", f"FileNotFoundError: [Errno 2] No such file: '{secret_place}'", settings)
    with session_scope(settings.db_url) as session:
        job = session.get(Job, "pathy")
        assert job is not None and job.error is not None
        assert str(tmp_path) not in job.error and "'.../abc.csv'" in job.error
        view = JobView.of(job, "s", "r")
        assert view.error == job.error
