"""services/worker/processing.py driven in-process (no Celery): chunking, deduplication, resume after a crash,
cancellation, pinned model versions, batch jobs. A real tiny model, real Redis (lease), SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import redis

from services.worker.processing import JobProcessor, LeaseHeld
from services.worker.settings import WorkerSettings
from shared.db.session import session_scope
from shared.db.tables import Job, JobStatus
from shared.holder import PredictorHolder
from shared.jobs.files import input_path, job_dir, part_path, parts_dir
from shared.jobs.leases import lease_holder_pid, lease_key, mark_sent, reconcile, sent_key
from shared.jobs.state import cancel as cancel_job
from shared.jobs.state import create_job, new_job_id
from tests.jobs_support import register_best, test_redis_url, tiny_model_dir  # noqa: F401

pytestmark = pytest.mark.timeout(120)


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing in the processor catches it."""


class CountingPredictors(PredictorHolder):
    """The worker's real predictor holder, counting what reaches the model and able to crash or act after N
    chunks."""

    def __init__(self, settings: WorkerSettings, after_calls: int | None = None, action: Any = None):
        super().__init__(settings.predictor_settings())
        self.records_seen: list[tuple[str, str]] = []
        self.industries_seen: list[tuple[str, str]] = []  # (title, industry) of each record the model got
        self.calls = 0
        self.after_calls = after_calls
        self.action = action

    def _load(self, model_dir: Path) -> Any:
        real = super()._load(model_dir)
        outer = self

        class Wrapped:
            version = real.version

            def predict(self, records: Any, options: Any) -> Any:
                outer.calls += 1
                if outer.after_calls is not None and outer.calls > outer.after_calls:
                    outer.action()
                outer.records_seen.extend((r.job_title, r.duties_description) for r in records)
                outer.industries_seen.extend((r.job_title, r.industry) for r in records)
                return real.predict(records, options)

        return Wrapped()


@pytest.fixture
def settings(tmp_path: Path, db_url: str, test_redis_url: str, tiny_model_dir: Path) -> WorkerSettings:  # noqa: F811
    s = WorkerSettings(
        env="test",
        data_dir=tmp_path / "data",
        database_url=db_url,
        redis_url=test_redis_url,
        job_chunk_rows=10,
        torch_threads=1,
        job_lock_ttl_s=30,
    )
    s.ensure_dirs()
    register_best(db_url, tiny_model_dir, "tiny-jobs-1")
    return s


def make_csv_job(settings: WorkerSettings, job_id: str, lines: list[str], **options: Any) -> Path:
    path = input_path(settings, job_id, "csv")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with session_scope(settings.db_url) as session:
        create_job(
            session, job_id=job_id, kind="csv", owner_key_id=None, input_file=path, rows_total=len(lines) - 1,
            options={"top_k": 5, **options}, settings=settings,
        )  # fmt: skip
    return path


def job_row(settings: WorkerSettings, job_id: str) -> Job:
    with session_scope(settings.db_url) as session:
        return session.get(Job, job_id)  # type: ignore[return-value]


def result_rows(settings: WorkerSettings, job_id: str) -> list[dict[str, str]]:
    job = job_row(settings, job_id)
    assert job.result_path
    return list(csv.DictReader(io.StringIO(Path(job.result_path).read_text(encoding="utf-8"))))


def unique_lines(n: int) -> list[str]:
    return ["job_title,duties_description,ref"] + [f"title {i},duty {i},{i}" for i in range(n)]


def test_rows_in_order_duplicates_scored_once_and_row_errors(settings: WorkerSettings) -> None:
    lines = ["Job Title;duties_description;ref"]
    for i in range(45):
        lines.append(f"nurse {i % 4};cares for patients;{i}")
    lines += [";;empty", "=cmd|' /C calc'!A0;x;-1"]
    make_csv_job(settings, "dup", lines)
    predictors = CountingPredictors(settings)
    result = JobProcessor(settings, predictors).run("dup")
    assert result.status == JobStatus.succeeded
    job = job_row(settings, "dup")
    assert (job.rows_done, job.rows_failed, job.chunks_done) == (47, 1, 5)
    assert job.model_version == "tiny-jobs-1" and job.finished_at and job.expires_at
    # 4 distinct nurse texts and the formula row reach the model once each, though they repeat across chunks
    assert sorted(predictors.records_seen) == sorted({(f"nurse {i}", "cares for patients") for i in range(4)}
                                                     | {("=cmd|' /C calc'!A0", "x")})  # fmt: skip
    text = Path(job.result_path).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text), delimiter=";"))
    assert [r["ref"] for r in rows] == [str(i) for i in range(45)] + ["empty", "-1"]  # a number stays
    assert rows[45]["row_error"] == "job_title and duties_description are both empty"
    assert rows[45]["isco_code"] == "" and rows[0]["unit_code"]
    assert rows[46]["Job Title"] == "'=cmd|' /C calc'!A0"
    assert all(len(r["top_codes"].split("|")) == 5 for r in rows[:45])
    assert not parts_dir(settings, "dup").exists()  # parts are removed once the result is whole


