"""The API says what it does (issue 31, "On the API"): the gateway app in-process, no inference service.

Covers: job times carry their zone (UTC) on SQLite and PostgreSQL; every error answer has the one declared
shape (shared.schemas.ErrorResponse) and the OpenAPI document references it for every 4xx/5xx; the rule "a
title or a duties description" is in the request schemas and non-booleans are refused for `explain` (strict
request models); every key a request presents must be valid, whatever the `Authorization` scheme; OPTIONS
and 405 list every method a path takes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import text

from services.gateway.app import create_app
from services.gateway.auth import create_api_key
from services.gateway.settings import GatewaySettings
from shared.db.session import session_scope
from shared.db.tables import utcnow
from shared.jobs.settings import JobSettings
from shared.jobs.state import create_job, fail, start
from shared.jobs.views import JobView
from shared.schemas import ErrorInfo, ErrorResponse, FieldError, JobRecord, PredictRequest, Thresholds
from tests.serving_helpers import free_port

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


def contract_settings(db_url: str, tmp_path: Path, **kw: Any) -> GatewaySettings:
    """A gateway whose inference service and broker are not there: these tests never reach them."""
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": tmp_path / "data",
        "database_url": db_url,
        "inference_url": f"http://127.0.0.1:{free_port()}",
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "api_key_cache_s": 0,
        "inference_retries": 0,
    }
    return GatewaySettings(**{**values, **kw})


def new_key(settings: GatewaySettings, name: str = "contract") -> str:
    with session_scope(settings.db_url) as session:
        key, _ = create_api_key(session, name, settings.secret_key)
    return key


@pytest.fixture
def anonymous(sqlite_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """Auth disabled: for what does not depend on the caller."""
    with TestClient(create_app(contract_settings(sqlite_url, tmp_path, auth_disabled=True))) as c:
        yield c


def error_body(response: Any) -> ErrorResponse:
    """The body as the one declared error shape (fails the test when it is not)."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return ErrorResponse.model_validate(response.json())


# ---------------------------------------------------------------------------------------------------------
# 1. job times carry their zone
# ---------------------------------------------------------------------------------------------------------


def test_job_times_are_utc_with_zone_on_every_backend(db_url: str, tmp_path: Path) -> None:
    settings = contract_settings(db_url, tmp_path)
    key = new_key(settings)
    job_settings = JobSettings(env="test", data_dir=tmp_path / "data", database_url=db_url)
    with session_scope(db_url) as session:
        owner = session.execute(text("SELECT id FROM api_keys")).scalar_one()
        for job_id in ("queued-job", "failed-job"):
            create_job(
                session,
                job_id=job_id,
                kind="csv",
                owner_key_id=owner,
                input_file=tmp_path / f"{job_id}.csv",
                rows_total=3,
                options={},
                settings=job_settings,
            )
        assert start(session, "failed-job", started_at=utcnow())
        assert fail(session, "failed-job", "broken", job_settings)
    with TestClient(create_app(settings), headers={"X-API-Key": key}) as c:
        listed = c.get("/jobs")
        assert listed.status_code == 200, listed.text
        one = c.get("/jobs/failed-job")
        assert one.status_code == 200, one.text
        cancelled = c.delete("/jobs/queued-job")
        assert cancelled.status_code == 200, cancelled.text
    views = [*listed.json(), one.json(), cancelled.json()]
    assert {v["job_id"] for v in views} == {"queued-job", "failed-job"}
    now = datetime.now(UTC)
    for view in views:
        for name in ("created_at", "started_at", "finished_at", "expires_at"):
            value = view[name]
            if value is None:
                continue
            assert RFC3339_UTC.match(value), (name, value)
            moment = datetime.fromisoformat(value)
            assert moment.utcoffset() == timedelta(0)
            # read back as UTC, not as local time: within minutes of now (expiry: the TTL ahead)
            ahead = timedelta(hours=job_settings.job_ttl_hours) if name == "expires_at" else timedelta(0)
            assert abs(moment - ahead - now) < timedelta(minutes=5), (name, value)
    failed = one.json()
    assert all(failed[name] for name in ("created_at", "started_at", "finished_at", "expires_at"))


