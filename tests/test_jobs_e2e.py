"""CSV and batch jobs end to end: the real gateway app, a real Redis, real Celery worker processes, a tiny
model registered as best, on SQLite and PostgreSQL.

Covers: upload -> result with every row exactly once in input order; bad files refused with clear errors;
cancellation; another key's job refused; formula neutralisation; batch-as-job; expiry; the `isco jobs` CLI
against a served gateway. Faults (workers killed, Redis restarted) are in tests/test_job_faults.py.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.auth import create_api_key
from services.gateway.settings import GatewaySettings
from shared.db.migrate import upgrade
from shared.db.session import session_scope
from shared.db.tables import Job, JobStatus, utcnow
from shared.jobs.files import job_dir
from shared.jobs.settings import JobSettings
from shared.jobs.state import sweep_expired
from tests.jobs_support import (  # noqa: F401
    SESSION_TAG,
    CeleryWorker,
    purge_queue,
    register_best,
    test_redis_url,
    tiny_model_dir,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MAX_UPLOAD = 10 * 1024 * 1024


@dataclass
class Stack:
    backend: str
    client: TestClient
    settings: GatewaySettings
    job_settings: JobSettings
    key_a: str
    key_b: str
    queue: str
    worker: CeleryWorker
    tmp: Path

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key_a}"}

    def upload(self, data: bytes, key: str | None = None, name: str = "jobs.csv", **params: Any) -> Any:
        return self.client.post(
            "/predict/csv", params=params, files={"file": (name, data, "text/csv")}, headers=self.headers(key)
        )

    def job(self, job_id: str, key: str | None = None) -> dict[str, Any]:
        response = self.client.get(f"/jobs/{job_id}", headers=self.headers(key))
        assert response.status_code == 200, response.text
        return response.json()

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
        try:
            return wait_for(
                lambda: (j := self.job(job_id))["status"] in statuses and j,
                timeout,
                0.1,
                f"job in {statuses}",
            )
        except TimeoutError:
            raise AssertionError(
                f"job {self.job(job_id)} did not reach {statuses}\n{self.worker.tail()}"
            ) from None


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    test_redis_url: str,  # noqa: F811
    tiny_model_dir: Path,  # noqa: F811
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"jobs-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp / 'isco.db'}"
        upgrade(db_url)
    else:
        db_url = request.getfixturevalue("postgres_server_url")
        from sqlalchemy import create_engine, text

        with create_engine(db_url).begin() as conn:
            conn.execute(text("TRUNCATE jobs, model_versions, api_keys RESTART IDENTITY CASCADE"))
    settings = GatewaySettings(
        env="test", data_dir=tmp / "data", database_url=db_url, redis_url=test_redis_url, sync_batch_limit=5
    )
    settings.ensure_dirs()
    register_best(db_url, tiny_model_dir, "tiny-jobs-1")
    queue = f"test-jobs-{SESSION_TAG}-{request.param}"
    job_settings = JobSettings(
        **{k: getattr(settings, k) for k in ("env", "data_dir", "database_url", "redis_url")},
        job_queue=queue,
        job_max_upload_bytes=MAX_UPLOAD,
        job_max_rows=20_000,
    )
    with session_scope(db_url) as session:
        key_a, _ = create_api_key(session, "alice", settings.secret_key)
        key_b, _ = create_api_key(session, "bob", settings.secret_key)
    worker = CeleryWorker(
        worker_env(settings, queue, job_chunk_rows=16), queue, tmp / "worker.log"
    ).wait_ready()
    app = create_app(settings)
    app.state.job_settings = job_settings
    try:
        with TestClient(app) as client:
            yield Stack(request.param, client, settings, job_settings, key_a, key_b, queue, worker, tmp)
    finally:
        worker.stop()
        purge_queue(test_redis_url, queue)


def parse_csv(text: str, delimiter: str = ",") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


# ----------------------------------------------------------------------------------------------------
# The happy path
# ----------------------------------------------------------------------------------------------------


def test_csv_job_from_upload_to_result(stack: Stack) -> None:
    lines = ["\ufeffRef;Job Title;Duties Description;Notes"]
    titles = ["Staff nurse", "welder", "primary school teacher", "Accountant", "bus driver"]
    for i in range(200):
        lines.append(f"{i};{titles[i % 5]};does the job {i % 7};note {i}")
    lines.append("200;;;both empty")
    lines.append('201;=HYPERLINK("http://evil");+SUM(A1);@me')
    response = stack.upload("\r\n".join(lines).encode("utf-8"), name="staff.csv", top_k=3)
    assert response.status_code == 202, response.text
    accepted = response.json()
    job_id = accepted["job_id"]
    assert len(job_id) >= 32 and accepted["rows_total"] == 202
    assert accepted["status_url"].endswith(f"/jobs/{job_id}") and accepted["result_url"].endswith("/result")
    assert response.headers["location"] == accepted["status_url"]

    job = stack.wait_status(job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    assert (job["rows_total"], job["rows_done"], job["rows_failed"]) == (202, 202, 1)
    assert job["progress"] == 1.0 and job["model_version"] == "tiny-jobs-1" and job["expires_at"]

    result = stack.client.get(f"/jobs/{job_id}/result", headers=stack.headers())
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/csv")
    assert "attachment" in result.headers["content-disposition"]
    rows = parse_csv(result.text, ";")
    # every input row exactly once, in input order, extra columns kept
    assert [r["Ref"] for r in rows] == [str(i) for i in range(202)]
    assert [r["Notes"] for r in rows[:200]] == [f"note {i}" for i in range(200)]
    assert list(rows[0])[:4] == ["Ref", "Job Title", "Duties Description", "Notes"]
    # the review columns are always there (pending where the model routed the row to review)
    assert list(rows[0])[4:] == [
        *jobs_result_columns(),
        "row_error",
        "final_code",
        "coded_by",
        "final_status",
    ]
    assert all(
        r["unit_code"] and len(r["top_codes"].split("|")) == 3 and not r["row_error"] for r in rows[:200]
    )
    assert rows[200]["row_error"] == "job_title and duties_description are both empty"
    # formula cells are neutralised in the result
    evil = rows[201]
    assert evil["Job Title"] == '\'=HYPERLINK("http://evil")'
    assert evil["Duties Description"] == "'+SUM(A1)" and evil["Notes"] == "'@me"
    # the same text gets the same answer wherever it occurs
    by_text = {(r["Job Title"], r["Duties Description"]): r["unit_code"] for r in rows[:200]}
    assert all(by_text[(r["Job Title"], r["Duties Description"])] == r["unit_code"] for r in rows[:200])
    # the same rows as JSON objects, for clients that read JSON only
    as_json = stack.client.get(f"/jobs/{job_id}/result?format=json", headers=stack.headers())
    assert as_json.status_code == 200 and as_json.headers["content-type"].startswith("application/json")
    body = as_json.json()
    assert body["job_id"] == job_id and body["model_version"] and body["rows"] == rows

    listed = stack.client.get("/jobs", headers=stack.headers()).json()
    assert job_id in [j["job_id"] for j in listed]


def jobs_result_columns() -> list[str]:
    from shared.csvio.writing import RESULT_COLUMNS

    return RESULT_COLUMNS


def test_batch_above_the_sync_limit_becomes_a_job(stack: Stack) -> None:
    records = [
        {"id": f"r{i}", "job_title": f"clerk {i % 3}", "duties_description": "files papers"}
        for i in range(12)
    ]
    response = stack.client.post(
        "/predict/batch", json={"records": records, "top_k": 2}, headers=stack.headers()
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert stack.wait_status(job_id, ("succeeded", "failed"))["status"] == "succeeded"
    body = stack.client.get(f"/jobs/{job_id}/result", headers=stack.headers()).json()
    assert body["job_id"] == job_id and body["model_version"] == "tiny-jobs-1"
    assert [p["id"] for p in body["results"]] == [f"r{i}" for i in range(12)]
    assert all(len(p["alternatives"]) == 2 for p in body["results"])
    as_csv = stack.client.get(f"/jobs/{job_id}/result", headers={**stack.headers(), "Accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = parse_csv(as_csv.text)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(12)]
    assert [r["unit_code"] for r in rows] == [p["unit_code"] for p in body["results"]]
    # no record gave an industry: the CSV form has the columns it always had
    assert list(rows[0])[:4] == ["id", "job_title", "duties_description", "isco_code"]


def test_industry_in_csv_and_batch_jobs(stack: Stack) -> None:
    lines = ["ref,job_title,Industry", "1,inspector,paper mfr", "2,inspector,", "3,,paper mfr"]
    response = stack.upload("\r\n".join(lines).encode("utf-8"), name="industry.csv")
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert stack.wait_status(job_id, ("succeeded", "failed"))["status"] == "succeeded"
    rows = parse_csv(stack.client.get(f"/jobs/{job_id}/result", headers=stack.headers()).text)
    assert list(rows[0])[:3] == ["ref", "job_title", "Industry"]  # kept, as written
    assert [r["Industry"] for r in rows] == ["paper mfr", "", "paper mfr"]
    assert rows[0]["unit_code"] and rows[1]["unit_code"] and not rows[0]["row_error"]
    assert rows[2]["row_error"] == "job_title and duties_description are both empty"  # context alone

    records = [
        {"id": f"r{i}", "job_title": "inspector", "industry": ["paper", "", "bank"][i % 3]} for i in range(7)
    ]
    response = stack.client.post("/predict/batch", json={"records": records}, headers=stack.headers())
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert stack.wait_status(job_id, ("succeeded", "failed"))["status"] == "succeeded"
    body = stack.client.get(f"/jobs/{job_id}/result", headers=stack.headers()).json()
    assert [p["id"] for p in body["results"]] == [f"r{i}" for i in range(7)]
    as_csv = stack.client.get(f"/jobs/{job_id}/result", headers={**stack.headers(), "Accept": "text/csv"})
    rows = parse_csv(as_csv.text)
    assert list(rows[0])[:5] == ["id", "job_title", "duties_description", "industry", "isco_code"]
    assert [r["industry"] for r in rows] == [r["industry"] for r in records]


# ----------------------------------------------------------------------------------------------------
# Bad uploads (answered by the gateway alone, before anything is queued)
# ----------------------------------------------------------------------------------------------------


def test_bad_csvs_are_refused_with_clear_errors(stack: Stack) -> None:
    before = set(stack.settings.uploads_dir.iterdir())

    def refused(data: bytes, status: int, error: str) -> dict[str, Any]:
        response = stack.upload(data)
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        assert detail["error"] == error and detail["message"]
        return detail

    detail = refused("job_title,x\nCafé owner,1\n".encode("cp1252"), 422, "encoding")
    assert "not valid UTF-8" in detail["message"] and "line 2" in detail["message"]
    detail = refused("job_title\nnurse\n".encode("utf-16"), 422, "encoding")
    assert "UTF-16" in detail["message"]
    detail = refused(b"title;description\nnurse;cares\n", 422, "missing_columns")
    assert detail["missing"] == ["job_title", "duties_description"] and detail["found"] == [
        "title",
        "description",
    ]
    refused(b"", 422, "empty")
    refused(b"job_title,duties_description\n", 422, "no_rows")
    detail = refused(b"job_title,duties_description,ref\na,b,1\nc,d\ne,f,3,4\n", 422, "ragged_rows")
    assert [r["line"] for r in detail["rows"]] == [3, 4] and "line 3 (2 fields)" in detail["message"]
    refused(b"job_title\n" + b"x\n" * 20_001, 413, "too_many_rows")
    # nothing was queued or left behind
    assert set(stack.settings.uploads_dir.iterdir()) == before


def test_upload_over_the_size_limit(stack: Stack) -> None:
    before = set(stack.settings.uploads_dir.iterdir())
    row = b"an ordinary job title,with an ordinary description of the duties\n"
    big = b"job_title,duties_description\n" + row * (50 * 1024 * 1024 // len(row))
    assert len(big) > 50 * 1024 * 1024 - 1000
    response = stack.upload(big)  # declared length over the limit: refused before reading the body
    assert response.status_code == 413
    assert (
        response.json()["detail"]["error"] == "too_large"
        and response.json()["detail"]["max_bytes"] == MAX_UPLOAD
    )

    # without a Content-Length (chunked), the running count stops it
    boundary = uuid.uuid4().hex

    def chunked() -> Iterator[bytes]:
        disposition = 'Content-Disposition: form-data; name="file"; filename="big.csv"'
        yield f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = stack.client.post(
        "/predict/csv",
        content=chunked(),
        headers={**stack.headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413 and response.json()["detail"]["error"] == "too_large"
    assert set(stack.settings.uploads_dir.iterdir()) == before


def test_not_multipart_or_no_file_field(stack: Stack) -> None:
    response = stack.client.post(
        "/predict/csv", content=b"job_title\nx\n", headers={**stack.headers(), "Content-Type": "text/csv"}
    )
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]["message"]
    response = stack.client.post(
        "/predict/csv",
        data={"other": "x"},
        files={"upload": ("a.csv", b"job_title\nx\n")},
        headers=stack.headers(),
    )
    assert response.status_code == 422 and response.json()["detail"]["error"] == "missing_file"
    assert stack.client.post("/predict/csv", files={"file": ("a.csv", b"job_title\nx\n")}).status_code == 401


# ----------------------------------------------------------------------------------------------------
# Ownership, cancellation, expiry
# ----------------------------------------------------------------------------------------------------


def test_another_keys_job_is_refused(stack: Stack) -> None:
    job_id = stack.upload(b"job_title\nnurse\n").json()["job_id"]
    stack.wait_status(job_id, ("succeeded",))
    for method, path in [("GET", ""), ("GET", "/result"), ("DELETE", "")]:
        response = stack.client.request(method, f"/jobs/{job_id}{path}", headers=stack.headers(stack.key_b))
        assert response.status_code == 404, (method, path, response.text)
    assert job_id not in [
        j["job_id"] for j in stack.client.get("/jobs", headers=stack.headers(stack.key_b)).json()
    ]
    assert stack.client.get(f"/jobs/{job_id}").status_code == 401
    assert stack.client.get("/jobs/not-a-job", headers=stack.headers()).status_code == 404


def test_cancel_a_running_job(stack: Stack) -> None:
    data = "job_title,duties_description,ref\n" + "".join(f"title {i},duty {i},{i}\n" for i in range(6000))
    job_id = stack.upload(data.encode()).json()["job_id"]
    stack.wait_status(job_id, ("running",), timeout=60)
    response = stack.client.delete(f"/jobs/{job_id}", headers=stack.headers())
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert stack.client.delete(f"/jobs/{job_id}", headers=stack.headers()).status_code == 200  # idempotent
    # the worker stops before its next chunk and removes the files
    wait_for(lambda: not job_dir(stack.settings, job_id).exists(), 30, what="cancelled job's files removed")
    job = stack.job(job_id)
    assert job["status"] == "cancelled" and job["rows_done"] < 6000
    result = stack.client.get(f"/jobs/{job_id}/result", headers=stack.headers())
    assert result.status_code == 409 and result.json()["detail"]["status"] == "cancelled"
    # cancelling a finished job is refused
    done = stack.upload(b"job_title\nnurse\n").json()["job_id"]
    stack.wait_status(done, ("succeeded",))
    assert stack.client.delete(f"/jobs/{done}", headers=stack.headers()).status_code == 409


def test_results_expire(stack: Stack) -> None:
    job_id = stack.upload(b"job_title\nbaker\n").json()["job_id"]
    stack.wait_status(job_id, ("succeeded",))
    with session_scope(stack.settings.db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.expires_at = utcnow() - timedelta(minutes=1)
        input_file, result_file = Path(job.input_path), Path(job.result_path or "")
    with session_scope(stack.settings.db_url) as session:
        assert sweep_expired(session, stack.job_settings) >= 1
    assert not input_file.exists() and not result_file.exists()
    assert stack.job(job_id)["expired"] is True
    assert stack.client.get(f"/jobs/{job_id}/result", headers=stack.headers()).status_code == 410


# ----------------------------------------------------------------------------------------------------
# CLI against a served gateway
# ----------------------------------------------------------------------------------------------------


def test_cli_submit_wait_and_get(stack: Stack, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.gateway.jobs_cli import app as jobs_app
    from tests.serving_helpers import ServerThread

    app = create_app(stack.settings)
    app.state.job_settings = stack.job_settings
    source = tmp_path / "in.csv"
    source.write_text("job_title,duties_description\nnurse,cares\nwelder,welds\n=1+1,x\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    runner = CliRunner()
    with ServerThread(app) as url:
        common = ["--url", url, "--api-key", stack.key_a]
        result = runner.invoke(
            jobs_app, ["submit", str(source), "--wait", "--quiet", "--output", str(out), *common]
        )
        assert result.exit_code == 0, result.output
        job_id = result.stdout.strip().splitlines()[0]
        rows = parse_csv(out.read_text(encoding="utf-8"))
        assert [r["job_title"] for r in rows] == ["nurse", "welder", "'=1+1"]
        again = tmp_path / "again.csv"
        result = runner.invoke(jobs_app, ["get", job_id, "--output", str(again), *common])
        assert result.exit_code == 0, result.output
        assert again.read_bytes() == out.read_bytes()
        result = runner.invoke(jobs_app, ["status", job_id, *common])
        assert json.loads(result.stdout)["status"] == JobStatus.succeeded
        bad = tmp_path / "bad.csv"
        bad.write_bytes(b"title\nx\n")
        result = runner.invoke(jobs_app, ["submit", str(bad), *common])
        assert result.exit_code == 2 and "job_title" in result.output
        result = runner.invoke(jobs_app, ["get", job_id, "--url", url, "--api-key", stack.key_b])
        assert result.exit_code == 2 and "404" in result.output
