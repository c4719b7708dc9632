"""The review page over HTTP (FastAPI TestClient on the real gateway app, SQLite and PostgreSQL).

Covers: sign-in with an API key (signed, httpOnly, SameSite cookie; no key in it), CSRF on every form, the
Origin check, revoked keys, decisions and their audit trail, the reviewed result (final_code, coded_by,
final_status) on the page and on the API's result download, the corrections export read back by the trainer's
reader, owner scoping (another key sees 404 and changes nothing), no default answer where the model is unsure,
the code search over the titles the model knows, the audit of auto-coded rows, the row's other input columns,
the job list (names, submit times, counts, paging), the header's key label, the favicon and "retrain with
corrections".
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.gateway.app import create_app
from services.gateway.auth import create_api_key, revoke_api_key
from services.gateway.review import session as web
from services.gateway.settings import GatewaySettings
from services.trainer.records import read_corrections
from services.worker.constants import QUEUE_TRAINING
from shared.db.session import session_scope
from shared.db.tables import Job, ReviewDecision, ReviewEvent
from shared.jobs.settings import JobSettings
from tests.conftest import REDIS_URL
from tests.review_support import audit_cases, finished_batch_job, finished_csv_job, read_csv

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


class Site:
    """A gateway app with two keys and a finished job of key A whose result needs review."""

    def __init__(self, db_url: str, tmp: Path, **overrides: object):
        self.settings = GatewaySettings(
            env="test",
            data_dir=tmp / "data",
            database_url=db_url,
            redis_url=REDIS_URL,
            inference_url="http://127.0.0.1:9",  # nothing there: no evidence (see the browser test)
            **overrides,
        )
        self.settings.ensure_dirs()
        self.db_url = db_url
        with session_scope(db_url) as session:
            self.key_a, row_a = create_api_key(session, "coder-a", self.settings.secret_key)
            self.key_b, row_b = create_api_key(session, "coder-b", self.settings.secret_key)
            self.id_a, self.id_b = row_a.id, row_b.id
        job_settings = JobSettings(
            env="test", data_dir=tmp / "data", database_url=db_url, redis_url=REDIS_URL
        )
        self.job_id = finished_csv_job(db_url, job_settings, self.id_a)

    def client(self) -> TestClient:
        return TestClient(create_app(self.settings), base_url="http://testserver")

    def sign_in(self, client: TestClient, key: str) -> str:
        """Sign in; returns the session's CSRF token (from the jobs page)."""
        page = client.get("/review/login")
        token = CSRF_RE.search(page.text).group(1)  # type: ignore[union-attr]
        response = client.post(
            "/review/login", data={"api_key": key, "csrf_token": token}, follow_redirects=False
        )
        assert response.status_code == 303, response.text
        home = client.get("/review")
        assert home.status_code == 200
        return CSRF_RE.search(home.text).group(1)  # type: ignore[union-attr]


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[Site]:
    yield Site(db_url, tmp_path)


