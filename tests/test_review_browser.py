"""The review page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)
against a real gateway (uvicorn) on a migrated PostgreSQL, with finished jobs whose results need review.

A coder signs in, settles three rows with the keyboard (a digit where Enter has no default, a digit, and a
search), exports the corrections and downloads the reviewed result; the DB and the files are checked. Another
key sees nothing of it. A coder audits a sample of auto-coded rows (Enter confirms the model's code there) and
finds codes by the titles the model knows; the pages fit a 420 px phone screen. The time for 20 rows settled
with the keyboard is measured (page actions: key press -> decision stored -> next row shown) and printed.
Screenshots of the page at 1280x800 go to docs/ with ISCO_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from services.gateway.app import create_app
from services.gateway.auth import create_api_key
from services.gateway.settings import GatewaySettings
from services.inference.app import create_app as create_inference_app
from services.inference.settings import InferenceSettings
from services.trainer.records import read_corrections
from shared.db.session import session_scope
from shared.db.tables import ReviewDecision, ReviewEvent
from shared.jobs.settings import JobSettings
from shared.settings import REPO_ROOT
from tests.conftest import IN_CI, REDIS_URL
from tests.jobs_support import register_best
from tests.review_support import Case, audit_cases, finished_csv_job, many_cases, read_csv
from tests.serving_helpers import ServerThread
from tests.tiny_model import build_tiny_model_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS = REPO_ROOT / "docs"
WAIT_S = 20

pytestmark = pytest.mark.slow


def _png(path: Path, width: int = 320, height: int = 200) -> None:
    """A small coverage-precision curve as a PNG, written without an imaging library."""
    white, axis, line = (255, 255, 255), (120, 120, 120), (31, 111, 235)
    pixels = [[white] * width for _ in range(height)]
    for x in range(20, width - 10):
        pixels[height - 20][x] = axis
    for y in range(10, height - 20):
        pixels[y][20] = axis
    for x in range(21, width - 10):
        coverage = (x - 21) / (width - 31)
        precision = 0.98 - 0.35 * coverage**2  # precision falls as coverage rises
        y = int(height - 20 - precision * (height - 40))
        for dy in (0, 1):
            pixels[y + dy][x] = line
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class Stack:
    def __init__(self, url: str, db_url: str, settings: GatewaySettings, keys: dict[str, tuple[str, int]]):
        self.url, self.db_url, self.settings, self.keys = url, db_url, settings, keys


@pytest.fixture(scope="module")
def stack(postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("review-browser")
    with create_engine(postgres_server_url).begin() as conn:
        conn.execute(text("TRUNCATE jobs, model_versions, api_keys RESTART IDENTITY CASCADE"))
    settings = GatewaySettings(
        env="test", data_dir=root / "data", database_url=postgres_server_url, redis_url=REDIS_URL
    )
    settings.ensure_dirs()
    keys = {}
    with session_scope(postgres_server_url) as session:
        for name in ("coder-a", "coder-b"):
            key, row = create_api_key(session, name, settings.secret_key)
            keys[name] = (key, row.id)
    for version in ("20261130-0901-quick", "20261201-0412-full"):
        model_dir = settings.model_store / version
        model_dir.mkdir(parents=True)
        _png(model_dir / "coverage_precision.png")
        register_best(postgres_server_url, model_dir, version)
    with session_scope(postgres_server_url) as session:
        from shared.db.tables import ModelVersion

        for mv in session.scalars(select(ModelVersion)):
            mv.eval_score = 0.62 if mv.is_best else 0.55
            dev = {
                "accuracy": mv.eval_score + 0.07,
                "routing": {"auto_coded": 0.336, "auto_coded_precision": 0.958},
            }
            mv.metrics = {
                "test": {"accuracy": mv.eval_score, "top5": 0.88, "macro_f1": 0.41},
                "devsets": {"ilo_titles_dev": dev, "onet_jobs_dev": {"accuracy": 0.507}},
            }
    # a real inference service (tiny model with stored training examples) gives the page its evidence
    model_dir = build_tiny_model_dir(root / "tiny-model", "tiny-review-1", signals=True)
    inference_settings = InferenceSettings(
        env="test", data_dir=root / "inference", model_dir=model_dir, quantize="none", reload_interval_s=0
    )
    with ServerThread(create_inference_app(inference_settings)) as inference_url:
        # warm up (model load, first encoder pass), so the page's first evidence call is not the slow one
        warm = {"records": [{"job_title": "nurse"}], "explain": True}
        assert httpx.post(f"{inference_url}/v1/predict", json=warm, timeout=120).status_code == 200
        settings.inference_url = inference_url
        with ServerThread(create_app(settings)) as url:
            yield Stack(url, postgres_server_url, settings, keys)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module (Debian's binaries, passed explicitly: no Selenium Manager)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if IN_CI:
            pytest.fail(
                "chromium and chromium-driver are required (apt-get install chromium chromium-driver)"
            )
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,800", "--disable-extensions", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    # the page itself at 1280x800 (the window size alone would include the browser's own frame)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    driver.download_dir = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


# ----------------------------------------------------------------------------------------------------


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.02).until(condition, message=what)


def _row(driver: Any) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, "row")
    return found[0].get_attribute("data-row") if found else None


def _press(driver: Any, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def _gone(element: Any) -> Any:
    """Wait condition: `element` has left the document. Like selenium's `staleness_of`, but Chromium may
    report a node caught while it is being detached as an inspector error instead of a stale reference."""
    from selenium.common.exceptions import WebDriverException

    def check(_driver: Any) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:
            return True
        return False

    return check


def _decide_with(driver: Any, *keys: str) -> None:
    """Press keys on the row page and wait for the next row (or the end of the queue) to be shown."""
    from selenium.webdriver.common.by import By

    old = driver.find_element(By.ID, "row")
    _press(driver, *keys)
    _wait(driver, _gone(old), "the next row after a decision")
    _wait(driver, lambda d: d.find_elements(By.ID, "row") or d.find_elements(By.ID, "done"), "row page")


def _search_and_pick(driver: Any, query: str, code: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _press(driver, "/")
    _press(driver, query)
    _wait(
        driver,
        lambda d: [li for li in d.find_elements(By.CSS_SELECTOR, "#search-results li.selected")
                   if li.get_attribute("data-code") == code],
        f"search results with {code} selected",
    )  # fmt: skip
    _decide_with(driver, Keys.ENTER)


def _sign_in(driver: Any, stack: Stack, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{stack.url}/review")
    _wait(driver, lambda d: d.find_elements(By.ID, "api_key"), "the sign-in page")
    driver.find_element(By.ID, "api_key").send_keys(stack.keys[name][0])
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "jobs"), "the jobs page")


def _download(driver: Any, link_id: str, name_part: str) -> str:
    from selenium.webdriver.common.by import By

    folder: Path = driver.download_dir
    before = set(folder.iterdir())
    driver.find_element(By.ID, link_id).click()

    def done(_: Any) -> Path | None:
        new = [
            p
            for p in set(folder.iterdir()) - before
            if name_part in p.name and not p.name.endswith(".crdownload")
        ]
        return new[0] if new else None

    path: Path = _wait(driver, done, f"the download of {name_part}")
    return path.read_text(encoding="utf-8")


def _screenshot(driver: Any, name: str) -> None:
    """A screenshot of the page at 1280x800: into docs/ with ISCO_UPDATE_SCREENSHOTS=1 (they are committed),
    else into the browser's scratch folder, so that a test run leaves the working tree alone."""
    folder = DOCS if os.environ.get("ISCO_UPDATE_SCREENSHOTS") == "1" else Path(driver.download_dir) / "shots"
    folder.mkdir(exist_ok=True)
    path = folder / name
    driver.save_screenshot(str(path))
    assert struct.unpack(">II", path.read_bytes()[16:24]) == (1280, 800)