def test_job_view_reads_naive_times_as_utc() -> None:
    naive = datetime(2025, 5, 1, 9, 30)
    local = datetime(2025, 5, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    view = JobView(
        job_id="j",
        kind="csv",
        status="queued",
        rows_total=1,
        rows_done=0,
        rows_failed=0,
        progress=0.0,
        model_version=None,
        error=None,
        created_at=naive,
        started_at=local,
        finished_at=None,
        expires_at=naive,
        status_url="s",
        result_url="r",
    )
    dumped = json.loads(view.model_dump_json())
    assert dumped["created_at"] == dumped["started_at"] == dumped["expires_at"] == "2025-05-01T09:30:00Z"


# ---------------------------------------------------------------------------------------------------------
# 2. one error shape, declared once, on every route
# ---------------------------------------------------------------------------------------------------------


def test_openapi_declares_one_error_shape_for_every_error(anonymous: TestClient) -> None:
    spec = anonymous.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["FieldError"]["required"]) == {"field", "reason", "type"}
    assert "HTTPValidationError" not in json.dumps(spec)
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    operations = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    assert len(operations) >= 9
    for path, method, op in operations:
        responses = op["responses"]
        for status, response in responses.items():
            if status[0] in "45" and not (path == "/ready" and status == "503"):
                assert response["content"] == {"application/json": {"schema": error_ref}}, (path, status)
        if op.get("security"):
            assert {"401", "503"} <= set(responses), (method, path)
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in responses, (method, path)
        if op.get("requestBody"):
            assert "413" in responses, (method, path)


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/jobs", {"params": {"limit": 0}}),
        ("GET", "/jobs", {"params": {"limit": "many"}}),
        ("GET", "/jobs", {"params": {"status": "sleeping"}}),
        ("POST", "/predict/job", {"json": {"job_title": 5}}),
        ("POST", "/predict/batch", {"json": {"records": []}}),
        ("POST", "/predict/job", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
        (
            "POST",
            "/predict/job",
            {"content": b'{"a": "\xff"}', "headers": {"Content-Type": "application/json"}},
        ),
        ("POST", "/predict/csv", {"params": {"top_k": 0}, "files": {"file": ("a.csv", b"job_title\nx\n")}}),
        (
            "POST",
            "/predict/csv",
            {  # the file part never ends: the upload's own 400 becomes a field error
                "content": b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\nx\n',
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
        ),
    ],
)
def test_422_bodies_are_field_errors_on_every_route(
    anonymous: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = anonymous.request(method, path, **kwargs)
    assert response.status_code == 422, response.text
    detail = error_body(response).detail
    assert isinstance(detail, list) and detail, detail
    assert all(isinstance(e, FieldError) and e.field and e.reason and e.type for e in detail)


def test_other_errors_have_the_declared_shape(sqlite_url: str, tmp_path: Path) -> None:
    settings = contract_settings(sqlite_url, tmp_path, max_body_bytes=2048)
    key = new_key(settings)
    with TestClient(create_app(settings)) as c:
        unauthorised = c.get("/jobs")
        assert unauthorised.status_code == 401 and isinstance(error_body(unauthorised).detail, str)
        headers = {"X-API-Key": key}
        missing = c.get("/jobs/no-such-job", headers=headers)
        assert missing.status_code == 404
        assert isinstance(info := error_body(missing).detail, ErrorInfo) and info.error == "not_found"
        too_large = c.post("/predict/job", json={"job_title": "x" * 4000}, headers=headers)
        assert too_large.status_code == 413
        info = error_body(too_large).detail
        assert (
            isinstance(info, ErrorInfo) and info.error == "too_large" and too_large.json()["detail"]["limit"]
        )
        bad_file = c.post("/predict/csv", files={"file": ("a.csv", b"name\nx\n")}, headers=headers)
        assert bad_file.status_code == 422
        info = error_body(bad_file).detail
        assert isinstance(info, ErrorInfo) and info.error == "missing_columns"
        queue_down = c.post("/predict/csv", files={"file": ("a.csv", b"job_title\nnurse\n")}, headers=headers)
        assert queue_down.status_code == 503
        assert isinstance(error_body(queue_down).detail, ErrorInfo)
        inference_down = c.post("/predict/job", json={"job_title": "nurse"}, headers=headers)
        assert inference_down.status_code == 503 and isinstance(error_body(inference_down).detail, str)
        not_allowed = c.put("/jobs/x", headers=headers)
        assert not_allowed.status_code == 405 and isinstance(error_body(not_allowed).detail, str)


# ---------------------------------------------------------------------------------------------------------
# 3. the record rule is in the schema; non-booleans are refused
# ---------------------------------------------------------------------------------------------------------


def test_title_or_duties_rule_is_in_the_request_schemas(anonymous: TestClient) -> None:
    schemas = anonymous.get("/openapi.json").json()["components"]["schemas"]
    for name in ("JobRecord", "JobPredictRequest"):
        any_of = schemas[name]["anyOf"]
        assert [branch["required"] for branch in any_of] == [["job_title"], ["duties_description"]]
        assert all(re.search(next(iter(b["properties"].values()))["pattern"], "x") for b in any_of)
    assert schemas["PredictRequest"]["properties"]["records"]["items"] == {
        "$ref": "#/components/schemas/JobRecord"
    }


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ("nurse", True),
        (" a ", True),
        ("", False),
        ("   ", False),
        ("\t\n\u00a0\u2003", False),
        ("\x1f", False),
        ("\x1c", False),  # white space to Python, not to ECMA-262's \s: found by schemathesis
        ("\x85", False),
        ("\ufeff", True),  # the other way round: text to Python's strip
    ],
)
def test_schema_pattern_and_validator_agree(text: str, accepted: bool) -> None:
    """The schema's pattern and the model accept the same strings, whichever regex engine reads the pattern:
    Python's, or ECMA-262's as JSON Schema says (the pattern lists the characters; no class like \\S)."""
    from shared.schemas import HAS_TEXT

    assert "\\S" not in HAS_TEXT and "\\s" not in HAS_TEXT
    assert bool(re.search(HAS_TEXT, text)) is accepted
    assert all(c.isspace() for c in text) is not accepted
    try:
        JobRecord(job_title=text)
    except ValidationError:
        assert not accepted
    else:
        assert accepted