def test_resume_after_crash_gives_every_row_exactly_once(settings: WorkerSettings) -> None:
    make_csv_job(settings, "crash", unique_lines(95))
    r = redis.Redis.from_url(settings.redis_url)

    def die() -> None:
        raise Crash

    with pytest.raises(Crash):
        JobProcessor(settings, CountingPredictors(settings, after_calls=4, action=die)).run("crash")
    job = job_row(settings, "crash")
    assert job.status == JobStatus.running and job.chunks_done == 4 and job.rows_done == 40
    # a live holder's lease (longer than the waiting task's patience): the redelivered task gives up
    key = lease_key("crash")
    short = settings.model_copy(update={"job_lock_ttl_s": 1.0, "job_heartbeat_s": 0.2})
    r.set(key, "someone-else", px=30_000)
    with pytest.raises(LeaseHeld):
        JobProcessor(short).run("crash")
    r.delete(key)
    # a part written after the last recorded chunk (crash between rename and commit) is simply rewritten
    part_path(settings, "crash", 4).write_text("garbage\n")
    predictors = CountingPredictors(settings)
    assert JobProcessor(settings, predictors).run("crash").status == JobStatus.succeeded
    assert len(predictors.records_seen) == 55  # only the chunks after the last finished one
    rows = result_rows(settings, "crash")
    assert [r["ref"] for r in rows] == [str(i) for i in range(95)]
    assert job_row(settings, "crash").rows_done == 95


def test_a_dead_holders_lease_is_waited_out_and_the_job_taken_over(settings: WorkerSettings) -> None:
    """A task redelivered after its worker died finds the old lease; it waits for it to lapse (no heartbeat
    renews it any more) and resumes, instead of ending and leaving the job to the reconciler."""
    make_csv_job(settings, "dead", unique_lines(25))
    r = redis.Redis.from_url(settings.redis_url)
    r.set(lease_key("dead"), "dead-worker", px=1_500)
    short = settings.model_copy(update={"job_lock_ttl_s": 3.0, "job_heartbeat_s": 0.2})
    assert JobProcessor(short).run("dead").status == JobStatus.succeeded
    assert [row["ref"] for row in result_rows(settings, "dead")] == [str(i) for i in range(25)]
    assert r.get(lease_key("dead")) is None  # released at the end


def test_heartbeat_keeps_the_lease_alive_while_a_chunk_takes_longer_than_its_ttl(
    settings: WorkerSettings,
) -> None:
    import time

    make_csv_job(settings, "slow", unique_lines(15))
    short = settings.model_copy(update={"job_lock_ttl_s": 1.0, "job_heartbeat_s": 0.2})
    r = redis.Redis.from_url(settings.redis_url)
    seen: list[bool] = []

    def slow() -> None:
        time.sleep(1.5)  # longer than the lease's time to live: only the heartbeat keeps it
        seen.append(bool(r.exists(lease_key("slow"))))

    predictors = CountingPredictors(short, after_calls=0, action=slow)
    assert JobProcessor(short, predictors).run("slow").status == JobStatus.succeeded
    assert seen and all(seen)


def test_reconcile_resends_only_unattended_jobs(settings: WorkerSettings) -> None:
    r = redis.Redis.from_url(settings.redis_url)
    for job_id in ("held", "sent", "lost", "done"):
        make_csv_job(settings, f"rc-{job_id}", unique_lines(3))
        r.delete(lease_key(f"rc-{job_id}"), sent_key(f"rc-{job_id}"))
    with session_scope(settings.db_url) as session:
        for job_id, status in (("held", "running"), ("lost", "running"), ("done", "succeeded")):
            job = session.get(Job, f"rc-{job_id}")
            assert job is not None
            job.status = status
    r.set(lease_key("rc-held"), "a-live-worker", px=30_000)
    mark_sent(r, "rc-sent", settings)
    sent: list[tuple[str, str]] = []
    with session_scope(settings.db_url) as session:
        assert reconcile(session, r, lambda *job: sent.append(job), settings) == ["rc-lost"]
    assert sent == [("rc-lost", "csv")] and r.exists(sent_key("rc-lost"))  # marked: not sent again
    with session_scope(settings.db_url) as session:
        assert reconcile(session, r, lambda *job: sent.append(job), settings) == []
    r.delete(*(lease_key(f"rc-{j}") for j in ("held", "sent", "lost", "done")))
    r.delete(*(sent_key(f"rc-{j}") for j in ("held", "sent", "lost", "done")))


