"""Excel workbooks and columns chosen by hand, through the real gateway app, a real Redis and a real Celery
worker (tiny model, SQLite); the result's stable columns and its .xlsx form; `isco predict` with a workbook.

Workbooks are built here with openpyxl. A formula cell gets a saved value by editing the sheet's XML (openpyxl
writes formulas without one), as a spreadsheet would have saved it: the job must read that value and never the
formula.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from services.gateway.app import create_app
from services.gateway.auth import create_api_key
from services.gateway.settings import GatewaySettings
from shared.db.migrate import upgrade
from shared.db.session import session_scope
from shared.jobs.settings import JobSettings
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

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
REVIEW_COLUMNS = ["final_code", "coded_by", "final_status"]


def workbook(sheets: dict[str, list[list[Any]]], cached: dict[str, str] | None = None) -> bytes:
    """An .xlsx with the given sheets (rows of values; "=..." is a formula). `cached` gives formula cells of
    the first sheet ("B3") the value a spreadsheet would have saved with them."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        ws = book.create_sheet(title)
        for row in rows:
            ws.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    if not cached:
        return buffer.getvalue()
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                for ref, value in cached.items():
                    data, n = re.subn(
                        rf'<c r="{ref}"><f>(.*?)</f><v ?/>'.encode(),
                        lambda m, r=ref, v=value: b'<c r="' + r.encode() + b'" t="str"><f>' + m.group(1)
                        + b"</f><v>" + v.encode() + b"</v>",
                        data,
                    )  # fmt: skip
                    assert n == 1, ref
            target.writestr(item, data)
    return out.getvalue()


