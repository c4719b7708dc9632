"""The review page's upload and downloads in a real headless Chromium against a real gateway (the fixtures of
tests/test_review_browser.py: uvicorn, a migrated PostgreSQL, a tiny-model inference service).

A coder uploads a CSV whose title column has a header the page does not know and maps it by hand; uploads a
workbook of two sheets (the first without a usable column) and chooses the sheet, told about its formula cell;
watches a queued job's progress change without a reload; gets a clear message for an empty file, a file that
is not UTF-8, one over the row limit and one over the size limit, with nothing submitted; and downloads a
result as CSV and as .xlsx from the job list and the job page, both parsed and compared. Screenshots of the
upload card go to docs/ with ISCO_UPDATE_SCREENSHOTS=1.
"""

# ruff: noqa: F811  (the fixtures `browser` and `stack` are imported from tests/test_review_browser.py)
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from sqlalchemy import func, select

from shared.db.session import session_scope
from shared.db.tables import Job
from shared.jobs.settings import JobSettings
from shared.jobs.state import advance, start
from tests.review_support import finished_csv_job
from tests.test_review_browser import Stack, _screenshot, _sign_in, _wait, browser, stack  # noqa: F401
from tests.test_uploads_xlsx import XLSX, workbook

pytestmark = pytest.mark.slow

MAX_ROWS = 40
MAX_BYTES = 20_000


@pytest.fixture(scope="module", autouse=True)
def upload_limits() -> Iterator[None]:
    """Small job limits for this module's gateway (read from ISCO_JOB_* when the app first needs them)."""
    saved = {k: os.environ.get(k) for k in ("ISCO_JOB_MAX_ROWS", "ISCO_JOB_MAX_UPLOAD_BYTES")}
    os.environ["ISCO_JOB_MAX_ROWS"] = str(MAX_ROWS)
    os.environ["ISCO_JOB_MAX_UPLOAD_BYTES"] = str(MAX_BYTES)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _jobs(stack: Stack) -> int:
    with session_scope(stack.db_url) as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _choose_file(driver: Any, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "upload-file").send_keys(str(path))


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return str(found[0].text) if found and found[0].is_displayed() else ""


def _select(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def test_upload_a_csv_with_a_header_mapped_by_hand(browser: Any, stack: Stack, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    _sign_in(browser, stack, "coder-a")
    source = tmp_path / "survey.csv"
    source.write_text("Occupation,Tasks,Ref\nstaff nurse,cares for patients,1\nwelder,welds,2\ncook,,3\n")
    _choose_file(browser, source)
    _wait(
        browser, lambda d: "neither job_title nor duties_description" in _text(d, "upload-error"), "the error"
    )
    assert "Occupation, Tasks, Ref" in _text(browser, "upload-error")
    assert browser.find_element(By.ID, "upload-submit").get_attribute("disabled") is not None
    missing = browser.find_element(By.CSS_SELECTOR, "tr.missing select")
    assert missing.get_attribute("id") == "map-job_title"
    _select(browser, "map-job_title", "Occupation")
    _wait(browser, lambda d: "3 rows in survey.csv" in _text(d, "upload-summary"), "the preview")
    assert not _text(browser, "upload-error")
    _screenshot(browser, "review-upload-mapping.png")
    jobs_before = _jobs(stack)
    browser.find_element(By.ID, "upload-submit").click()
    _wait(browser, lambda d: "Job survey.csv queued: 3 rows." in _text(d, "message"), "the queued message")
    assert _jobs(stack) == jobs_before + 1
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-job]")  # newest first
    job_id = row.get_attribute("data-job")
    assert "survey.csv" in row.text and row.find_element(By.CSS_SELECTOR, ".status").text == "queued"
    stored = (stack.settings.uploads_dir / f"{job_id}.csv").read_text()
    assert stored.splitlines()[0] == "job_title,Tasks,Ref"  # the chosen column renamed for the worker

    # live progress: a worker's progress shows in the list without a reload
    browser.execute_script("window.__same_page = true;")
    with session_scope(stack.db_url) as session:
        assert start(session, job_id) and advance(session, job_id, 0, 2, 0)
    _wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"] .rows-done').text == "2 / 3",
        "the progress polled",
    )
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    assert row.find_element(By.CSS_SELECTOR, ".status").text == "running"
    assert browser.execute_script("return window.__same_page === true;")