def test_reconcile_resends_lost_training_tasks_and_fails_lost_runs(settings: WorkerSettings) -> None:
    """A queued training job whose task the broker lost is sent again (to the training queue); a running one
    whose worker died (no lease) is failed, since a run does not resume; a live run is left alone."""
    r = redis.Redis.from_url(settings.redis_url)
    names = ("queued-lost", "queued-sent", "running-lost", "running-live")
    with session_scope(settings.db_url) as session:
        for name in names:
            status = JobStatus.running if name.startswith("running") else JobStatus.queued
            session.add(Job(id=f"tr-{name}", kind="training", status=status, input_path="", options={}))
    r.delete(*(lease_key(f"tr-{n}") for n in names), *(sent_key(f"tr-{n}") for n in names))
    mark_sent(r, "tr-queued-sent", settings)
    r.set(lease_key("tr-running-live"), "a-live-worker", px=30_000)
    sent: list[tuple[str, str]] = []
    with session_scope(settings.db_url) as session:
        handled = reconcile(session, r, lambda *job: sent.append(job), settings)
    assert handled == ["tr-queued-lost", "tr-running-lost"]
    assert sent == [("tr-queued-lost", "training")]
    assert job_row(settings, "tr-running-lost").status == JobStatus.failed
    assert "submit it again" in (job_row(settings, "tr-running-lost").error or "")
    assert job_row(settings, "tr-running-live").status == JobStatus.running
    assert job_row(settings, "tr-queued-lost").status == JobStatus.queued
    r.delete(*(lease_key(f"tr-{n}") for n in names), *(sent_key(f"tr-{n}") for n in names))


def test_cancel_stops_before_the_next_chunk(settings: WorkerSettings) -> None:
    make_csv_job(settings, "cancel", unique_lines(100))

    def cancel() -> None:
        with session_scope(settings.db_url) as session:
            cancel_job(session, session.get(Job, "cancel"), settings)  # type: ignore[arg-type]

    result = JobProcessor(settings, CountingPredictors(settings, after_calls=3, action=cancel)).run("cancel")
    assert result.status == JobStatus.cancelled
    job = job_row(settings, "cancel")
    assert job.status == JobStatus.cancelled and job.rows_done < 100 and job.result_path is None
    assert not Path(job.input_path).exists() and not job_dir(settings, "cancel").exists()
    # a redelivered task for a cancelled job does nothing
    assert JobProcessor(settings).run("cancel").status == JobStatus.cancelled


def test_resumed_job_keeps_its_model_or_restarts_when_it_is_gone(settings: WorkerSettings) -> None:
    make_csv_job(settings, "pinned", unique_lines(30))
    with session_scope(settings.db_url) as session:
        job = session.get(Job, "pinned")
        assert job is not None
        job.status, job.model_version, job.chunks_done, job.rows_done = JobStatus.running, "deleted-v0", 2, 20
        job.options = {**job.options, "chunk_rows": 10}
    parts_dir(settings, "pinned").mkdir(parents=True)
    for n in range(2):
        part_path(settings, "pinned", n).write_text("from the old model\n")
    assert JobProcessor(settings).run("pinned").status == JobStatus.succeeded
    rows = result_rows(settings, "pinned")
    assert [r["ref"] for r in rows] == [str(i) for i in range(30)]  # all rows coded again, by one model
    job = job_row(settings, "pinned")
    assert job.model_version == "tiny-jobs-1" and job.rows_done == 30


