"""`isco predict`: the predict CSV contract (columns, extra columns kept, error cells, order)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import build_app
from shared import registry
from shared.csvio.writing import RESULT_COLUMNS
from shared.db.session import session_scope
from tests.tiny_model import build_tiny_model_dir

CONTRACT = [
    "isco_code",
    "level",
    "title",
    "confidence",
    "is_fallback",
    "unit_code",
    "unit_confidence",
    "top_codes",
    "top_confidences",
    "needs_review",
    "review_reasons",
    "language",
    "language_detected",
]


@pytest.fixture
def env(tmp_path: Path, sqlite_url: str) -> dict[str, str]:
    data_dir = tmp_path / "var"
    model_dir = build_tiny_model_dir(data_dir / "models" / "tiny-1", version="tiny-1")
    (model_dir / "metrics.json").write_text("{}")
    with session_scope(sqlite_url) as s:
        registry.create_pending(s, version="tiny-1", path=model_dir, base_model="tiny")
        registry.mark_ready(s, "tiny-1", metrics={}, eval_score=0.1, eval_data_hash="h")
        registry.promote(s, "tiny-1")
    return {
        "ISCO_ENV": "test",
        "ISCO_DATA_DIR": str(data_dir),
        "ISCO_DATABASE_URL": sqlite_url,
        "ISCO_QUANTIZE": "none",
        "COLUMNS": "200",
    }


def _predict(env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(build_app(), ["predict", *args], env=env, catch_exceptions=False)


def _read(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_predict_csv_contract(env: dict[str, str], tmp_path: Path) -> None:
    assert RESULT_COLUMNS == CONTRACT  # the contract outside checks rely on
    source = tmp_path / "in.csv"
    source.write_text(
        "id,Job Title,duties_description,isco_code\n"
        "1,nurse,cares for patients,2221\n"
        "2,,writes software,\n"
        "3,,,\n"
        "4,taxi driver,,8322\n"
        "5,too,many,cells,here\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.csv"
    result = _predict(env, "--input", str(source), "--output", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "3 rows coded, 2 rows with errors" in result.output
    rows = _read(out)
    # Input columns as written (a clash with an output column gets input_), then the contract, then row_error.
    assert rows[0] == ["id", "Job Title", "duties_description", "input_isco_code", *CONTRACT, "row_error"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]  # every row, in order
    col = {name: i for i, name in enumerate(rows[0])}
    for row in (rows[1], rows[2], rows[4]):
        assert row[col["row_error"]] == ""
        assert len(row[col["unit_code"]]) == 4
        assert row[col["level"]] in {"", "1", "2", "3", "4"}
        assert row[col["is_fallback"]] in {"true", "false"}
        top = row[col["top_codes"]].split("|")
        confidences = [float(x) for x in row[col["top_confidences"]].split("|")]
        assert len(top) == 5 and top[0] == row[col["unit_code"]]
        assert confidences == sorted(confidences, reverse=True)
        assert float(row[col["unit_confidence"]]) == pytest.approx(confidences[0], abs=1e-4)
    assert rows[1][col["input_isco_code"]] == "2221"  # extra input columns are kept
    empty = rows[3]
    assert "job_title and duties_description are both empty" in empty[col["row_error"]]
    assert all(empty[col[c]] == "" for c in CONTRACT)
    assert "row has 5 fields" in rows[5][col["row_error"]]


def test_predict_with_named_model_and_bad_input(env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("job_title\nwelder\n")
    out = tmp_path / "out.csv"
    ok = _predict(env, "--input", str(source), "--output", str(out), "--model", "tiny-1", "--no-progress")
    assert ok.exit_code == 0, ok.output
    assert len(_read(out)) == 2

    unknown = _predict(env, "--input", str(source), "--output", str(out), "--model", "v-nope")
    assert unknown.exit_code == 2 and "no model version 'v-nope'" in unknown.output
    bad = tmp_path / "bad.csv"
    bad.write_text("name,code\nwelder,7212\n")
    result = _predict(env, "--input", str(bad), "--output", str(out))
    assert result.exit_code == 2 and "neither job_title nor duties_description" in result.output
    missing = _predict(env, "--input", str(tmp_path / "nope.csv"), "--output", str(out))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_predict_reads_the_industry_column(env: dict[str, str], tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("job_title,ref\ninspector,1\n", encoding="utf-8")
    with_industry = tmp_path / "industry.csv"
    with_industry.write_text("job_title,Industry,ref\ninspector,,1\ninspector,paper mfr,2\n,paper,3\n")
    outs = tmp_path / "plain-out.csv", tmp_path / "industry-out.csv"
    for source, out in zip((plain, with_industry), outs, strict=True):
        result = _predict(env, "--input", str(source), "--output", str(out), "--no-progress")
        assert result.exit_code == 0, result.output
    plain_rows, rows = _read(outs[0]), _read(outs[1])
    assert rows[0][:3] == ["job_title", "Industry", "ref"]  # the column is kept
    assert rows[1][:1] + rows[1][2:] == plain_rows[1]  # a blank industry: coded as without the column
    assert rows[3][-1] == "job_title and duties_description are both empty"  # an industry alone is no record


def test_predict_one_record_with_industry(env: dict[str, str], tmp_path: Path) -> None:
    from shared.schemas import Prediction

    one = _predict(env, "--job-title", "Inspector", "--industry", "paper mfr", "--unit-threshold", "0")
    assert one.exit_code == 0, one.output
    prediction = Prediction.model_validate_json(one.stdout)
    assert prediction.model_version == "tiny-1" and prediction.level == 4 and prediction.truncated is False
    long = _predict(env, "--job-title", "Inspector", "--industry", "p" * 200)
    assert long.exit_code == 0 and Prediction.model_validate_json(long.stdout).truncated is True
    alone = _predict(env, "--industry", "paper mfr")
    assert alone.exit_code == 2 and "--job-title and --duties are both empty" in alone.output
    source = tmp_path / "in.csv"
    source.write_text("job_title\nwelder\n")
    both = _predict(env, "--input", str(source), "--output", str(tmp_path / "o.csv"), "--industry", "x")
    assert both.exit_code == 2 and "not both" in both.output
    assert _predict(env, "--input", str(source)).exit_code == 2  # a file needs --output


def test_predict_one_record_with_a_language_hint(env: dict[str, str]) -> None:
    """--language is the record's hint: the result is coded as it says, a language the (English-only) model
    lacks goes to a coder, a hint the text contradicts is reported, an unknown code is refused by name."""
    from shared.schemas import Prediction

    english = _predict(env, "--job-title", "bus driver", "--language", "EN")
    assert english.exit_code == 0, english.output
    assert Prediction.model_validate_json(english.stdout).language == "en"
    german = Prediction.model_validate_json(_predict(env, "--job-title", "Busfahrer", "-l", "de").stdout)
    assert german.language == "de" and german.needs_review and "unsupported_language" in german.review_reasons
    contradicted = _predict(env, "--job-title", "Lehrer an einer Grundschule", "--language", "fr")
    assert "language_mismatch" in Prediction.model_validate_json(contradicted.stdout).review_reasons
    unknown = _predict(env, "--job-title", "bus driver", "--language", "xx")
    assert unknown.exit_code == 2
    assert "--language: unknown language 'xx'" in unknown.output and "accepted codes" in unknown.output


def test_predict_without_a_model(tmp_path: Path, sqlite_url: str) -> None:
    source = tmp_path / "in.csv"
    source.write_text("job_title\nwelder\n")
    env = {"ISCO_ENV": "test", "ISCO_DATA_DIR": str(tmp_path / "var"), "ISCO_DATABASE_URL": sqlite_url}
    result = _predict(env, "--input", str(source), "--output", str(tmp_path / "out.csv"))
    assert result.exit_code == 2 and "isco train" in result.output


def test_predict_gives_the_job_workers_row_errors(env: dict[str, str], tmp_path: Path) -> None:
    """One coding engine (shared/coding.py): `isco predict` and a CSV job give the same row_error texts."""
    from shared.coding import EMPTY_RECORD

    source = tmp_path / "in.csv"
    source.write_text("job_title,duties_description,ref\n,,1\nwelder,welds,2,extra\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    result = _predict(env, "--input", str(source), "--output", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    rows = _read(out)
    errors = [row[-1] for row in rows[1:]]
    assert errors == [EMPTY_RECORD, "line 3: row has 4 fields, the header has 3"]


def test_predict_killed_by_sigterm_leaves_no_output(env: dict[str, str], tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    source = tmp_path / "big.csv"
    source.write_text(
        "job_title,duties_description\n" + "".join(f"role {i},task {i}\n" for i in range(200_000)),
        encoding="utf-8",
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "result.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "predict", "-i", str(source), "-o", str(out), "--no-progress"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".result.csv.") for p in out_dir.iterdir()):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "no partial output appeared"
            time.sleep(0.02)
        time.sleep(0.5)  # some chunks written
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert code == 128 + signal.SIGTERM, output
    assert "terminated" in output
    assert list(out_dir.iterdir()) == [], "a partial (hidden) output file was left behind"