@dataclass
class Stack:
    client: TestClient
    settings: GatewaySettings
    key: str
    worker: CeleryWorker

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def upload(self, data: bytes, name: str, ctype: str = XLSX, **params: Any) -> Any:
        return self.client.post(
            "/predict/csv", params=params, files={"file": (name, data, ctype)}, headers=self.headers()
        )

    def finished(self, job_id: str) -> dict[str, Any]:
        def done() -> Any:
            job = self.client.get(f"/jobs/{job_id}", headers=self.headers()).json()
            return job["status"] in ("succeeded", "failed") and job

        job = wait_for(done, 90, 0.1, "job finished")
        assert job["status"] == "succeeded", (job, self.worker.tail())
        return job


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    test_redis_url: str,  # noqa: F811
    tiny_model_dir: Path,  # noqa: F811
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("xlsx")
    db_url = f"sqlite:///{tmp / 'isco.db'}"
    upgrade(db_url)
    settings = GatewaySettings(
        env="test", data_dir=tmp / "data", database_url=db_url, redis_url=test_redis_url
    )
    settings.ensure_dirs()
    register_best(db_url, tiny_model_dir, "tiny-xlsx-1")
    queue = f"test-xlsx-{SESSION_TAG}"
    job_settings = JobSettings(
        **{k: getattr(settings, k) for k in ("env", "data_dir", "database_url", "redis_url")},
        job_queue=queue,
        job_max_upload_bytes=200_000,
        job_max_rows=50,
    )
    with session_scope(db_url) as session:
        key, _ = create_api_key(session, "alice", settings.secret_key)
    worker = CeleryWorker(
        worker_env(settings, queue, job_chunk_rows=4), queue, tmp / "worker.log"
    ).wait_ready()
    app = create_app(settings)
    app.state.job_settings = job_settings
    try:
        with TestClient(app) as client:
            yield Stack(client, settings, key, worker)
    finally:
        worker.stop()
        purge_queue(test_redis_url, queue)


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_xlsx_job_reads_the_first_sheet_and_formula_values(stack: Stack) -> None:
    data = workbook(
        {
            "Staff": [
                ["Ref", "Job Title", "Duties Description", "Started"],
                [1, "staff nurse", "cares for ward patients", 2019.0],
                [2, '=CONCAT("wel","der")', "welds steel frames", None],
                [],  # a blank row is skipped, as in a CSV
                [3, "@cmd", "", True],
            ],
            "Notes": [["anything"]],
        },
        cached={"B3": "welder"},
    )
    response = stack.upload(data, "staff.xlsx")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (
        accepted["rows_total"] == 3
        and accepted["sheet"] == "Staff"
        and accepted["sheets"] == ["Staff", "Notes"]
    )
    assert len(accepted["notes"]) == 1 and "1 cell(s) hold a formula (B3)" in accepted["notes"][0]
    stack.finished(accepted["job_id"])

    result = stack.client.get(f"/jobs/{accepted['job_id']}/result", headers=stack.headers())
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/csv")
    rows = rows_of(result.text)
    assert list(rows[0])[:4] == ["Ref", "Job Title", "Duties Description", "Started"]
    assert list(rows[0])[-4:] == ["row_error", *REVIEW_COLUMNS]
    assert [r["Ref"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["Started"] == "2019" and rows[2]["Started"] == "TRUE"
    assert rows[1]["Job Title"] == "welder"  # the saved value, not the formula
    assert rows[2]["Job Title"] == "'@cmd"  # text that a spreadsheet would run: neutralised
    assert all(r["final_status"] in ("pending", "auto_coded") for r in rows)

    as_xlsx = stack.client.get(
        f"/jobs/{accepted['job_id']}/result", params={"format": "xlsx"}, headers=stack.headers()
    )
    assert as_xlsx.status_code == 200 and as_xlsx.headers["content-type"] == XLSX
    assert as_xlsx.headers["content-disposition"].endswith('.xlsx"')
    sheet = openpyxl.load_workbook(io.BytesIO(as_xlsx.content)).active
    cells = [[c.value if c.value is not None else "" for c in row] for row in sheet.iter_rows()]
    assert cells[0] == list(rows[0])
    assert cells[1:] == [list(r.values()) for r in rows]  # the same cells as the CSV, all text
    assert all(c.data_type == "s" for row in sheet.iter_rows() for c in row if c.value is not None)


def test_a_workbook_of_several_sheets_and_a_sheet_by_name(stack: Stack) -> None:
    data = workbook({"Read me": [["This file lists our staff"]], "Staff": [["job_title"], ["welder"]]})
    refused = stack.upload(data, "two.xlsx")
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert detail["error"] == "missing_columns" and detail["sheets"] == ["Read me", "Staff"]
    assert "the first sheet, 'Read me', of a workbook with 2 sheets (Read me, Staff)" in detail["message"]
    accepted = stack.upload(data, "two.xlsx", sheet="staff")  # names match ignoring case
    assert accepted.status_code == 202 and accepted.json()["sheet"] == "Staff"
    missing = stack.upload(data, "two.xlsx", sheet="Payroll")
    assert missing.status_code == 422 and missing.json()["detail"]["error"] == "no_sheet"
    assert "its sheets are: Read me, Staff" in missing.json()["detail"]["message"]


def test_columns_chosen_by_hand(stack: Stack) -> None:
    data = b"Person ID,Occupation,What they do\r\np1,staff nurse,cares for patients\r\np2,welder,welds\r\n"
    refused = stack.upload(data, "survey.csv", "text/csv")
    assert refused.status_code == 422 and refused.json()["detail"]["found"] == [
        "Person ID",
        "Occupation",
        "What they do",
    ]
    unknown = stack.upload(data, "survey.csv", "text/csv", title_column="Job")
    assert unknown.status_code == 422 and unknown.json()["detail"]["error"] == "unknown_column"
    accepted = stack.upload(
        data, "survey.csv", "text/csv", title_column="occupation", duties_column="What they do"
    )
    assert accepted.status_code == 202, accepted.text
    stack.finished(accepted.json()["job_id"])
    result = stack.client.get(f"/jobs/{accepted.json()['job_id']}/result", headers=stack.headers())
    rows = rows_of(result.text)
    assert list(rows[0])[:3] == ["Person ID", "job_title", "duties_description"]
    assert [r["job_title"] for r in rows] == ["staff nurse", "welder"] and all(r["unit_code"] for r in rows)
    # the same choice works for a workbook
    book = workbook({"S": [["Occupation"], ["welder"]]})
    assert stack.upload(book, "s.xlsx", title_column="Occupation").status_code == 202


def test_bad_workbooks_are_refused_and_leave_nothing(stack: Stack) -> None:
    before = set(stack.settings.uploads_dir.iterdir())

    def refused(data: bytes, name: str, status: int, error: str, **params: Any) -> str:
        response = stack.upload(data, name, **params)
        assert response.status_code == status, response.text
        assert response.json()["detail"]["error"] == error
        return str(response.json()["detail"]["message"])

    assert ".xls" in refused(
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600, "old.xls", 422, "not_a_workbook"
    )
    assert "not one" in refused(b"job_title\nwelder\n", "fake.xlsx", 422, "not_a_workbook")
    assert "damaged" in refused(b"PK\x03\x04broken", "broken.xlsx", 422, "not_a_workbook")
    assert "is empty" in refused(workbook({"Empty": []}), "empty.xlsx", 422, "empty")
    refused(workbook({"S": [["job_title"]]}), "header.xlsx", 422, "no_rows")
    refused(workbook({"S": [["job_title"]] + [["welder"]] * 51}), "long.xlsx", 413, "too_many_rows")
    refused(workbook({"S": [["job_title"], ["welder", "", "stray"]]}), "wide.xlsx", 422, "ragged_rows")
    refused(workbook({"S": [["job_title"]] + [["x" * 5000]] * 45}), "big.xlsx", 413, "too_large")
    assert set(stack.settings.uploads_dir.iterdir()) == before


def test_result_columns_do_not_depend_on_the_review(stack: Stack) -> None:
    """The API's result has final_code, coded_by and final_status before any decision, and after one."""
    from shared.db.tables import ReviewAction
    from shared.jobs.state import owned_job
    from shared.review.decisions import record_decision
    from shared.review.results import iter_result_rows
    from tests.review_support import finished_batch_job, finished_csv_job

    job_settings = stack.client.app.state.job_settings  # type: ignore[attr-defined]
    with session_scope(stack.settings.db_url) as session:
        key_id = session.execute(text("SELECT id FROM api_keys")).scalar_one()
    job_id = finished_csv_job(stack.settings.db_url, job_settings, key_id)
    before = stack.client.get(f"/jobs/{job_id}/result", headers=stack.headers())
    rows = rows_of(before.text)
    assert list(rows[0])[-3:] == REVIEW_COLUMNS
    assert [r["final_status"] for r in rows] == [
        "pending",
        "auto_coded",
        "pending",
        "pending",
        "auto_coded",
        "pending",
    ]
    assert rows[1]["final_code"] == "7212" and rows[1]["coded_by"] == "model" and rows[0]["final_code"] == ""
    with session_scope(stack.settings.db_url) as session:
        job = owned_job(session, job_id, key_id)
        assert job is not None
        row = next(r for r in iter_result_rows(job) if r.number == 1)
        record_decision(
            session, job, row, ReviewAction.alternative, "3221", reviewer_key_id=key_id, reviewer_name="a"
        )
    after = rows_of(stack.client.get(f"/jobs/{job_id}/result", headers=stack.headers()).text)
    assert list(after[0]) == list(rows[0])
    assert (after[0]["final_code"], after[0]["coded_by"], after[0]["final_status"]) == (
        "3221",
        "reviewer",
        "changed",
    )

    batch_id = finished_batch_job(stack.settings.db_url, job_settings, key_id)
    results = stack.client.get(f"/jobs/{batch_id}/result", headers=stack.headers()).json()["results"]
    assert all({"final_code", "coded_by", "final_status"} <= set(r) for r in results)
    assert results[0]["final_status"] == "pending" and results[1]["coded_by"] == "model"


def test_isco_predict_reads_and_writes_workbooks(stack: Stack, tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from services.cli import build_app

    source = tmp_path / "in.xlsx"
    source.write_bytes(
        workbook(
            {"Cover": [["notes"]], "Staff": [["job_title", "Ref"], ["staff nurse", 1], ['="chef"', 2]]},
        )
    )
    env = {
        "ISCO_ENV": "test",
        "ISCO_DATA_DIR": str(stack.settings.data_dir),
        "ISCO_DATABASE_URL": stack.settings.database_url,
        "ISCO_QUANTIZE": "none",
        "COLUMNS": "300",  # rich wraps at the terminal's width
    }
    run = CliRunner().invoke(
        build_app(),
        ["predict", "--input", str(source), "--output", str(tmp_path / "out.xlsx"), "--sheet", "Staff",
         "--model", str(tiny_model_dir), "--no-progress"],
        env=env, catch_exceptions=False,
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "reading sheet 'Staff'" in run.output and "1 cell(s) hold a formula (A3)" in run.output
    sheet = openpyxl.load_workbook(tmp_path / "out.xlsx").active
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    unit = values[0].index("unit_code")
    assert values[0][:3] == ["job_title", "Ref", "isco_code"] and values[1][1] == "1" and values[1][unit]
    assert values[2][0] is None and "row_error" in values[0]  # a formula never calculated reads as empty
    # a CSV out from a workbook in, and a clear error for a sheet that is not there
    run = CliRunner().invoke(
        build_app(),
        [
            "predict",
            "-i",
            str(source),
            "-o",
            str(tmp_path / "out.csv"),
            "--sheet",
            "Payroll",
            "--no-progress",
        ],
        env=env,
    )
    assert run.exit_code != 0 and "no sheet named 'Payroll'" in run.output