def test_batch_job_writes_json_lines_in_order(settings: WorkerSettings) -> None:
    path = input_path(settings, "batch", "batch")
    records = [{"id": f"r{i}", "job_title": f"clerk {i % 3}", "duties_description": ""} for i in range(25)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with session_scope(settings.db_url) as session:
        create_job(
            session, job_id="batch", kind="batch", owner_key_id=None, input_file=path, rows_total=25,
            options={"top_k": 3, "thresholds": {"unit": 0.0}}, settings=settings,
        )  # fmt: skip
    assert JobProcessor(settings).run("batch").status == JobStatus.succeeded
    job = job_row(settings, "batch")
    lines = [json.loads(x) for x in Path(job.result_path).read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"r{i}" for i in range(25)]
    assert all(len(x["alternatives"]) == 3 and x["level"] == 4 for x in lines)  # options reached the model


def test_industry_column_is_read_and_its_absence_changes_nothing(settings: WorkerSettings) -> None:
    """An optional `industry` column reaches the model (and is kept in the result); a file without it is coded
    exactly as the records' titles and duties alone are, byte for byte."""
    from shared.coding import EMPTY_RECORD
    from shared.csvio.writing import format_row, header_line, result_header, result_row
    from shared.schemas import JobRecord, PredictOptions

    texts = [
        ("inspector", "checks"),
        ("inspector", "checks"),
        ("inspector", "checks"),
        ("", ""),
        ("cook", ""),
    ]
    industries = ["Paper mfr", "banking", "", "paper", "  "]
    with_column = ["job_title,duties_description,Industry,ref"]
    with_column += [f"{t},{d},{i},{n}" for n, ((t, d), i) in enumerate(zip(texts, industries, strict=True))]
    plain = ["job_title,duties_description,ref"] + [f"{t},{d},{n}" for n, (t, d) in enumerate(texts)]
    make_csv_job(settings, "industry", with_column)
    make_csv_job(settings, "plain", plain)
    predictors = CountingPredictors(settings)
    processor = JobProcessor(settings, predictors)
    assert processor.run("industry").status == JobStatus.succeeded
    # the same title and duties in three industries are three records; an industry alone is no record
    assert predictors.industries_seen == [
        ("inspector", "Paper mfr"),
        ("inspector", "banking"),
        ("inspector", ""),
        ("cook", "  "),
    ]
    rows = result_rows(settings, "industry")
    assert [r["Industry"] for r in rows] == industries  # kept as written
    assert rows[3]["row_error"] == EMPTY_RECORD and rows[3]["isco_code"] == ""
    assert processor.run("plain").status == JobStatus.succeeded
    plain_rows = result_rows(settings, "plain")
    for row, plain_row in zip(rows, plain_rows, strict=True):  # no industry (or blank): the same coding
        if not row["Industry"].strip():
            assert {k: v for k, v in row.items() if k != "Industry"} == plain_row
    # byte for byte what coding the titles and duties alone gives
    predictor = processor.predictors.current
    options = PredictOptions(top_k=5)
    expected = header_line(result_header(plain[0].split(",")))
    for n, (title, duties) in enumerate(texts):
        cells = [title, duties, str(n)]
        if not title and not duties:
            expected += format_row(result_row(cells, EMPTY_RECORD))
            continue
        prediction = predictor.predict([JobRecord(job_title=title, duties_description=duties)], options)[0]
        expected += format_row(result_row(cells, prediction))
    assert Path(job_row(settings, "plain").result_path).read_bytes().decode("utf-8") == expected


def test_batch_job_reads_the_industry(settings: WorkerSettings) -> None:
    path = input_path(settings, "batch-industry", "batch")
    records = [
        {"id": "a", "job_title": "inspector", "duties_description": "", "industry": "paper"},
        {"id": "b", "job_title": "inspector", "duties_description": ""},  # written before the field existed
        {"id": "c", "job_title": "", "duties_description": "", "industry": "paper"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with session_scope(settings.db_url) as session:
        create_job(
            session, job_id="batch-industry", kind="batch", owner_key_id=None, input_file=path, rows_total=3,
            options={"top_k": 3}, settings=settings,
        )  # fmt: skip
    predictors = CountingPredictors(settings)
    assert JobProcessor(settings, predictors).run("batch-industry").status == JobStatus.succeeded
    assert predictors.industries_seen == [("inspector", "paper"), ("inspector", "")]
    lines = [
        json.loads(x) for x in Path(job_row(settings, "batch-industry").result_path).read_text().splitlines()
    ]
    assert [x["id"] for x in lines] == ["a", "b", "c"]
    assert "industry" not in lines[0]  # results echo the id only, as before
    assert lines[2]["error"] == "job_title and duties_description are both empty"


def test_missing_input_fails_the_job_with_the_reason(settings: WorkerSettings) -> None:
    path = make_csv_job(settings, "gone", unique_lines(3))
    path.unlink()
    assert JobProcessor(settings).run("gone").status == JobStatus.failed
    job = job_row(settings, "gone")
    assert job.status == JobStatus.failed and "input file is missing" in (job.error or "")


def test_training_task_is_a_thin_call_to_run_training(
    settings: WorkerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training task passes the row's options to the pipeline and records the outcome (the pipeline
    itself is replaced here: its own tests train real models)."""
    from services.trainer import pipeline
    from services.worker import tasks

    seen: dict[str, Any] = {}

    class Outcome:
        version = "v-trained"

        class promotion:  # noqa: N801
            @staticmethod
            def as_dict() -> dict[str, Any]:
                return {"promoted": True, "reason": "better"}

    r = redis.Redis.from_url(settings.redis_url)

    def fake_run_training(trainer_settings: Any, **kwargs: Any) -> Outcome:
        seen.update(kwargs, use_default_corpus=trainer_settings.use_default_corpus)
        # while it runs, the job's lease says a live worker has it, and its sent marker is gone
        seen["lease_pid"] = lease_holder_pid(r, "train-1")
        seen["marked"] = bool(r.exists(sent_key("train-1")))
        return Outcome()

    monkeypatch.setattr(pipeline, "run_training", fake_run_training)
    env = {
        "ISCO_DATA_DIR": settings.data_dir,
        "ISCO_DATABASE_URL": settings.db_url,
        "ISCO_REDIS_URL": settings.redis_url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    with session_scope(settings.db_url) as session:
        options = {"settings": {"use_default_corpus": False}, "data_csv": "/data/coded.csv"}
        session.add(
            Job(id="train-1", kind="training", status=JobStatus.queued, input_path="", options=options)
        )
    mark_sent(r, "train-1", settings)
    tasks.train_model.run("train-1")
    assert seen["lease_pid"] == os.getpid() and not seen["marked"]
    assert not r.exists(lease_key("train-1"))  # released at the end
    job = job_row(settings, "train-1")
    assert job.status == JobStatus.succeeded and job.model_version == "v-trained"
    assert job.options["outcome"] == {"version": "v-trained", "promoted": True, "reason": "better"}
    assert seen["use_default_corpus"] is False and str(seen["data_csv"]) == "/data/coded.csv"
    # redelivered after its worker died mid-run: failed, not run again
    with session_scope(settings.db_url) as session:
        session.add(Job(id="train-2", kind="training", status=JobStatus.running, input_path="", options={}))
    tasks.train_model.run("train-2")
    assert job_row(settings, "train-2").status == JobStatus.failed and not seen.get("again")
    # a duplicate task of a run a live worker holds ends without touching the job
    with session_scope(settings.db_url) as session:
        session.add(Job(id="train-3", kind="training", status=JobStatus.running, input_path="", options={}))
    r.set(lease_key("train-3"), "a-live-worker", px=30_000)
    tasks.train_model.run("train-3")
    assert job_row(settings, "train-3").status == JobStatus.running
    r.delete(lease_key("train-3"))


def test_result_rows_and_final_codes_for_the_review_page(settings: WorkerSettings) -> None:
    """What the review page builds on: a finished job's rows by number, and a reviewer's code per row
    (the current decision replaced, every change kept in the audit trail)."""
    from sqlalchemy import select

    from shared.db.tables import ReviewDecision, ReviewEvent
    from shared.review.decisions import record_final_code
    from shared.review.results import iter_result_rows, result_header

    make_csv_job(settings, "review", unique_lines(3))
    assert JobProcessor(settings).run("review").status == JobStatus.succeeded
    with session_scope(settings.db_url) as session:
        job = session.get(Job, "review")
        assert job is not None
        rows = list(iter_result_rows(job))
        assert [(row.number, dict(row.record)["ref"]) for row in rows] == [(1, "0"), (2, "1"), (3, "2")]
        assert set(result_header(job)) >= {"isco_code", "needs_review", "review_reasons", "row_error"}
        record_final_code(session, job, 2, "2221", action="search", reviewer_name="ann")
        record_final_code(session, job, 2, None, action="uncodable", reviewer_name="bob")
    with session_scope(settings.db_url) as session:
        decisions = session.scalars(select(ReviewDecision).where(ReviewDecision.job_id == "review")).all()
        assert [(d.row_number, d.final_code, d.reviewer_name) for d in decisions] == [(2, None, "bob")]
        events = session.scalars(
            select(ReviewEvent).where(ReviewEvent.job_id == "review").order_by(ReviewEvent.id)
        ).all()
        assert [(e.previous_code, e.final_code) for e in events] == [(None, "2221"), ("2221", None)]


def test_job_ids_never_look_like_a_command_line_option() -> None:
    """`isco jobs get ID` must not read an id as an option: about 1 in 64 URL-safe tokens starts with "-"."""
    ids = [new_job_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 for i in ids)