@pytest.mark.parametrize("explain", [0, 1, "true", "false", "", None, [], {}])
def test_explain_must_be_a_boolean(anonymous: TestClient, explain: Any) -> None:
    job = anonymous.post("/predict/job", json={"job_title": "nurse", "explain": explain})
    assert job.status_code == 422, job.text
    assert [e.field for e in error_body(job).detail] == ["explain"]  # type: ignore[union-attr]
    batch = anonymous.post("/predict/batch", json={"records": [{"job_title": "nurse"}], "explain": explain})
    assert batch.status_code == 422, batch.text
    assert [e.field for e in error_body(batch).detail] == ["explain"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"job_title": "x", "top_k": True}, "top_k"),
        ({"job_title": "x", "top_k": "5"}, "top_k"),
        ({"job_title": "x", "thresholds": {"unit": "0.5"}}, "thresholds.unit"),
        ({"job_title": "x", "thresholds": {"unit": True}}, "thresholds.unit"),
        ({"job_title": "x", "id": 7}, "id"),
    ],
)
def test_no_type_coercion_in_requests(anonymous: TestClient, body: dict[str, Any], field: str) -> None:
    response = anonymous.post("/predict/job", json=body)
    assert response.status_code == 422, response.text
    assert field in [e.field for e in error_body(response).detail]  # type: ignore[union-attr]


def test_strict_models_still_take_their_own_types() -> None:
    """Workers and settings build these from typed values: strictness refuses only other JSON types."""
    assert Thresholds.model_validate({"unit": 1, "minor": 0.25}).unit == 1.0  # an integer is a number
    request = PredictRequest.model_validate_json('{"records": [{"job_title": "cook"}], "top_k": 3}')
    assert request.top_k == 3 and request.explain is False