def test_upload_a_workbook_choosing_its_sheet(browser: Any, stack: Stack, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    _sign_in(browser, stack, "coder-a")
    source = tmp_path / "staff.xlsx"
    source.write_bytes(
        workbook(
            {
                "Read me": [["Staff list, exported 2026-11-30"]],
                "Staff": [
                    ["id", "Job Title", "Industry"],
                    [1, '=CONCAT("wel","der")', "shipbuilding"],
                    [2, "staff nurse", "hospital"],
                ],
            }
        )  # fmt: skip
    )
    _choose_file(browser, source)
    _wait(
        browser, lambda d: "2 sheets (Read me, Staff): choose the sheet" in _text(d, "upload-error"), "error"
    )
    assert browser.find_element(By.ID, "upload-sheet-choice").is_displayed()
    _select(browser, "upload-sheet", "Staff")
    _wait(browser, lambda d: "2 rows in sheet “Staff” of staff.xlsx" in _text(d, "upload-summary"), "preview")
    assert "1 cell(s) hold a formula (B2)" in _text(browser, "upload-notes")
    assert "formulas are never run" in _text(browser, "upload-notes")
    selected = {
        role: browser.find_element(By.CSS_SELECTOR, f"#map-{role} option:checked").get_attribute("value")
        for role in ("job_title", "duties_description", "industry", "id")
    }
    assert selected == {
        "job_title": "Job Title",
        "duties_description": "",
        "industry": "Industry",
        "id": "id",
    }
    _screenshot(browser, "review-upload.png")
    browser.find_element(By.ID, "upload-submit").click()
    _wait(browser, lambda d: "Job staff.xlsx queued: 2 rows." in _text(d, "message"), "the queued message")
    job_id = browser.find_element(By.CSS_SELECTOR, "tr[data-job]").get_attribute("data-job")
    stored = (stack.settings.uploads_dir / f"{job_id}.csv").read_text().splitlines()
    assert stored == ["id,Job Title,Industry", "1,,shipbuilding", "2,staff nurse,hospital"]


def test_bad_files_get_a_clear_message_and_nothing_is_submitted(
    browser: Any,
    stack: Stack,  # noqa: F811
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, stack, "coder-a")
    jobs_before = _jobs(stack)
    uploads_before = set(stack.settings.uploads_dir.iterdir())
    cases = {
        "empty.csv": (b"", "The file empty.csv is empty."),
        "latin1.csv": ("job_title\nCafé owner\n".encode("cp1252"), "not valid UTF-8"),
        "long.csv": (b"job_title\n" + b"welder\n" * (MAX_ROWS + 1), f"more than {MAX_ROWS} rows"),
        "big.csv": (b"job_title\n" + b"w" * MAX_BYTES + b"\n", "more than the limit of 20,000 bytes"),
        "blank.xlsx": (workbook({"Sheet": []}), "The sheet 'Sheet' is empty"),
        "old.xls": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512, "Excel 97-2003 workbook (.xls)"),
        "notes.csv": (b"name,age\nann,3\n", "neither job_title nor duties_description"),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _choose_file(browser, path)
        _wait(browser, lambda d, e=expected: e in _text(d, "upload-error"), f"the message for {name}")
        assert browser.find_element(By.ID, "upload-submit").get_attribute("disabled") is not None, name
        browser.find_element(By.ID, "upload-file").clear()
    _screenshot(browser, "review-upload-error.png")
    assert _jobs(stack) == jobs_before
    assert set(stack.settings.uploads_dir.iterdir()) == uploads_before


def _fetch(driver: Any, selector: str, suffix: str) -> Path:
    from selenium.webdriver.common.by import By

    folder: Path = driver.download_dir
    before = set(folder.iterdir())
    link = driver.find_element(By.CSS_SELECTOR, selector)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
    link.click()

    def done(_: Any) -> Path | None:
        new = [p for p in set(folder.iterdir()) - before if p.name.endswith(suffix)]
        return new[0] if new else None

    path: Path = _wait(driver, done, f"the download of {selector}")
    return path


def test_downloads_as_csv_and_xlsx_from_the_list_and_the_job_page(
    browser: Any,
    stack: Stack,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By

    job_settings = JobSettings(
        **{k: getattr(stack.settings, k) for k in ("env", "data_dir", "database_url", "redis_url")}
    )
    job_id = finished_csv_job(stack.db_url, job_settings, stack.keys["coder-a"][1], filename="download.csv")
    _sign_in(browser, stack, "coder-a")
    row = f'tr[data-job="{job_id}"]'
    as_csv = list(csv.reader(io.StringIO(_fetch(browser, f"{row} .download-csv", ".csv").read_text("utf-8"))))
    book = openpyxl.load_workbook(_fetch(browser, f"{row} .download-xlsx", ".xlsx")).active
    as_xlsx = [[c.value if c.value is not None else "" for c in r] for r in book.iter_rows()]
    assert as_csv[0][-3:] == ["final_code", "coded_by", "final_status"] and len(as_csv) == 7
    assert as_xlsx == as_csv  # the same columns and cells
    by_title = {r[1]: r for r in as_csv[1:]}
    assert by_title["welder"][-3:] == ["7212", "model", "auto_coded"]
    assert by_title["staff nurse"][-3:] == ["", "", "pending"]
    assert "'=cmd" in by_title  # a formula-like text stays text in both files
    assert all(c.data_type == "s" for r in book.iter_rows() for c in r if c.value is not None)

    browser.find_element(By.CSS_SELECTOR, f"{row} a.button").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "download-xlsx"), "the job page")
    # the job page offers the same file (fetched with the page's session: Chromium does not save a second
    # download of the same file name from the same site without asking)
    href = browser.find_element(By.ID, "download-xlsx").get_attribute("href")
    assert href.endswith(f"/review/jobs/{job_id}/result.xlsx")
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    fetched = httpx.get(href, cookies=cookies, timeout=30)
    assert fetched.status_code == 200 and fetched.headers["content-type"].startswith(XLSX)
    page_book = openpyxl.load_workbook(io.BytesIO(fetched.content)).active
    assert [[c.value if c.value is not None else "" for c in r] for r in page_book.iter_rows()] == as_csv