# ----------------------------------------------------------------------------------------------------


def test_coder_reviews_three_rows_with_the_keyboard_and_a_search_then_exports(
    stack: Stack, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    key_id = stack.keys["coder-a"][1]
    job_settings = JobSettings(**{k: getattr(stack.settings, k) for k in ("env", "data_dir", "database_url")})
    job_id = finished_csv_job(stack.db_url, job_settings, key_id)

    _sign_in(browser, stack, "coder-a")
    cookie = browser.get_cookie("isco_review")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["path"] == "/review"
    assert browser.execute_script("return document.cookie") == ""  # httpOnly: invisible to scripts
    jobs_row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    assert "succeeded" in jobs_row.text and "6 / 6" in jobs_row.text and "survey.csv" in jobs_row.text
    assert browser.find_element(By.ID, "key-label").text == "coder-a"
    registry = browser.find_element(By.ID, "registry").text
    assert "69.0% on ILO titles" in registry and "33.6% of ILO titles, 95.8% right" in registry
    assert "macro_f1" not in registry and "top5" not in registry
    assert browser.find_elements(By.CSS_SELECTOR, "#registry .badge")  # the model in use is marked
    curves = browser.find_elements(By.CSS_SELECTOR, "#registry img.curve")
    assert len(curves) == 2 and all(
        browser.execute_script("return arguments[0].naturalWidth", c) for c in curves
    )
    _screenshot(browser, "review-jobs.png")

    jobs_row.find_element(By.LINK_TEXT, "Review").click()
    _wait(browser, lambda d: _row(d) == "1", "row 1")
    alternatives = browser.find_elements(By.CSS_SELECTOR, "#alternatives button.alt")
    assert [a.get_attribute("data-code") for a in alternatives] == ["2221", "3221", "5321"]
    assert "Nursing Professionals" in alternatives[0].text and "41%" in alternatives[0].text
    assert "0 of 4 reviewed" in browser.find_element(By.ID, "counts").text
    # evidence: the nearest training examples behind the alternative they support
    evidence = browser.find_element(By.CSS_SELECTOR, '.evidence[data-code="2221"]').text
    assert "staff nurse" in evidence and "similarity" in evidence
    assert not browser.find_elements(By.CSS_SELECTOR, '.evidence[data-code="5321"]')  # none stored for it
    _screenshot(browser, "review-row.png")

    # the model did not code this row at four digits: no default, Enter opens the search instead
    assert not browser.find_elements(By.ID, "accept") and browser.find_element(By.ID, "no-default")
    _press(browser, Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "search" and _row(browser) == "1"
    _press(browser, Keys.ESCAPE)
    _decide_with(browser, "1")  # the coder chooses the model's first answer
    assert _row(browser) == "3"
    _decide_with(browser, "2")  # the second alternative
    assert _row(browser) == "4"
    _press(browser, "/")
    _press(browser, "plumbers")
    _wait(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li.selected"), "search results"
    )
    _screenshot(browser, "review-search.png")
    _decide_with(browser, Keys.ENTER)
    assert _row(browser) == "6" and "3 of 4 reviewed" in browser.find_element(By.ID, "counts").text

    with session_scope(stack.db_url) as session:
        decisions = {
            d.row_number: (d.model_code, d.final_code, d.action, d.reviewer_key_id)
            for d in session.scalars(select(ReviewDecision).where(ReviewDecision.job_id == job_id))
        }
        trail = session.scalars(select(ReviewEvent).where(ReviewEvent.job_id == job_id)).all()
    assert decisions == {
        1: ("2221", "2221", "accept", key_id),
        3: ("4311", "3313", "alternative", key_id),
        4: ("7233", "7126", "search", key_id),
    }
    assert [(e.row_number, e.reviewer_name) for e in trail] == [
        (1, "coder-a"),
        (3, "coder-a"),
        (4, "coder-a"),
    ]

    corrections = _download(browser, "export-job", "corrections")
    exported = Path(browser.download_dir) / "check.csv"
    exported.write_text(corrections, encoding="utf-8")
    assert [(r.job_title, r.isco_code) for r in read_corrections(exported)] == [
        ("staff nurse", "2221"),
        ("bookkeeper", "3313"),
        ("pipe fitter", "7126"),
    ]
    result = read_csv(_download(browser, "download-result", "reviewed"))
    assert [(r["ref"], r["final_code"], r["coded_by"], r["final_status"]) for r in result] == [
        ("r1", "2221", "reviewer", "reviewed"),
        ("r2", "7212", "model", "auto_coded"),
        ("r3", "3313", "reviewer", "changed"),
        ("r4", "7126", "reviewer", "changed"),
        ("r5", "2341", "model", "auto_coded"),
        ("r6", "", "", "pending"),  # still in the queue
    ]

    # another key, signed in in the same browser, sees neither the job nor its review
    browser.find_element(By.CSS_SELECTOR, "header form button").click()
    _sign_in(browser, stack, "coder-b")
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    browser.get(f"{stack.url}/review/jobs/{job_id}")
    assert "no such job" in browser.page_source and not browser.find_elements(By.ID, "row")
    # a forged form post from B's session (with B's own token) changes nothing
    browser.get(f"{stack.url}/review")
    status = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const token = document.querySelector('input[name=csrf_token]').value;
        const body = new URLSearchParams({action: 'uncodable', csrf_token: token});
        fetch(arguments[0], {method: 'POST', body: body}).then(r => done(r.status));""",
        f"{stack.url}/review/jobs/{job_id}/rows/6",
    )
    assert status == 404
    with session_scope(stack.db_url) as session:
        assert (
            session.scalar(
                select(ReviewDecision).where(ReviewDecision.job_id == job_id, ReviewDecision.row_number == 6)
            )
            is None
        )


def test_twenty_rows_settled_with_the_keyboard(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    key_id = stack.keys["coder-a"][1]
    job_settings = JobSettings(**{k: getattr(stack.settings, k) for k in ("env", "data_dir", "database_url")})
    job_id = finished_csv_job(stack.db_url, job_settings, key_id, many_cases(20))
    _sign_in(browser, stack, "coder-a")
    browser.get(f"{stack.url}/review/jobs/{job_id}")
    _wait(browser, lambda d: _row(d) == "1", "row 1")

    plan: list[tuple[str, ...]] = []
    for i in range(20):
        plan.append([("1",), ("2",), ("3",), ("u",), ("/",)][i % 5])
    started = time.perf_counter()
    per_row = []
    for keys in plan:
        t0 = time.perf_counter()
        if keys == ("/",):
            _search_and_pick(browser, "2221", "2221")
        else:
            _decide_with(browser, *keys)
        per_row.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    assert browser.find_elements(By.ID, "done")
    per_row.sort()
    print(
        f"\nreview: 20 rows settled with the keyboard in {elapsed:.2f} s "
        f"({elapsed / 20 * 1000:.0f} ms per row; median {per_row[10] * 1000:.0f} ms, "
        f"max {per_row[-1] * 1000:.0f} ms)"
    )
    with session_scope(stack.db_url) as session:
        actions = [
            d.action
            for d in session.scalars(
                select(ReviewDecision)
                .where(ReviewDecision.job_id == job_id)
                .order_by(ReviewDecision.row_number)
            )
        ]
    assert actions == ["accept", "alternative", "alternative", "uncodable", "search"] * 4
    assert elapsed < 60  # a generous bound on a shared CI machine; the figure itself is printed


def test_the_row_shows_the_language_it_was_coded_as(stack: Stack, browser: Any) -> None:
    """A multilingual job: each row says the language it was coded as, and why a row in a language the model
    does not cover is in the queue."""
    from selenium.webdriver.common.by import By

    cases = (
        Case("Krankenpfleger", "", (("2221", 0.62), ("3221", 0.3)), True, language="de",
             reasons=("below_threshold",), coded=True),
        Case("медицинска сестра", "", (("2221", 0.4), ("3221", 0.3)), True, language="bg",
             reasons=("unsupported_language",), coded=True),
    )  # fmt: skip
    key_id = stack.keys["coder-a"][1]
    job_settings = JobSettings(**{k: getattr(stack.settings, k) for k in ("env", "data_dir", "database_url")})
    job_id = finished_csv_job(stack.db_url, job_settings, key_id, cases)
    _sign_in(browser, stack, "coder-a")
    browser.get(f"{stack.url}/review/jobs/{job_id}")
    _wait(browser, lambda d: _row(d) == "1", "row 1")
    assert browser.find_element(By.ID, "row-language").text == "de"
    assert browser.find_element(By.ID, "job-title").text == "Krankenpfleger"
    _decide_with(browser, "1")
    _wait(browser, lambda d: _row(d) == "2", "row 2")
    assert browser.find_element(By.ID, "row-language").text == "bg"
    reasons = browser.find_element(By.CSS_SELECTOR, "#row .reasons").text
    assert "unsupported language" in reasons


def test_the_api_returns_evidence_on_request(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.keys['coder-a'][0]}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
        plain = client.post("/predict/job", json={"job_title": "staff nurse"}).json()
        assert plain["evidence"] is None
        explained = client.post("/predict/job", json={"job_title": "staff nurse", "explain": True}).json()
        evidence = explained["evidence"]
        assert len(evidence) == 10 and {"text", "unit_code", "similarity"} == set(evidence[0])
        assert evidence[0]["text"] == "staff nurse" and evidence[0]["unit_code"] == "2221"
        assert [e["similarity"] for e in evidence] == sorted(
            (e["similarity"] for e in evidence), reverse=True
        )
        records = [{"job_title": "lorry driver"}, {"job_title": "web developer"}]
        batch = client.post("/predict/batch", json={"records": records, "explain": True}).json()
        assert [r["evidence"][0]["unit_code"] for r in batch["results"]] == ["8332", "2512"]
        assert all(
            r["evidence"] is None
            for r in client.post("/predict/batch", json={"records": records}).json()["results"]
        )


def _fits(driver: Any) -> bool:
    """Nothing on the page is wider than the screen (no sideways scrolling)."""
    width: int = driver.execute_script("return document.documentElement.scrollWidth")
    screen: int = driver.execute_script("return window.innerWidth")
    return width <= screen


def test_coder_audits_auto_coded_rows_searches_titles_and_the_page_fits_a_phone(
    stack: Stack, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    key_id = stack.keys["coder-a"][1]
    job_settings = JobSettings(**{k: getattr(stack.settings, k) for k in ("env", "data_dir", "database_url")})
    cases = audit_cases(auto=40, queued=8)
    job_id = finished_csv_job(
        stack.db_url, job_settings, key_id, cases, extra=("respondent_id", "region"), filename="wave 3.csv"
    )
    _sign_in(browser, stack, "coder-a")
    icon = browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => done(r.status));", icon
    )
    assert status == 200

    browser.get(f"{stack.url}/review/jobs/{job_id}")
    _wait(browser, lambda d: _row(d) == "5", "the queue's first row")
    record = browser.find_element(By.ID, "record").text
    assert "respondent_id" in record and "respondent_id-5" in record and "region-5" in record
    browser.find_element(By.ID, "audit-open").click()  # the default sample: 5% of 40, at least 20
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#row[data-mode="audit"]'), "the audit sample")
    assert "of 20 in the audit sample" in browser.find_element(By.ID, "row").text
    _screenshot(browser, "review-audit.png")

    first = int(_row(browser) or 0)
    _decide_with(browser, Keys.ENTER)  # Enter confirms the model's own code on an auto-coded row
    second = int(_row(browser) or 0)
    assert second != first and browser.find_elements(By.CSS_SELECTOR, '#row[data-mode="audit"]')
    _press(browser, "/")
    _press(browser, "nurse")
    _wait(
        browser,
        lambda d: [li for li in d.find_elements(By.CSS_SELECTOR, "#search-results li.selected")
                   if li.get_attribute("data-code") == "2221"],
        "2221 first for nurse",
    )  # fmt: skip
    hit = browser.find_element(By.CSS_SELECTOR, "#search-results li.selected").text
    assert "Nursing Professionals" in hit and "nurse" in hit.lower().split("professionals", 1)[1]
    _decide_with(browser, Keys.ENTER)
    assert browser.find_element(By.ID, "audit-checked").text == "2"
    with session_scope(stack.db_url) as session:
        decided = {
            d.row_number: (d.model_code, d.final_code, d.action)
            for d in session.scalars(select(ReviewDecision).where(ReviewDecision.job_id == job_id))
        }
    model_first = cases[first - 1].ranked[0][0]
    assert decided == {
        first: (model_first, model_first, "accept"),
        second: (cases[second - 1].ranked[0][0], "2221", "search"),
    }
    audit_url = browser.current_url

    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 420, "height": 860, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        for url in (f"{stack.url}/review", f"{stack.url}/review/jobs/{job_id}", audit_url):
            browser.get(url)
            _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "main .card"), url)
            assert browser.execute_script("return window.innerWidth") == 420
            assert _fits(browser), f"{url} scrolls sideways at 420 px"
        _press(browser, "/")
        _press(browser, "army")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li"), "search results")
        assert _fits(browser), "the search results scroll sideways at 420 px"
    finally:
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
