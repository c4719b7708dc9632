"""Issue 28: language identification (shared/language.py), how a record's language is read for a model
(shared/screening.py `read_language`), the `language` hint and result fields through the API, CSV results and
`isco predict`, and a model's `languages` (model.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from shared.csvio.writing import RESULT_COLUMNS
from shared.decision import Hierarchy, build_predictions
from shared.language import LANGUAGES, identify, scripts_of
from shared.model.directory import ModelDir, read_model_languages
from shared.schemas import JobRecord, Thresholds
from shared.screening import read_language
from tests.test_gateway import client, inference  # noqa: F401  (fixtures: the gateway over a tiny model)
from tests.test_predict_cli import _predict, _read, env  # noqa: F401  (fixture: a registered tiny model)

ENGLISH_ONLY = ("en",)


@pytest.mark.parametrize(
    ("text", "script"),
    [("bus driver", "latin"), ("οδηγός λεωφορείου", "greek"), ("шофьор на автобус", "cyrillic"),
     ("سائق حافلة", "arabic"), ("公共汽车司机", "cjk"), ("バス運転手", "cjk"), ("버스 기사", "hangul")],
)  # fmt: skip
def test_scripts(text: str, script: str) -> None:
    assert scripts_of(text) == {script}


@pytest.mark.parametrize(
    ("text", "language"),
    [("Busfahrer", "de"), ("Krankenschwester", "de"), ("infirmière", "fr"), ("sjuksköterska", "sv"),
     ("οδηγός λεωφορείου", "el"), ("λογιστής", "el"), ("учитель начальной школы", "ru"),
     ("バス運転手", "ja")],
)  # fmt: skip
def test_sure_identifications(text: str, language: str) -> None:
    assert identify(text).language == language


@pytest.mark.parametrize(
    "title", ["nurse", "Manager", "bus driver", "chef", "HGV driver", "GP", "Bassoonist"]
)
def test_short_english_titles_are_unsure_or_english_and_stay_with_an_english_model(title: str) -> None:
    found = identify(title)
    assert found.language in (None, "en")
    reading = read_language(title, "", "", None, ENGLISH_ONLY)
    assert reading.language == "en" and not reading.unsupported and not reading.mismatch


@pytest.mark.parametrize(
    "title",
    ["Busfahrer", "Krankenschwester", "οδηγός λεωφορείου", "шофьор на автобус", "водитель автобуса",
     "سائق حافلة", "公共汽车司机", "버스 기사", "bus driver οδηγός"],
)  # fmt: skip
def test_an_english_only_model_sends_other_languages_and_scripts_to_a_coder(title: str) -> None:
    assert read_language(title, "", "", None, ENGLISH_ONLY).unsupported


def test_a_model_of_all_26_languages_reads_them_but_not_other_cyrillic_or_scripts() -> None:
    for text, language in (("шофьор на автобус", "bg"), ("οδηγός λεωφορείου", "el"), ("Busfahrer", "de")):
        reading = read_language(text, "", "", None, LANGUAGES)
        assert reading.language == language and not reading.unsupported, text
    assert read_language("лікар", "", "", None, LANGUAGES).unsupported  # Ukrainian (sure)
    assert read_language("учитель начальной школы", "", "", None, LANGUAGES).unsupported  # Russian
    for text in ("سائق حافلة", "公共汽车司机", "バス運転手", "버스 기사"):
        assert read_language(text, "", "", None, LANGUAGES).unsupported, text
    # a Greek-only model cannot read Latin or Cyrillic text
    assert read_language("bus driver", "drives a city bus", "", None, ("el",)).unsupported


def test_duties_and_industry_decide_a_short_title() -> None:
    english = read_language(
        "Chef", "prepares and cooks meals in a hotel kitchen", "hotels", None, ENGLISH_ONLY
    )
    assert english.detected == "en" and not english.unsupported
    german = read_language("Chef", "leitet die Küche und plant die Speisekarte", "", None, ENGLISH_ONLY)
    assert german.detected == "de" and german.unsupported


def test_hints_and_mismatch() -> None:
    assert JobRecord(job_title="x", language="DE ").language == "de"
    assert JobRecord(job_title="x", language="").language is None
    with pytest.raises(ValidationError) as info:
        JobRecord(job_title="x", language="xx")
    error = info.value.errors()[0]
    assert error["loc"] == ("language",) and "accepted codes are en, bg" in error["msg"]
    contradicted = read_language("Busfahrer", "", "", "fr", LANGUAGES)
    assert (contradicted.language, contradicted.detected, contradicted.mismatch) == ("fr", "de", True)
    unsure = read_language("Manager", "", "", "de", LANGUAGES)  # the text cannot say: the hint stands
    assert unsure.language == "de" and unsure.detected is None and not unsure.mismatch
    assert read_language("Manager", "", "", "de", ENGLISH_ONLY).unsupported  # a hinted language not covered


def _predictions(records: list[JobRecord], languages: tuple[str, ...] = ENGLISH_ONLY):  # type: ignore[no-untyped-def]
    codes = ["2211", "2221", "8331"]
    probs = np.array([[0.9, 0.05, 0.05]] * len(records))
    return build_predictions(
        probs, Hierarchy.from_codes(codes), Thresholds(), 3, "v", records=records, languages=languages
    )


def test_predictions_say_language_and_route_unsupported_and_mismatch() -> None:
    records = [
        JobRecord(job_title="staff nurse"),
        JobRecord(job_title="Busfahrer"),
        JobRecord(job_title="Busfahrer", language="fr"),
        JobRecord(job_title="οδηγός λεωφορείου"),
    ]
    english = _predictions(records)
    assert [p.language for p in english] == ["en", "de", "fr", "el"]
    assert [p.language_detected for p in english] == [None, "de", "de", "el"]
    assert not english[0].needs_review
    assert english[1].review_reasons == ["unsupported_language"]
    assert english[2].review_reasons == ["unsupported_language", "language_mismatch"]
    assert english[3].review_reasons == ["unsupported_language"]
    every = _predictions(records, LANGUAGES)
    assert [p.review_reasons for p in every] == [[], [], ["language_mismatch"], []]


def test_model_languages_default_to_english(tmp_path: Path) -> None:
    from tests.tiny_model import build_tiny_model_dir

    model_dir = build_tiny_model_dir(tmp_path / "m", "tiny-lang")
    assert ModelDir.read(model_dir).languages == ("en",) == read_model_languages(model_dir)
    meta = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**meta, "languages": ["en", "de"]}))
    assert read_model_languages(model_dir) == ("en", "de")
    from shared.predictor import Predictor

    predictor = Predictor.load(model_dir, None)
    assert predictor.languages == ("en", "de")
    german, greek = predictor.predict([JobRecord(job_title="Busfahrer"), JobRecord(job_title="λογιστής")])
    assert german.language == "de" and "unsupported_language" not in german.review_reasons
    assert greek.language == "el" and "unsupported_language" in greek.review_reasons


def test_trainer_config_languages_hook() -> None:
    from services.trainer.config import FinetuneConfig

    assert FinetuneConfig().languages == ["en"]
    assert FinetuneConfig(languages=["en", "bg"]).languages == ["en", "bg"]
    with pytest.raises(ValidationError):
        FinetuneConfig(languages=["xx"])


# ---------------------------------------------------------------------------------------------------------
# through the API, CSV results and isco predict
# ---------------------------------------------------------------------------------------------------------


def test_api_language_hint_and_result(client: TestClient) -> None:  # noqa: F811
    r = client.post("/predict/job", json={"job_title": "nurse", "language": "zz"})
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert (
        errors[0]["field"] == "language"
        and "accepted codes are " + ", ".join(LANGUAGES) in errors[0]["reason"]
    )
    r = client.post(
        "/predict/batch", json={"records": [{"job_title": "nurse"}, {"job_title": "a", "language": 3}]}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "records.1.language"
    r = client.post("/predict/job", json={"job_title": "Busfahrer", "language": "fr"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["language"] == "fr" and body["language_detected"] == "de"
    assert {"unsupported_language", "language_mismatch"} <= set(body["review_reasons"])
    records = [{"id": "1", "job_title": "staff nurse"}, {"id": "2", "job_title": "οδηγός λεωφορείου"}]
    r = client.post("/predict/batch", json={"records": records})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [p["language"] for p in results] == ["en", "el"]
    assert results[1]["needs_review"] and "unsupported_language" in results[1]["review_reasons"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "language_mismatch" in schema["Prediction"]["properties"]["review_reasons"]["description"]


def test_csv_results_and_isco_predict_say_language(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    assert RESULT_COLUMNS[-2:] == ["language", "language_detected"]
    source = tmp_path / "in.csv"
    source.write_text(
        "job_title,language\nstaff nurse,\nBusfahrer,\nBusfahrer,fr\nλογιστής,\nwelder,xx\n", encoding="utf-8"
    )
    out = tmp_path / "out.csv"
    result = _predict(env, "--input", str(source), "--output", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    rows = _read(out)
    header = rows[0]
    at = {name: i for i, name in enumerate(header)}
    assert header[1] == "input_language"  # the hint column, renamed beside the result's `language`
    got = [(r[at["language"]], r[at["language_detected"]], r[at["review_reasons"]]) for r in rows[1:]]
    assert got[0][0] == "en" and "language" not in got[0][2]
    assert got[1][:2] == ("de", "de") and got[1][2].endswith("unsupported_language")
    assert got[2][:2] == ("fr", "de") and got[2][2].endswith("unsupported_language|language_mismatch")
    assert got[3][:2] == ("el", "el") and "unsupported_language" in got[3][2]
    assert rows[5][at["row_error"]].startswith("language: unknown language 'xx': accepted codes are en, bg")
    one = _predict(env, "--job-title", "Busfahrer")
    assert one.exit_code == 0, one.output
    printed = json.loads(one.stdout)
    assert printed["language"] == "de" and "unsupported_language" in printed["review_reasons"]
