"""The inference service as a real ASGI app over HTTP (uvicorn): predict, batching, ready, reload."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from services.inference.app import create_app
from services.inference.settings import InferenceSettings
from shared.predictor import Predictor, PredictorConfig
from tests.serving_helpers import ServerThread
from tests.tiny_model import build_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return build_tiny_model_dir(root / "a", "tiny-a", seed=0), build_tiny_model_dir(
        root / "b", "tiny-b", seed=1
    )


def settings_for(tmp_path: Path, **kw: object) -> InferenceSettings:
    values: dict[str, object] = {
        "env": "test",
        "data_dir": tmp_path / "data",
        "database_url": f"sqlite:///{tmp_path / 'isco.db'}",
        "quantize": "none",
        "reload_interval_s": 0,
    }
    return InferenceSettings(**{**values, **kw})  # type: ignore[arg-type]


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_predict_ready_health_metrics(tiny_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, model_dir=tiny_dirs[0]))
    with ServerThread(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready").json()
        assert ready["status"] == "ready" and ready["model_version"] == "tiny-a"
        body = {
            "records": [
                {"id": "a", "job_title": "nurse"},
                {"id": "b", "job_title": "cook", "duties_description": "prepares meals"},
            ],
            "top_k": 2,
        }
        r = client.post("/v1/predict", json=body, headers={"X-Request-ID": "req-123"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-123"
        data = r.json()
        assert data["model_version"] == "tiny-a"
        assert [p["id"] for p in data["results"]] == ["a", "b"]
        assert all(len(p["alternatives"]) == 2 and len(p["path"]) == 4 for p in data["results"])
        metrics = client.get("/metrics").text
        assert 'isco_inference_model_info{version="tiny-a"} 1.0' in metrics
        assert metric_value(metrics, "isco_inference_records_total") == 2
        assert 'isco_inference_requests_total{route="/v1/predict",status="200"} 1.0' in metrics


def test_request_limits_and_validation(tiny_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, model_dir=tiny_dirs[0], max_request_records=3))
    with ServerThread(app) as url, httpx.Client(base_url=url) as client:
        r = client.post("/v1/predict", json={"records": [{"job_title": "x"}] * 4})
        assert r.status_code == 413 and "limit is 3" in r.json()["detail"]
        assert client.post("/v1/predict", json={"records": []}).status_code == 422
        assert client.post("/v1/predict", json={"records": [{"job_title": " "}]}).status_code == 422
        assert client.post("/v1/predict", json={"records": [{"industry": "paper"}]}).status_code == 422
        bad = client.post("/v1/predict", json={"records": [{"job_title": "x", "industry": 3}]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "records", 0, "industry"]


def test_industry_is_part_of_the_model_input(tiny_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, model_dir=tiny_dirs[0]))
    with ServerThread(app) as url, httpx.Client(base_url=url) as client:
        records = [
            {"id": "a", "job_title": "inspector", "industry": "Paper mfr"},
            {"id": "b", "job_title": "inspector"},
            {"id": "c", "job_title": "inspector", "industry": "x" * 121},
        ]
        r = client.post("/v1/predict", json={"records": records, "explain": True})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [p["truncated"] for p in results] == [False, False, True]
        cached = set(app.state.holder.current.cache._data)
        assert {
            "inspector (industry: paper manufacturing)",
            "inspector",
            f"inspector (industry: {'x' * 120})",
        } <= cached


def test_not_ready_without_a_model(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, model_dir=tmp_path / "missing"))
    with ServerThread(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/health").status_code == 200
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        r = client.post("/v1/predict", json={"records": [{"job_title": "nurse"}]})
        assert r.status_code == 503 and "model not ready" in r.json()["detail"]


class SlowScorer:
    """Wraps a scorer; each model call takes at least 0.15 s and is recorded (to see the batches)."""

    def __init__(self, inner):  # type: ignore[no-untyped-def]
        self.inner, self.codes, self.version, self.calls = inner, inner.codes, inner.version, []

    def unit_scores(self, texts, batch_size=64):  # type: ignore[no-untyped-def]
        self.calls.append(len(texts))
        time.sleep(0.15)
        return self.inner.unit_scores(texts, batch_size)


def test_concurrent_requests_are_micro_batched(tiny_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    loaded = Predictor.load(tiny_dirs[0], PredictorConfig(cache_size=0))
    scorer = SlowScorer(loaded.scorer)
    predictor = Predictor(scorer, loaded.config, tiny_dirs[0])
    app = create_app(settings_for(tmp_path, batch_wait_ms=20), predictor=predictor)

    async def fire(url: str) -> list[dict]:  # type: ignore[type-arg]
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            requests = [
                client.post("/v1/predict", json={"records": [{"id": str(i), "job_title": f"job number {i}"}]})
                for i in range(16)
            ]
            responses = await asyncio.gather(*requests)
        assert all(r.status_code == 200 for r in responses)
        return [r.json() for r in responses]

    with ServerThread(app) as url:
        answers = asyncio.run(fire(url))
        metrics = httpx.get(url + "/metrics").text
    assert [a["results"][0]["id"] for a in answers] == [str(i) for i in range(16)]  # each got its own answer
    assert sum(scorer.calls) == 16
    assert len(scorer.calls) < 16, scorer.calls  # fewer model calls than requests: they were merged
    assert max(scorer.calls) > 1
    assert metric_value(metrics, "isco_inference_batch_requests_count") == len(scorer.calls)


def test_hot_reload_from_registry_without_failed_requests(
    tiny_dirs: tuple[Path, Path],
    common_settings,  # type: ignore[no-untyped-def]
) -> None:
    from shared import registry
    from shared.db.session import session_scope

    with session_scope(common_settings.db_url) as session:
        for version, path in (("tiny-a", tiny_dirs[0]), ("tiny-b", tiny_dirs[1])):
            registry.create_pending(session, version=version, path=path, base_model="tiny")
            registry.mark_ready(session, version, metrics={}, eval_score=0.1, eval_data_hash="h")
        registry.set_best(session, "tiny-a")

    settings = InferenceSettings(
        env="test",
        data_dir=common_settings.data_dir,
        database_url=common_settings.database_url,
        quantize="none",
        reload_interval_s=0.1,
    )
    app = create_app(settings)
    with ServerThread(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/ready").json()["model_version"] == "tiny-a"
        with session_scope(common_settings.db_url) as session:
            registry.set_best(session, "tiny-b")
        versions = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = client.post("/v1/predict", json={"records": [{"job_title": "cook"}]})
            assert r.status_code == 200  # requests keep succeeding during the swap
            versions.append(r.json()["model_version"])
            if versions[-1] == "tiny-b":
                break
        assert versions[0] == "tiny-a" and versions[-1] == "tiny-b"
        assert client.get("/ready").json()["model_version"] == "tiny-b"
        assert 'isco_inference_model_info{version="tiny-b"} 1.0' in client.get("/metrics").text
