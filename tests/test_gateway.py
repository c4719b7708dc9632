"""The gateway as a real ASGI app talking over HTTP to a real inference service (tiny model, uvicorn).

Covers: no torch in the gateway process, API keys (create, Bearer / X-API-Key, revoke, dev mode, CLI),
/predict/job and /predict/batch, request id forwarding, bad inputs (422 with field and reason, never 500),
limits (413), inference down (503), /ready, /metrics, and a schemathesis pass over every operation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.auth import Principal, create_api_key, key_cache, revoke_api_key
from services.gateway.routes_predict import reject_large_batch
from services.gateway.settings import GatewaySettings
from services.inference.app import create_app as create_inference_app
from services.inference.settings import InferenceSettings
from shared.db.session import session_scope
from shared.schemas import MAX_TEXT_CHARS, Prediction, PredictResponse
from tests.jobs_support import SESSION_TAG, purge_queue, test_redis_url  # noqa: F401
from tests.serving_helpers import ServerThread, free_port
from tests.tiny_model import build_tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "transformers", "onnxruntime", "sklearn", "shared.predictor", "shared.model")


class HeaderRecorder:
    """ASGI wrapper that remembers the X-Request-ID of every request the inference service receives."""

    def __init__(self, app: Any):
        self.app = app
        self.request_ids: list[str | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            self.request_ids.append(headers.get(b"x-request-id", b"").decode() or None)
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def inference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, HeaderRecorder]]:
    root = tmp_path_factory.mktemp("inference")
    model_dir = build_tiny_model_dir(root / "model", "tiny-gw")
    settings = InferenceSettings(
        env="test", data_dir=root / "data", model_dir=model_dir, quantize="none", reload_interval_s=0
    )
    recorder = HeaderRecorder(create_inference_app(settings))
    with ServerThread(recorder) as url:
        yield url, recorder


def gateway_settings(db_url: str, tmp_path: Path, inference_url: str, **kw: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": tmp_path / "data",
        "database_url": db_url,
        "inference_url": inference_url,
        "api_key_cache_s": 0,
        "inference_retries": 0,
        "inference_connect_timeout_s": 1,
    }
    return GatewaySettings(**{**values, **kw})


def new_key(settings: GatewaySettings, name: str = "test") -> str:
    with session_scope(settings.db_url) as session:
        key, _ = create_api_key(session, name, settings.secret_key)
    return key


@pytest.fixture
def client(sqlite_url: str, tmp_path: Path, inference: tuple[str, HeaderRecorder]) -> Iterator[TestClient]:
    settings = gateway_settings(sqlite_url, tmp_path, inference[0])
    key = new_key(settings)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


# ---------------------------------------------------------------------------------------------------------
# the gateway process stays light
# ---------------------------------------------------------------------------------------------------------


def test_gateway_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from services.gateway.app import create_app\n"
        "from services.gateway.settings import GatewaySettings\n"
        "from fastapi.testclient import TestClient\n"
        f"s = GatewaySettings(env='test', auth_disabled=True, data_dir={str(tmp_path)!r})\n"
        "with TestClient(create_app(s)) as c:\n"
        "    c.get('/health'); c.post('/predict/job', json={'job_title': 'x'})\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------------------------------------


def test_api_keys_bearer_x_api_key_and_revocation(
    db_url: str, tmp_path: Path, inference: tuple[str, HeaderRecorder]
) -> None:
    settings = gateway_settings(db_url, tmp_path, inference[0])
    key = new_key(settings, "analyst")
    job = {"job_title": "nurse"}
    with TestClient(create_app(settings)) as c:
        r = c.post("/predict/job", json=job)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/predict/job", json=job, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/predict/job", json=job, headers={"Authorization": f"Basic {key}"}).status_code == 401
        assert c.post("/predict/job", json=job, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.post("/predict/job", json=job, headers={"X-API-Key": key}).status_code == 200
        with session_scope(settings.db_url) as session:
            assert revoke_api_key(session, key[:12]) is not None
        assert c.post("/predict/job", json=job, headers={"X-API-Key": key}).status_code == 401
        assert c.get("/health").status_code == 200  # ops endpoints stay open


def test_dev_mode_only_when_configured(
    sqlite_url: str, tmp_path: Path, inference: tuple[str, HeaderRecorder]
) -> None:
    settings = gateway_settings(sqlite_url, tmp_path, inference[0], auth_disabled=True)
    with TestClient(create_app(settings)) as c:
        assert c.post("/predict/job", json={"job_title": "nurse"}).status_code == 200
    with pytest.raises(ValueError, match="AUTH_DISABLED"):
        GatewaySettings(env="prod", secret_key="s" * 32, auth_disabled=True)


def test_validated_keys_are_kept_for_api_key_cache_s(
    sqlite_url: str, tmp_path: Path, inference: tuple[str, HeaderRecorder]
) -> None:
    assert key_cache(0) is None  # off: every request checks the key store
    cache = key_cache(0.2)
    assert cache is not None
    cache["hash"] = Principal(key_id=1, name="analyst")
    assert cache.get("hash") == Principal(key_id=1, name="analyst")
    time.sleep(0.3)
    assert cache.get("hash") is None
    settings = gateway_settings(sqlite_url, tmp_path, inference[0], api_key_cache_s=30)
    key = new_key(settings, "analyst")
    with TestClient(create_app(settings), headers={"X-API-Key": key}) as c:
        assert c.post("/predict/job", json={"job_title": "nurse"}).status_code == 200
        with session_scope(settings.db_url) as session:
            assert revoke_api_key(session, key[:12]) is not None
        # the revocation lag `api_key_cache_s` documents
        assert c.post("/predict/job", json={"job_title": "nurse"}).status_code == 200


def test_keys_cli(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from services.gateway.cli import app as keys_app

    monkeypatch.setenv("ISCO_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("ISCO_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    created = runner.invoke(keys_app, ["create", "batch scripts"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("isco_")
    listed = runner.invoke(keys_app, ["list", "--json"])
    row = json.loads(listed.stdout.strip().splitlines()[0])
    assert row["name"] == "batch scripts" and key.startswith(row["prefix"]) and row["revoked_at"] is None
    assert runner.invoke(keys_app, ["revoke", str(row["id"])]).exit_code == 0
    assert json.loads(runner.invoke(keys_app, ["list", "--json"]).stdout)["revoked_at"] is not None
    assert runner.invoke(keys_app, ["revoke", "999"]).exit_code == 1
    with session_scope(sqlite_url) as session:  # only the hash is stored
        stored = session.execute(__import__("sqlalchemy").text("SELECT key_hash FROM api_keys")).scalar_one()
        assert key not in stored and len(stored) == 64


# ---------------------------------------------------------------------------------------------------------
# prediction through the real inference service
# ---------------------------------------------------------------------------------------------------------


def test_predict_job_and_request_id_forwarding(
    client: TestClient, inference: tuple[str, HeaderRecorder]
) -> None:
    r = client.post(
        "/predict/job",
        json={"id": "r1", "job_title": "Nurse", "duties_description": "cares for patients", "top_k": 3},
        headers={"X-Request-ID": "abc-123"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "abc-123"
    assert inference[1].request_ids[-1] == "abc-123"  # the inference service saw the same id
    p = Prediction.model_validate(r.json())
    assert p.id == "r1" and p.model_version == "tiny-gw" and len(p.alternatives) == 3 and len(p.path) == 4
    assert p.truncated is False

    generated = client.post("/predict/job", json={"job_title": "cook"})
    assert len(generated.headers["x-request-id"]) == 32
    assert inference[1].request_ids[-1] == generated.headers["x-request-id"]


def test_predict_job_thresholds_and_truncation(client: TestClient) -> None:
    coded = client.post("/predict/job", json={"job_title": "cook", "thresholds": {"unit": 0.0}}).json()
    assert coded["coded"] and coded["level"] == 4 and coded["isco_code"] == coded["unit_code"]
    strict = {"unit": 1.0, "minor": 1.0, "sub_major": 1.0, "major": 1.0}
    uncoded = client.post("/predict/job", json={"job_title": "cook", "thresholds": strict}).json()
    assert uncoded["coded"] is False and uncoded["isco_code"] is None and uncoded["alternatives"]
    long = client.post(
        "/predict/job", json={"job_title": "cook", "duties_description": "d" * (MAX_TEXT_CHARS * 2)}
    )
    assert long.status_code == 200 and long.json()["truncated"] is True


def test_predict_batch_same_order(client: TestClient) -> None:
    records = [{"id": str(i), "job_title": t} for i, t in enumerate(["nurse", "cook", "welder", "nurse"])]
    r = client.post("/predict/batch", json={"records": records, "top_k": 2})
    assert r.status_code == 200, r.text
    data = PredictResponse.model_validate(r.json())
    assert [p.id for p in data.results] == ["0", "1", "2", "3"]
    assert data.results[0].unit_code == data.results[3].unit_code  # same text, same answer
    assert all(len(p.alternatives) == 2 for p in data.results)


def _model_inputs_seen(inference: tuple[str, HeaderRecorder]) -> set[str]:
    """The model input texts the inference service has scored (its predictor's cache is keyed by them)."""
    predictor = inference[1].app.state.holder.current
    return set(predictor.cache._data)


def test_industry_reaches_the_model_on_job_and_batch(
    client: TestClient, inference: tuple[str, HeaderRecorder]
) -> None:
    r = client.post("/predict/job", json={"id": "j", "job_title": "Inspector", "industry": "Paper mfr"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "j" and r.json()["truncated"] is False and "industry" not in r.json()
    assert "inspector (industry: paper manufacturing)" in _model_inputs_seen(inference)
    records = [
        {"id": "1", "job_title": "Auditor", "industry": "local govt"},
        {"id": "2", "job_title": "Auditor", "industry": "   "},  # white space: no industry
        {"id": "3", "job_title": "Auditor", "industry": "b" * 500},  # cut and flagged
    ]
    r = client.post("/predict/batch", json={"records": records})
    assert r.status_code == 200, r.text
    results = PredictResponse.model_validate(r.json()).results
    assert [p.id for p in results] == ["1", "2", "3"] and [p.truncated for p in results] == [
        False,
        False,
        True,
    ]
    seen = _model_inputs_seen(inference)
    assert {"auditor (industry: local government)", "auditor", f"auditor (industry: {'b' * 120})"} <= seen


def test_batch_above_sync_limit(
    sqlite_url: str, tmp_path: Path, inference: tuple[str, HeaderRecorder]
) -> None:
    settings = gateway_settings(sqlite_url, tmp_path, inference[0], sync_batch_limit=3)
    key = new_key(settings)
    app = create_app(settings)
    with TestClient(app, headers={"X-API-Key": key}) as c:
        app.state.large_batch_handler = (
            reject_large_batch  # the 413 branch (the job machinery may replace it)
        )
        assert c.post("/predict/batch", json={"records": [{"job_title": "x"}] * 3}).status_code == 200
        r = c.post("/predict/batch", json={"records": [{"job_title": "x"}] * 4})
        assert r.status_code == 413
        assert r.json()["detail"]["limit"] == 3 and r.json()["detail"]["records"] == 4


# ---------------------------------------------------------------------------------------------------------
# bad input: 422 naming the field, never a 500
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/predict/job", {"job_title": "", "duties_description": "  "}, "body"),
        ("/predict/job", {"job_title": 5}, "job_title"),
        ("/predict/job", {"job_title": ["a"]}, "job_title"),
        ("/predict/job", {"job_title": "x", "top_k": 0}, "top_k"),
        ("/predict/job", {"job_title": "x", "top_k": "many"}, "top_k"),
        ("/predict/job", {"job_title": "x", "thresholds": {"unit": 1.5}}, "thresholds.unit"),
        ("/predict/job", {"job_title": "x", "id": "i" * 201}, "id"),
        ("/predict/job", [], "body"),
        ("/predict/batch", {"records": []}, "records"),
        ("/predict/batch", {"records": "nurse"}, "records"),
        ("/predict/batch", {"records": [{"job_title": "ok"}, {"job_title": ""}]}, "records.1"),
        (
            "/predict/batch",
            {"records": [{"job_title": "ok"}, {"duties_description": 3}]},
            "records.1.duties_description",
        ),
        ("/predict/batch", {}, "records"),
        ("/predict/job", {"job_title": "x", "industry": 5}, "industry"),
        ("/predict/job", {"job_title": "x", "industry": None}, "industry"),
        ("/predict/job", {"industry": "paper manufacturing"}, "body"),  # context alone is not a record
        ("/predict/batch", {"records": [{"job_title": "ok", "industry": ["paper"]}]}, "records.0.industry"),
    ],
)
def test_validation_errors_name_the_field(client: TestClient, path: str, body: Any, field: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["field"] == field for e in errors), errors
    assert all(e["reason"] for e in errors)


@pytest.mark.parametrize(
    ("content", "content_type", "status", "field"),
    [
        (b'{"job_title": "caf\xe9"}', "application/json", 422, "body"),  # latin-1, not UTF-8
        (b'{"job_title": "a\\ud800"}', "application/json", 422, "job_title"),  # lone surrogate
        (b'{"job_title": "a", "industry": "\\udfff"}', "application/json", 422, "industry"),
        (b'{"job_title": ', "application/json", 422, "body"),
        (b"", "application/json", 422, "body"),
        (b"job_title=nurse", "application/x-www-form-urlencoded", 422, "body"),
        (b'{"job_title": "nurse"}', "text/plain", 422, "body"),
    ],
)
def test_malformed_bodies(
    client: TestClient, content: bytes, content_type: str, status: int, field: str
) -> None:
    r = client.post("/predict/job", content=content, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert any(e["field"] == field for e in r.json()["detail"])


def test_body_size_limit(sqlite_url: str, tmp_path: Path, inference: tuple[str, HeaderRecorder]) -> None:
    settings = gateway_settings(sqlite_url, tmp_path, inference[0], max_body_bytes=10_000, auth_disabled=True)
    with TestClient(create_app(settings)) as c:
        r = c.post("/predict/job", json={"job_title": "x" * 20_000})
        assert r.status_code == 413 and r.json()["detail"]["limit"] == 10_000

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
            yield b'{"job_title": "'
            for _ in range(20):
                yield b"x" * 1000
            yield b'"}'

        r = c.post("/predict/job", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413


# ---------------------------------------------------------------------------------------------------------
# inference unavailable, ready, metrics
# ---------------------------------------------------------------------------------------------------------


def test_inference_down_is_503_not_500(sqlite_url: str, tmp_path: Path) -> None:
    settings = gateway_settings(sqlite_url, tmp_path, f"http://127.0.0.1:{free_port()}", auth_disabled=True)
    with TestClient(create_app(settings)) as c:
        r = c.post("/predict/job", json={"job_title": "nurse"})
        assert r.status_code == 503 and "unreachable" in r.json()["detail"]
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["database"] == "ok"


def test_connection_errors_are_retried(sqlite_url: str, tmp_path: Path) -> None:
    """The inference service comes up while the gateway is retrying: the request succeeds."""
    import threading

    model_dir = build_tiny_model_dir(tmp_path / "model", "tiny-late")
    port = free_port()
    inference_settings = InferenceSettings(
        env="test", data_dir=tmp_path / "inf", model_dir=model_dir, quantize="none", reload_interval_s=0
    )
    late = ServerThread(create_inference_app(inference_settings), port=port)
    starter = threading.Timer(0.3, late.__enter__)
    settings = gateway_settings(
        sqlite_url, tmp_path, f"http://127.0.0.1:{port}", auth_disabled=True, inference_retries=5
    )
    with TestClient(create_app(settings)) as c:
        starter.start()
        try:
            r = c.post("/predict/job", json={"job_title": "nurse"})
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == "tiny-late"
        finally:
            starter.join()
            late.__exit__(None, None, None)


def test_key_store_down_is_503(tmp_path: Path, inference: tuple[str, HeaderRecorder]) -> None:
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    with TestClient(create_app(gateway_settings(down, tmp_path, inference[0]))) as c:
        r = c.post("/predict/job", json={"job_title": "nurse"}, headers={"X-API-Key": "isco_whatever"})
        detail = r.json()["detail"]
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert detail["error"] == "database_unavailable" and detail["dependency"] == "database"
        assert "key store" in detail["message"]
        assert c.get("/ready").status_code == 503


def test_ready_and_metrics(client: TestClient) -> None:
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["model_version"] == "tiny-gw"
    client.post("/predict/job", json={"job_title": "nurse"})
    text = client.get("/metrics").text
    assert 'isco_gateway_requests_total{method="POST",route="/predict/job",status="200"}' in text
    assert "isco_gateway_request_seconds_bucket" in text and "isco_gateway_inference_seconds_count" in text
    assert 'isco_gateway_model_info{version="tiny-gw"} 1.0' in text


def test_openapi_has_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    job = spec["paths"]["/predict/job"]["post"]
    assert job["requestBody"]["content"]["application/json"]["examples"]
    industry = spec["components"]["schemas"]["JobRecord"]["properties"]["industry"]
    assert "employer's main activity" in industry["description"] and "optional" in industry["description"]
    assert {"401", "422", "503"} <= set(job["responses"])


# ---------------------------------------------------------------------------------------------------------
# property-based pass over the whole OpenAPI document: the answers are what the document says
# ---------------------------------------------------------------------------------------------------------

# Every operation the document declares (a route added without a test here fails the first assertion).
API_OPERATIONS = {
    "POST /predict/job",
    "POST /predict/batch",
    "POST /predict/csv",
    "GET /jobs",
    "GET /jobs/{job_id}",
    "DELETE /jobs/{job_id}",
    "GET /jobs/{job_id}/result",
    "GET /health",
    "GET /ready",
}
NO_INPUT = {"GET /health", "GET /ready"}  # no parameters, no body
SCHEMATHESIS_EXAMPLES = 12  # per operation and mode: the whole pass stays well under a minute


@pytest.fixture(scope="module")
def served_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    inference: tuple[str, HeaderRecorder],
    test_redis_url: str,  # noqa: F811
) -> Iterator[tuple[str, str]]:
    """The gateway over HTTP with the real inference service and a real Redis: every dependency is up, so any
    5xx is a bug. Jobs go to a queue of their own that no worker reads (they stay queued), purged after."""
    from shared.db.migrate import upgrade
    from shared.jobs.settings import JobSettings

    root = tmp_path_factory.mktemp("gateway")
    url = f"sqlite:///{root / 'isco.db'}"
    upgrade(url)
    settings = gateway_settings(url, root, inference[0], api_key_cache_s=30, redis_url=test_redis_url)
    queue = f"test-schemathesis-{SESSION_TAG}"
    common = ("env", "data_dir", "database_url", "redis_url")
    app = create_app(settings)
    app.state.job_settings = JobSettings(**{k: getattr(settings, k) for k in common}, job_queue=queue)
    key = new_key(settings)
    try:
        with ServerThread(app) as base_url:
            yield base_url, key
    finally:
        purge_queue(test_redis_url, queue)


def test_schemathesis_whole_api_conforms(served_gateway: tuple[str, str]) -> None:
    """Every operation, schema-valid and schema-invalid data, every built-in check (response schema, status
    code, content type, headers, no 5xx, invalid data refused, valid data accepted, auth enforced).

    Valid data must be accepted everywhere but on /predict/csv: its schema says "a file", and a file that
    is not a CSV with a text column is refused (422), which no schema can express.
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.config import SchemathesisConfig

    base_url, key = served_gateway
    config = SchemathesisConfig.from_dict(
        {
            "operations": [
                {"include-path": "/predict/csv", "checks": {"positive_data_acceptance": {"enabled": False}}}
            ]
        }
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.label for operation in operations} == API_OPERATIONS
    statuses: dict[str, set[int]] = {}

    def fuzz(operation: Any, mode: schemathesis.GenerationMode) -> None:
        label = f"{operation.label} {mode.value}"

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=SCHEMATHESIS_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,  # the same cases on every run: a CI failure can be replayed
        )
        def run(case: Any) -> None:
            response = case.call_and_validate(base_url=base_url, headers={"X-API-Key": key}, timeout=30)
            statuses.setdefault(label, set()).add(response.status_code)

        run()

    for operation in operations:
        fuzz(operation, schemathesis.GenerationMode.POSITIVE)
        if operation.label not in NO_INPUT:  # nothing to make invalid: no negative case exists
            fuzz(operation, schemathesis.GenerationMode.NEGATIVE)
    # not vacuous: valid data reached the model, and invalid data was refused as invalid
    for label in ("POST /predict/job", "POST /predict/batch", "GET /jobs", "GET /health"):
        assert 200 in statuses[f"{label} positive"], statuses
    assert 422 in statuses["POST /predict/job negative"], statuses


def test_no_torch_check_covers_real_modules() -> None:
    # guard against the import test passing vacuously: the inference side does load these
    assert "torch" in sys.modules and "shared.predictor" in sys.modules
    assert httpx.__name__ == "httpx"