def test_sign_in_sets_a_signed_httponly_samesite_cookie_and_every_form_needs_csrf(site: Site) -> None:
    with site.client() as client:
        first = client.get("/review", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"].endswith("/review/login")
        page = client.get("/review/login")
        assert (
            page.headers["x-frame-options"] == "DENY"
            and "frame-ancestors 'none'" in page.headers["content-security-policy"]
        )
        login_cookie = page.headers["set-cookie"]
        assert "HttpOnly" in login_cookie and "SameSite=strict" in login_cookie
        token = CSRF_RE.search(page.text).group(1)  # type: ignore[union-attr]

        # sign-in form: without the token, or with another one, refused
        assert client.post("/review/login", data={"api_key": site.key_a}).status_code == 403
        assert (
            client.post("/review/login", data={"api_key": site.key_a, "csrf_token": "x" * 32}).status_code
            == 403
        )
        bad = client.post("/review/login", data={"api_key": "isco_wrong", "csrf_token": token})
        assert bad.status_code == 401 and "not valid" in bad.text

        ok = client.post(
            "/review/login", data={"api_key": site.key_a, "csrf_token": token}, follow_redirects=False
        )
        assert ok.status_code == 303
        cookies = [v for k, v in ok.headers.multi_items() if k == "set-cookie"]
        session_cookie = next(c for c in cookies if c.startswith(f"{web.SESSION_COOKIE}="))
        flags = [part.strip().lower() for part in session_cookie.split(";")]
        assert "httponly" in flags and "samesite=lax" in flags and "path=/review" in flags
        assert "secure" not in flags  # plain HTTP in this test; see the Secure test below
        value = session_cookie.split(";")[0].split("=", 1)[1].strip('"')
        assert site.key_a not in value and web.unsign(site.settings, value) is not None

        home = client.get("/review")
        assert home.status_code == 200 and "coder-a" in home.text and site.job_id in home.text
        csrf = CSRF_RE.search(home.text).group(1)  # type: ignore[union-attr]
        assert csrf != token

        url = f"/review/jobs/{site.job_id}/rows/1"
        assert client.post(url, data={"action": "accept"}).status_code == 403
        assert client.post(url, data={"action": "accept", "csrf_token": token}).status_code == 403
        cross = client.post(
            url, data={"action": "accept", "csrf_token": csrf}, headers={"Origin": "https://evil.example"}
        )
        assert cross.status_code == 403
        assert client.post("/review/retrain", data={}).status_code == 403
        assert client.post("/review/logout", data={}).status_code == 403
        with session_scope(site.db_url) as session:
            assert session.scalar(select(func.count()).select_from(ReviewDecision)) == 0
        same = client.post(
            url,
            data={"action": "accept", "csrf_token": csrf},
            headers={"Origin": "http://testserver"},
            follow_redirects=False,
        )
        assert same.status_code == 303

        # a tampered cookie is no session
        client.cookies.clear()
        client.cookies.set(web.SESSION_COOKIE, value[:-3] + "AAA", path="/review")
        assert client.get("/review", follow_redirects=False).status_code == 303


def test_cookie_is_secure_when_configured(db_url: str, tmp_path: Path) -> None:
    site = Site(db_url, tmp_path, review_cookie_secure=True)
    with site.client() as client:
        page = client.get("/review/login")
        token = CSRF_RE.search(page.text).group(1)  # type: ignore[union-attr]
        assert "Secure" in page.headers["set-cookie"]
        # the test client does not send Secure cookies over http; the flag is what matters here
        client.cookies.set(web.LOGIN_CSRF_COOKIE, page.cookies[web.LOGIN_CSRF_COOKIE], path="/review")
        ok = client.post(
            "/review/login", data={"api_key": site.key_a, "csrf_token": token}, follow_redirects=False
        )
        cookie = next(
            v for k, v in ok.headers.multi_items() if k == "set-cookie" and v.startswith("isco_review=")
        )
        assert "secure" in [p.strip().lower() for p in cookie.split(";")]


def test_the_session_ends_after_review_session_hours(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signed cookie carries its issue time: past `review_session_hours` it is refused, whatever the
    browser keeps; a sign-in form's cookie (signed for another purpose) is no session either."""
    import itsdangerous.timed

    with site.client() as client:
        site.sign_in(client, site.key_a)
        assert client.get("/review", follow_redirects=False).status_code == 200
        later = time.time() + site.settings.review_session_hours * 3600 + 5

        class Later:
            @staticmethod
            def time() -> float:
                return later

        monkeypatch.setattr(itsdangerous.timed, "time", Later)
        expired = client.get("/review", follow_redirects=False)
        assert expired.status_code == 303 and expired.headers["location"].endswith("/review/login")
        monkeypatch.undo()
        client.cookies.clear()
        login_cookie = web.sign(site.settings, {"c": "token"}, web.LOGIN_SALT)
        assert web.unsign(site.settings, login_cookie) is None
        client.cookies.set(web.SESSION_COOKIE, login_cookie, path="/review")
        assert client.get("/review", follow_redirects=False).status_code == 303


def test_the_page_assets_are_static_files_revalidated_on_each_load(site: Site) -> None:
    with site.client() as client:
        for name, media_type in [
            ("review.js", "text/javascript; charset=utf-8"),
            ("review.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ]:
            asset = client.get(f"/review/static/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"] == media_type
            assert asset.headers["cache-control"] == "no-cache" and asset.headers["etag"]
        assert client.get("/review/static/missing.js").status_code == 404


def test_a_revoked_key_ends_the_session(site: Site) -> None:
    with site.client() as client:
        site.sign_in(client, site.key_a)
        with session_scope(site.db_url) as session:
            revoke_api_key(session, str(site.id_a))
        assert client.get("/review", follow_redirects=False).status_code == 303


def test_decisions_have_an_audit_trail_and_reach_the_result_and_the_export(
    site: Site, tmp_path: Path
) -> None:
    with site.client() as client:
        csrf = site.sign_in(client, site.key_a)
        page = client.get(f"/review/jobs/{site.job_id}")
        # the first row in the queue: text, alternatives with official titles and confidences, counts
        assert 'data-row="1"' in page.text and "staff nurse" in page.text
        assert "Nursing Professionals" in page.text and "41%" in page.text
        assert '<b id="count-decided">0</b> of <b id="count-queue">4</b>' in page.text

        def decide(row: int, action: str, code: str = "") -> str:
            r = client.post(
                f"/review/jobs/{site.job_id}/rows/{row}",
                data={"action": action, "code": code, "csrf_token": csrf},
                follow_redirects=False,
            )
            assert r.status_code == 303, r.text
            return r.headers["location"]

        assert decide(1, "accept").endswith("row=3")  # on to the next undecided row
        decide(3, "alternative", "3313")
        decide(4, "search", "7126")
        decide(6, "uncodable")
        decide(1, "alternative", "3221")  # a coder changes their mind: the trail keeps both
        # invalid decisions are refused with a reason, and change nothing
        err = decide(3, "alternative", "2512")
        assert "row=3" in err and "not+one+of" in err.replace("%20", "+")
        assert "unit+group+is+required" in decide(4, "search", "25")
        r = client.post(
            f"/review/jobs/{site.job_id}/rows/7",
            data={"action": "accept", "csrf_token": csrf},
            follow_redirects=False,
        )
        assert r.status_code == 404  # there is no row 7

        done = client.get(f"/review/jobs/{site.job_id}")
        assert 'id="done"' in done.text

        with session_scope(site.db_url) as session:
            decisions = {
                d.row_number: (d.model_code, d.final_code, d.action, d.reviewer_key_id, d.reviewer_name)
                for d in session.scalars(select(ReviewDecision))
            }
            events = [
                (e.row_number, e.previous_code, e.final_code, e.action)
                for e in session.scalars(select(ReviewEvent).order_by(ReviewEvent.id))
            ]
        assert decisions == {
            1: ("2221", "3221", "alternative", site.id_a, "coder-a"),
            3: ("4311", "3313", "alternative", site.id_a, "coder-a"),
            4: ("7233", "7126", "search", site.id_a, "coder-a"),
            6: ("9629", None, "uncodable", site.id_a, "coder-a"),
        }
        assert events == [
            (1, None, "2221", "accept"),
            (3, None, "3313", "alternative"),
            (4, None, "7126", "search"),
            (6, None, None, "uncodable"),
            (1, "2221", "3221", "alternative"),
        ]

        reviewed = client.get(f"/review/jobs/{site.job_id}/result.csv")
        assert reviewed.status_code == 200 and reviewed.headers["content-type"].startswith("text/csv")
        rows = read_csv(reviewed.text)
        assert list(rows[0])[-3:] == ["final_code", "coded_by", "final_status"]
        assert [(r["ref"], r["final_code"], r["coded_by"], r["final_status"]) for r in rows] == [
            ("r1", "3221", "reviewer", "changed"),
            ("r2", "7212", "model", "auto_coded"),
            ("r3", "3313", "reviewer", "changed"),
            ("r4", "7126", "reviewer", "changed"),
            ("r5", "2341", "model", "auto_coded"),
            ("r6", "", "reviewer", "uncodable"),  # not "not yet reviewed": final_status says which
        ]
        assert rows[5]["job_title"] == "'=cmd"  # still neutralised

        # the API's own result download gains the same columns once the job has been reviewed
        api = client.get(f"/jobs/{site.job_id}/result", headers={"Authorization": f"Bearer {site.key_a}"})
        assert api.status_code == 200
        assert [(r["final_code"], r["coded_by"], r["final_status"]) for r in read_csv(api.text)] == [
            (r["final_code"], r["coded_by"], r["final_status"]) for r in rows
        ]

        export = client.get(f"/review/jobs/{site.job_id}/corrections.csv")
        assert export.status_code == 200 and export.text.startswith(
            "job_title,duties_description,corrected_isco_code"
        )
        path = tmp_path / "corrections.csv"
        path.write_text(export.text, encoding="utf-8")
        read = read_corrections(path)
        assert [(r.job_title, r.isco_code) for r in read] == [
            ("staff nurse", "3221"),
            ("bookkeeper", "3313"),
            ("pipe fitter", "7126"),
        ]
        assert client.get("/review/corrections.csv").text == export.text


def test_another_key_cannot_see_or_change_the_review(site: Site) -> None:
    with site.client() as a, site.client() as b:
        csrf_a = site.sign_in(a, site.key_a)
        a.post(
            f"/review/jobs/{site.job_id}/rows/1",
            data={"action": "accept", "csrf_token": csrf_a},
            follow_redirects=False,
        )
        csrf_b = site.sign_in(b, site.key_b)
        assert site.job_id not in b.get("/review").text
        for path in ("", "?row=1", "/result.csv", "/corrections.csv"):
            assert b.get(f"/review/jobs/{site.job_id}{path}").status_code == 404
        changed = b.post(
            f"/review/jobs/{site.job_id}/rows/1",
            data={"action": "uncodable", "csrf_token": csrf_b},
            follow_redirects=False,
        )
        assert changed.status_code == 404
        assert (
            b.get("/review/corrections.csv").text.strip()
            == "job_title,duties_description,corrected_isco_code"
        )
        # B's session token is no good in A's session either
        stolen = a.post(
            f"/review/jobs/{site.job_id}/rows/1",
            data={"action": "uncodable", "csrf_token": csrf_b},
            follow_redirects=False,
        )
        assert stolen.status_code == 403
    with session_scope(site.db_url) as session:
        decision = session.scalars(select(ReviewDecision)).one()
        assert (decision.final_code, decision.reviewer_key_id) == ("2221", site.id_a)
        assert session.scalar(select(func.count()).select_from(ReviewEvent)) == 1


def test_code_search_finds_the_titles_the_model_knows(site: Site) -> None:
    """ESCO labels and ONS coding-index titles, not only words of the official titles: each hit is a unit
    group with the title that matched; codes and official titles still work; a query takes < 50 ms."""
    with site.client() as client:
        assert client.get("/review/codes?q=nurs", follow_redirects=False).status_code == 303  # signed in only
        site.sign_in(client, site.key_a)

        def hits(q: str) -> list[dict[str, object]]:
            answer = client.get("/review/codes", params={"q": q})
            assert answer.status_code == 200
            found: list[dict[str, object]] = answer.json()
            return found

        nurse = hits("nurse")
        assert nurse[0]["code"] == "2221" and nurse[0]["title"] == "Nursing Professionals"
        assert "nurse" in str(nurse[0]["matched"]).lower() and nurse[0]["source"] in ("ESCO", "ONS index")
        assert {"2221", "3221", "5321"} <= {h["code"] for h in nurse[:8]}  # nurses, associates, aides
        postman = hits("postman")
        assert postman[0]["code"] == "4412" and str(postman[0]["matched"]).lower() == "postman"
        army = hits("army")
        assert army[0]["code"] == "0110" and "army" in str(army[0]["matched"]).lower()  # army officers
        assert "0310" in {h["code"] for h in army[:5]}  # soldiers
        assert hits("plumbers")[0]["code"] == "7126"  # a plural finds the singular titles
        assert hits("Plumbers and Pipe Fitters")[0] == {
            "code": "7126", "title": "Plumbers and Pipe Fitters", "matched": "Plumbers and Pipe Fitters",
            "source": "ISCO-08", "industry": "", "matches": 1,
        }  # fmt: skip
        assert [h["code"] for h in hits("222")] == ["2221", "2222"]  # a code prefix
        assert hits("ward nurs")[0]["code"] == "2221"  # words in any order, the last one typed in part
        by_industry = next(h for h in hits("welder") if h["code"] == "8219")
        assert (
            by_industry["industry"] == "plastics goods mfr"
        )  # a title the index codes by industry says which
        assert hits("") == [] and hits("x") == [] and hits("retired") == []

        from services.gateway.review.search import code_index

        index = code_index()  # built once per process: the page's queries above built it
        assert index is code_index()
        queries = ["nurse", "postman", "army", "ma", "en", "teacher primary", "co", "manager", "2", "cleaner"]
        started = time.perf_counter()
        for q in queries:
            index.search(q)
        assert (time.perf_counter() - started) / len(queries) < 0.05


def test_retrain_with_corrections_queues_a_training_job(site: Site) -> None:
    with site.client() as client:
        csrf = site.sign_in(client, site.key_a)
        nothing = client.post("/review/retrain", data={"csrf_token": csrf}, follow_redirects=False)
        assert "no+review+decisions" in nothing.headers["location"].lower().replace("%20", "+")
        client.post(
            f"/review/jobs/{site.job_id}/rows/4",
            data={"action": "search", "code": "7126", "csrf_token": csrf},
            follow_redirects=False,
        )
        queued = client.post("/review/retrain", data={"csrf_token": csrf}, follow_redirects=False)
        assert queued.status_code == 303 and "queued" in queued.headers["location"]
    with session_scope(site.db_url) as session:
        job = session.scalars(select(Job).where(Job.kind == "training")).one()
        assert job.owner_key_id == site.id_a and job.status == "queued"
        corrections = Path(job.options["corrections"])
        job_id = job.id
    assert [(r.job_title, r.isco_code) for r in read_corrections(corrections)] == [("pipe fitter", "7126")]
    # the task went to the training queue, by name, naming the job; take it off again
    client_redis = redis.Redis.from_url(REDIS_URL)
    messages = client_redis.lrange(QUEUE_TRAINING, 0, -1)
    ours = [m for m in messages if job_id.encode() in m]
    assert ours and json.loads(ours[0])["headers"]["task"] == "isco.training.run"
    for m in ours:
        client_redis.lrem(QUEUE_TRAINING, 0, m)


def test_isco_review_export_and_retrain_commands(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from services.cli import build_app

    with site.client() as client:
        csrf = site.sign_in(client, site.key_a)
        for row, action, code in ((1, "accept", ""), (3, "search", "3313"), (6, "uncodable", "")):
            client.post(
                f"/review/jobs/{site.job_id}/rows/{row}",
                data={"action": action, "code": code, "csrf_token": csrf},
                follow_redirects=False,
            )
    for name, value in {
        "ISCO_ENV": "test",
        "ISCO_DATA_DIR": str(site.settings.data_dir),
        "ISCO_DATABASE_URL": site.db_url,
        "ISCO_REDIS_URL": REDIS_URL,
    }.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    out = tmp_path / "out.csv"
    exported = runner.invoke(build_app(), ["review", "export", "-o", str(out), "--key", str(site.id_a)])
    assert exported.exit_code == 0, exported.output
    assert [(r.job_title, r.isco_code) for r in read_corrections(out)] == [
        ("staff nurse", "2221"),
        ("bookkeeper", "3313"),
    ]
    other = runner.invoke(build_app(), ["review", "export", "-o", str(out), "--key", str(site.id_b)])
    assert (
        other.exit_code == 0 and out.read_text().strip() == "job_title,duties_description,corrected_isco_code"
    )

    queued = runner.invoke(build_app(), ["review", "retrain", "--profile", "quick"])
    assert queued.exit_code == 0, queued.output
    job_id = queued.stdout.strip().splitlines()[0]
    with session_scope(site.db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.kind == "training" and job.options["settings"] == {"profile": "quick"}
        assert [r.isco_code for r in read_corrections(Path(job.options["corrections"]))] == ["2221", "3313"]
    client_redis = redis.Redis.from_url(REDIS_URL)
    for m in client_redis.lrange(QUEUE_TRAINING, 0, -1):
        if job_id.encode() in m:
            client_redis.lrem(QUEUE_TRAINING, 0, m)


def test_batch_jobs_are_reviewed_the_same_way(site: Site, tmp_path: Path) -> None:
    job_settings = JobSettings(env="test", data_dir=site.settings.data_dir, database_url=site.db_url)
    batch_id = finished_batch_job(site.db_url, job_settings, site.id_a)
    with site.client() as client:
        csrf = site.sign_in(client, site.key_a)
        page = client.get(f"/review/jobs/{batch_id}")
        assert 'data-row="1"' in page.text and "staff nurse" in page.text
        for row, action, code in ((1, "search", "2222"), (6, "uncodable", "")):
            client.post(
                f"/review/jobs/{batch_id}/rows/{row}",
                data={"action": action, "code": code, "csrf_token": csrf},
                follow_redirects=False,
            )
        rows = read_csv(client.get(f"/review/jobs/{batch_id}/result.csv").text)
        assert list(rows[0])[:3] == ["id", "job_title", "duties_description"]
        assert [(r["id"], r["final_code"], r["coded_by"], r["final_status"]) for r in rows] == [
            ("b1", "2222", "reviewer", "changed"),
            ("b2", "7212", "model", "auto_coded"),
            ("b3", "", "", "pending"),
            ("b4", "", "", "pending"),
            ("b5", "2341", "model", "auto_coded"),
            ("b6", "", "reviewer", "uncodable"),
        ]
        assert client.get(f"/review/jobs/{batch_id}/corrections.csv").text.splitlines()[1:] == [
            "staff nurse,cares for ward patients,2222"
        ]
        # the API's result download says the same, as JSON (null where there is no final code yet) and CSV
        api = {"X-API-Key": site.key_a}
        answer = client.get(f"/jobs/{batch_id}/result", headers=api).json()
        assert [(r["final_code"], r["coded_by"], r["final_status"]) for r in answer["results"]] == [
            ("2222", "reviewer", "changed"),
            ("7212", "model", "auto_coded"),
            (None, None, "pending"),  # still in the queue
            (None, None, "pending"),
            ("2341", "model", "auto_coded"),
            (None, "reviewer", "uncodable"),
        ]
        assert answer["results"][0]["unit_code"] == "2221"  # the model's answer is kept beside the coder's
        as_csv = read_csv(client.get(f"/jobs/{batch_id}/result", headers={**api, "Accept": "text/csv"}).text)
        assert as_csv == rows


def test_the_row_shows_the_industry_beside_the_title(site: Site) -> None:
    """CSV and batch jobs whose input gave the employer's industry: the row shows it (and asks for evidence
    with it); a row without one shows none, and a batch's CSV form gains the column."""
    from dataclasses import replace

    from tests.review_support import CASES

    cases = (replace(CASES[0], industry="Hospital services"), CASES[1], replace(CASES[2], industry="  "))
    job_settings = JobSettings(env="test", data_dir=site.settings.data_dir, database_url=site.db_url)
    csv_id = finished_csv_job(site.db_url, job_settings, site.id_a, cases)
    batch_id = finished_batch_job(site.db_url, job_settings, site.id_a, cases)
    with site.client() as client:
        asked: list[dict[str, object]] = []

        async def predict_raw(payload: dict[str, object]) -> bytes:  # the inference service's edge
            asked.append(payload)
            return json.dumps({"model_version": "tiny-review-1", "results": [{"evidence": []}]}).encode()

        client.app.state.inference.predict_raw = predict_raw  # type: ignore[attr-defined]
        site.sign_in(client, site.key_a)
        for job_id in (csv_id, batch_id):
            page = client.get(f"/review/jobs/{job_id}?row=1")
            assert page.status_code == 200 and "staff nurse" in page.text
            industry = re.search(r'<span class="industry" id="industry"[^>]*>([^<]*)</span>', page.text)
            assert industry is not None and industry.group(1) == "in Hospital services"
            assert asked[-1]["records"] == [  # type: ignore[comparison-overlap]
                {
                    "job_title": "staff nurse",
                    "duties_description": "cares for ward patients",
                    "industry": "Hospital services",
                }
            ]
            blank = client.get(f"/review/jobs/{job_id}?row=3")  # white space only: no industry shown
            assert "bookkeeper" in blank.text and 'id="industry"' not in blank.text
        plain = client.get(f"/review/jobs/{site.job_id}?row=1")  # a job without the column
        assert "staff nurse" in plain.text and 'id="industry"' not in plain.text
        rows = read_csv(client.get(f"/review/jobs/{batch_id}/result.csv").text)
        assert list(rows[0])[:4] == ["id", "job_title", "duties_description", "industry"]
        assert [r["industry"] for r in rows] == ["Hospital services", "", "  "]
        rows = read_csv(client.get(f"/review/jobs/{csv_id}/result.csv").text)
        assert [r["Industry"] for r in rows] == ["Hospital services", "", "  "]


def test_dev_mode_without_keys_reviews_jobs_without_owner(sqlite_url: str, tmp_path: Path) -> None:
    settings = GatewaySettings(
        env="dev", auth_disabled=True, data_dir=tmp_path / "data", database_url=sqlite_url,
        inference_url="http://127.0.0.1:9",
    )  # fmt: skip
    job_settings = JobSettings(env="test", data_dir=tmp_path / "data", database_url=sqlite_url)
    job_id = finished_csv_job(sqlite_url, job_settings, None)
    with TestClient(create_app(settings)) as client:
        page = client.get("/review/login")
        assert 'name="api_key"' not in page.text and "Development mode" in page.text
        token = CSRF_RE.search(page.text).group(1)  # type: ignore[union-attr]
        assert client.post("/review/login", data={"csrf_token": token}).status_code == 200
        home = client.get("/review")
        assert job_id in home.text
        csrf = CSRF_RE.search(home.text).group(1)  # type: ignore[union-attr]
        r = client.post(
            f"/review/jobs/{job_id}/rows/1",
            data={"action": "accept", "csrf_token": csrf},
            follow_redirects=False,
        )
        assert r.status_code == 303
    with session_scope(sqlite_url) as session:
        decision = session.scalars(select(ReviewDecision)).one()
        assert decision.reviewer_key_id is None and decision.reviewer_name == "dev (auth disabled)"


def _row_page(client: TestClient, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200, page.text
    return page.text


def test_enter_has_no_default_where_the_model_did_not_code_at_four_digits_or_flagged(site: Site) -> None:
    """No `#accept` (the button and the key Enter press) on rows not coded at 4 digits or flagged; a row coded
    at 4 digits and routed to review for another reason keeps it; a status answer offers Uncodable first."""
    from tests.review_support import Case

    nurse = (("2221", 0.55), ("3221", 0.2))
    cases = (
        Case(
            "Retired", "", (("3421", 0.05), ("5321", 0.04)), True, reasons=("not_coded", "not_an_occupation")
        ),
        Case("staff nurse", "", nurse, True, reasons=("below_threshold",), coded=True),  # router unsure
        Case("staff nurse", "", nurse, True, reasons=("not_coded",)),
        Case("Krankenschwester", "", nurse, True, reasons=("unsupported_language",), coded=True),
        Case("staff nurse", "", nurse, True, reasons=("second_opinion",), coded=True),  # another reason
        Case("staff nurse", "", nurse, True, reasons=(), coded=True),  # routed without a reason given
    )
    job_settings = JobSettings(env="test", data_dir=site.settings.data_dir, database_url=site.db_url)
    job_id = finished_csv_job(site.db_url, job_settings, site.id_a, cases)
    with site.client() as client:
        csrf = site.sign_in(client, site.key_a)
        pages = {n: _row_page(client, f"/review/jobs/{job_id}?row={n}") for n in range(1, 7)}
        for n in (1, 2, 3, 4):
            assert 'id="accept"' not in pages[n] and 'id="no-default"' in pages[n], n
            assert 'data-default=""' in pages[n]
        retired = pages[1]
        assert 'id="status-answer"' in retired and "Accept 3421" not in retired
        assert re.search(r'<button type="submit" class="primary"[^>]*id="uncodable"', retired)
        for n in (5, 6):
            assert re.search(r'id="accept"><kbd>Enter</kbd> Accept 2221', pages[n]), n
            assert 'data-default="2221"' in pages[n]
        # the explicit choices still work, also without JavaScript (the pressed button's `choice`)
        posted = client.post(
            f"/review/jobs/{job_id}/rows/1",
            data={"choice": "uncodable:", "csrf_token": csrf},
            follow_redirects=False,
        )
        assert posted.status_code == 303
        client.post(
            f"/review/jobs/{job_id}/rows/2",
            data={"choice": "accept:2221", "csrf_token": csrf},
            follow_redirects=False,
        )
    with session_scope(site.db_url) as session:
        decided = {
            d.row_number: (d.final_code, d.action)
            for d in session.scalars(select(ReviewDecision).where(ReviewDecision.job_id == job_id))
        }
    assert decided == {1: (None, "uncodable"), 2: ("2221", "accept")}


def test_auto_coded_rows_are_audited_on_a_seeded_sample(site: Site) -> None:
    """A coder opens a seeded random sample of the auto-coded rows (default share, or a number / share of
    rows), decides them like the queue's rows, and the job's page and the job list count the rows checked
    and changed; the result says reviewed / changed / uncodable for them."""
    from shared.review.audit import AUDIT_MIN_ROWS, audit_key

    job_settings = JobSettings(env="test", data_dir=site.settings.data_dir, database_url=site.db_url)
    cases = audit_cases(auto=100, queued=10)
    job_id = finished_csv_job(site.db_url, job_settings, site.id_a, cases)
    queue_rows = set(range(5, 51, 5))
    sample_re = re.compile(r'data-row="(\d+)"')

    def sample(client: TestClient, query: str) -> list[int]:
        """The sample's rows, walked with the page's own next links."""
        page = _row_page(client, f"/review/jobs/{job_id}/audit{query}")
        seen = [int(sample_re.search(page).group(1))]  # type: ignore[union-attr]
        while (link := re.search(r'id="next" href="([^"]+)"', page)) is not None:
            page = _row_page(client, link.group(1).replace("&amp;", "&"))
            seen.append(int(sample_re.search(page).group(1)))  # type: ignore[union-attr]
        return seen

    with site.client() as client:
        csrf = site.sign_in(client, site.key_a)
        default = sample(client, "")
        assert len(default) == AUDIT_MIN_ROWS == 20  # 5% of 100 is 5: at least 20
        assert default == sorted(default) and not set(default) & queue_rows
        auto_rows = [n for n in range(1, 111) if n not in queue_rows]
        assert default == sorted(sorted(auto_rows, key=lambda n: audit_key(job_id, n))[:20])  # seeded
        ten = sample(client, "?rows=10")
        assert len(ten) == 10 and set(ten) <= set(default)  # a smaller sample is part of a larger one
        assert len(sample(client, "?share=7")) == 7  # 7% of 100 auto-coded rows
        assert client.get(f"/review/jobs/{job_id}/audit?rows=5000").status_code == 422
    with site.client() as other_process:  # another app (process): the same sample
        site.sign_in(other_process, site.key_a)
        assert sample(other_process, "?rows=10") == ten

    with site.client() as client:
        csrf = site.sign_in(client, site.key_a)
        three = sample(client, "?rows=3")
        assert set(three) <= set(ten)
        first = _row_page(client, f"/review/jobs/{job_id}/audit?rows=10&row={three[0]}")
        assert f'data-row="{three[0]}"' in first and 'data-mode="audit"' in first
        assert "without a coder" in first and 'class="reason auto"' in first
        # Enter confirms the model's own code here: it coded the row at four digits, unflagged
        model_code = cases[three[0] - 1].ranked[0][0]
        assert f'data-default="{model_code}"' in first and f"Confirm {model_code}" in first
        assert 'id="audit-checked">0</b>' in first

        def decide(number: int, action: str, code: str = "") -> str:
            r = client.post(
                f"/review/jobs/{job_id}/rows/{number}",
                data={"action": action, "code": code, "csrf_token": csrf, "audit_rows": "10"},
                follow_redirects=False,
            )
            assert r.status_code == 303, r.text
            return r.headers["location"]

        after = decide(three[0], "accept")
        following = next(n for n in ten if n > three[0])
        assert after.endswith(f"/review/jobs/{job_id}/audit?rows=10&row={following}")  # the sample's next row
        other_code = cases[three[1] - 1].ranked[1][0]
        decide(three[1], "search", other_code)
        decide(three[2], "uncodable")
        page = _row_page(client, f"/review/jobs/{job_id}")
        assert re.search(
            r'id="audit-checked">3</b> of 100 auto-coded rows checked, <b id="audit-changed">2</b>', page
        )
        assert '<b id="count-decided">0</b> of <b id="count-queue">10</b>' in page  # the queue is untouched
        home = client.get("/review").text
        row = home[home.index(f'data-job="{job_id}"') :]
        assert re.search(r'class="count-audited"[^>]*>3 checked, 2 changed', row)
        assert re.search(r'class="count-reviewed"[^>]*>0 / 10', row)
        result = {
            int(r["ref"][1:]): r for r in read_csv(client.get(f"/review/jobs/{job_id}/result.csv").text)
        }
        unchecked = next(n for n in ten if n not in three)
        assert [result[n]["final_status"] for n in (*three, unchecked)] == [
            "reviewed",
            "changed",
            "uncodable",
            "auto_coded",
        ]
        assert result[5]["final_status"] == "pending" and result[three[1]]["final_code"] == other_code
        done = client.get(f"/review/jobs/{job_id}/audit?rows=3")
        assert 'id="done"' in done.text and "All 3 sampled auto-coded rows are checked" in done.text
        # a row that does not exist takes no decision
        missing = client.post(
            f"/review/jobs/{job_id}/rows/999",
            data={"action": "accept", "csrf_token": csrf},
            follow_redirects=False,
        )
        assert missing.status_code == 404


def test_the_row_shows_the_records_other_columns(site: Site) -> None:
    job_settings = JobSettings(env="test", data_dir=site.settings.data_dir, database_url=site.db_url)
    csv_id = finished_csv_job(site.db_url, job_settings, site.id_a, extra=("respondent_id", "region", "age"))
    batch_id = finished_batch_job(site.db_url, job_settings, site.id_a)
    with site.client() as client:
        site.sign_in(client, site.key_a)
        page = _row_page(client, f"/review/jobs/{csv_id}?row=3")
        record = re.search(r'<dl class="record" id="record">(.*?)</dl>', page, re.S)
        assert record is not None
        pairs = re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", record.group(1))
        assert pairs == [
            ("ref", "r3"),
            ("respondent_id", "respondent_id-3"),
            ("region", "region-3"),
            ("age", "age-3"),
        ]
        batch = _row_page(client, f"/review/jobs/{batch_id}?row=1")
        assert "<dt>id</dt><dd>b1</dd>" in batch


def test_the_job_list_names_dates_counts_and_pages_every_job(site: Site) -> None:
    from services.gateway.review import home

    job_settings = JobSettings(env="test", data_dir=site.settings.data_dir, database_url=site.db_url)
    batch_id = finished_batch_job(site.db_url, job_settings, site.id_a)
    for i in range(home.JOBS_PER_PAGE):  # with the site's job and the batch: two pages
        finished_csv_job(site.db_url, job_settings, site.id_a, filename=f"wave-{i}.csv")
    with site.client() as client:
        site.sign_in(client, site.key_a)
        first = client.get("/review").text
        rows = re.findall(r'<tr data-job="[^"]+">.*?</tr>', first, re.S)
        assert len(rows) == home.JOBS_PER_PAGE
        for row in rows:  # every job shown has a name, a submit time and its counts
            assert re.search(r'class="name">[^<]+<', row)
            assert re.search(r'class="submitted"[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d UTC<', row)
            assert re.search(r'class="count-queue"[^>]*>4<', row) and re.search(r'count-auto"[^>]*>2<', row)
        assert "wave-24.csv" in first and f"Jobs 1–{home.JOBS_PER_PAGE} of {home.JOBS_PER_PAGE + 2}" in first
        older = re.search(r'id="older" href="([^"]+)"', first)
        assert older is not None and 'id="newer"' not in first
        second = client.get(older.group(1).replace("&amp;", "&")).text
        assert 'id="newer"' in second and 'id="older"' not in second
        assert f'data-job="{batch_id}"' in second and f'data-job="{site.job_id}"' in second
        assert "Batch of 6 records: staff nurse, welder, …" in second and "survey.csv" in second
        assert client.get("/review?page=0").status_code == 422


def test_the_header_names_the_keys_label_and_the_page_has_a_favicon(site: Site) -> None:
    from services.run import register_key

    with session_scope(site.db_url) as session:
        register_key(session, "isco_from-the-environment", site.settings.secret_key, name="ISCO_API_KEY")
    with site.client() as client:
        site.sign_in(client, site.key_a)
        home = client.get("/review").text
        assert '<b id="key-label">coder-a</b>' in home and f"{site.key_a[:12]}…" in home
        icon = re.search(r'<link rel="icon" type="image/svg\+xml" href="([^"]+)">', home)
        assert icon is not None
        svg = client.get(icon.group(1))
        assert (
            svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml" and "<svg" in svg.text
        )
    with site.client() as client:
        site.sign_in(client, "isco_from-the-environment")
        home = client.get("/review").text
        assert '<b id="key-label">start-up key</b>' in home and "ISCO_API_KEY" not in home


def test_the_models_box_speaks_to_coders(site: Site) -> None:
    from shared.db.tables import ModelStatus, ModelVersion

    metrics = {
        "test": {"accuracy": 0.71, "top5": 0.93, "macro_f1": 0.4, "routing": {"auto_coded": 0.4}},
        "devsets": {
            "ilo_titles_dev": {
                "accuracy": 0.697,
                "routing": {"auto_coded": 0.336, "auto_coded_precision": 0.958},
            },
            "onet_jobs_dev": {
                "accuracy": 0.507,
                "routing": {"auto_coded": 0.113, "auto_coded_precision": 0.88},
            },
        },
    }
    with session_scope(site.db_url) as session:
        session.add(
            ModelVersion(
                version="v20261201-0412-ab12", path="/nowhere", base_model="tiny", status=ModelStatus.ready,
                is_best=True, metrics=metrics, eval_score=0.71,
            )
        )  # fmt: skip
    with site.client() as client:
        site.sign_in(client, site.key_a)
        home = client.get("/review").text
        box = home[home.index('id="registry"') :]
        assert "v20261201-0412-ab12" in box and "in use" in box
        assert '69.7% <span class="muted">on ILO titles</span>' in box and "on O*NET jobs" in box
        assert '33.6% <span class="muted">of ILO titles, 95.8% right</span>' in box
        for raw in ("macro_f1", "top5", "auto_coded", "devsets", "eval_score"):
            assert raw not in box