# ---------------------------------------------------------------------------------------------------------
# 4. Authorization schemes; Allow on OPTIONS and 405
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic {other}",
        "Digest {other}",
        "Token {key}",
        "Basic {key}",
        "Bearer",
        "Bearer {other}",
        "{key}",
        "x y z",
        "",
        " ",
    ],
)
def test_authorization_other_than_a_valid_bearer_is_refused_beside_a_valid_x_api_key(
    sqlite_url: str, tmp_path: Path, authorization: str
) -> None:
    settings = contract_settings(sqlite_url, tmp_path)
    key = new_key(settings)
    value = authorization.format(key=key, other="isco_not-a-key")
    with TestClient(create_app(settings)) as c:
        assert c.get("/jobs", headers={"X-API-Key": key}).status_code == 200
        response = c.get("/jobs", headers={"X-API-Key": key, "Authorization": value})
        assert response.status_code == 401, (value, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert c.get("/jobs", headers={"Authorization": value}).status_code == 401


def test_every_presented_key_must_be_valid(sqlite_url: str, tmp_path: Path) -> None:
    settings = contract_settings(sqlite_url, tmp_path)
    key, other = new_key(settings, "a"), new_key(settings, "b")
    bearer = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as c:
        assert c.get("/jobs", headers=bearer).status_code == 200
        assert c.get("/jobs", headers={"Authorization": f"bearer  {key} "}).status_code == 200
        assert c.get("/jobs", headers={**bearer, "X-API-Key": key}).status_code == 200
        assert c.get("/jobs", headers={**bearer, "X-API-Key": other}).status_code == 200
        assert c.get("/jobs", headers={**bearer, "X-API-Key": "isco_wrong"}).status_code == 401


def test_options_and_405_list_every_allowed_method(anonymous: TestClient) -> None:
    spec = anonymous.get("/openapi.json").json()
    for template, item in spec["paths"].items():
        path = re.sub(r"\{[^}]+\}", "some-id", template)
        declared = {method.upper() for method in item}
        options = anonymous.options(path)
        assert options.status_code == 204, (path, options.text)
        assert set(options.headers["allow"].split(", ")) == declared | {"OPTIONS"}, path
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - declared:
            refused = anonymous.request(method, path)
            assert refused.status_code == 405, (method, path)
            assert set(refused.headers["allow"].split(", ")) == declared | {"OPTIONS"}, (method, path)
    assert anonymous.options("/no-such-path").status_code == 404
    assert anonymous.put("/openapi.json").headers["allow"] == "GET, HEAD, OPTIONS"


def test_an_integral_number_is_an_integer(anonymous: TestClient) -> None:
    """JSON Schema's `integer` takes 9.0 (a number with no fraction): so does the API, and still no 9.5."""
    assert PredictRequest.model_validate_json('{"records": [{"job_title": "cook"}], "top_k": 9.0}').top_k == 9
    with pytest.raises(ValidationError):
        PredictRequest.model_validate_json('{"records": [{"job_title": "cook"}], "top_k": 9.5}')
    # through the routes (no inference service here: anything but a 422 means the input was accepted)
    for path, body in (
        ("/predict/job", {"job_title": "cook", "top_k": 2.0}),
        ("/predict/batch", {"records": [{"job_title": "cook"}], "top_k": 2.0}),
    ):
        assert anonymous.post(path, json=body).status_code != 422, path
        refused = anonymous.post(path, json={**body, "top_k": 2.5})
        assert [e.field for e in error_body(refused).detail] == ["top_k"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("hint", "accepted"),
    [("de", True), ("DE ", True), ("", True), ("\t", True), ("`", False), ("deu", False), ("xx", False)],
)
def test_language_hint_pattern_and_validator_agree(hint: str, accepted: bool) -> None:
    """The schema's pattern for `language` (what fuzzers and clients read) refuses what the API refuses."""
    from shared.schemas import LANGUAGE_HINT

    assert bool(re.search(LANGUAGE_HINT, hint)) is accepted
    try:
        JobRecord(job_title="cook", language=hint)
    except ValidationError:
        assert not accepted
    else:
        assert accepted
