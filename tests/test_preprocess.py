"""Preprocessing: reading, validation with reasons, de-duplication and conflicts, DBSCAN checks, the split."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from services.trainer.config import PreprocessConfig
from services.trainer.outliers import OutlierConfig, detect_outliers
from services.trainer.preprocess import deduplicate, prepare, repair_lines, validate
from services.trainer.records import DataError, Example, RawRow, read_coded_csv, read_corrections
from services.trainer.splits import split


def _row(title: str, code: str, source: str = "user", duties: str = "") -> RawRow:
    return RawRow(title, duties, code, source, f"test:{title}")


def _example(text: str, code: str, source: str = "user") -> Example:
    return Example(text, code, source, text, "", f"test:{text}")


def test_read_coded_csv_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "coded.csv"
    path.write_text(
        "Job Title;Duties Description;ISCO code\n"  # header names are matched ignoring case and spaces
        "Staff  <b>Nurse</b>;Cares for patients;2221\n"
        "soldier;;110\n"
        "spreadsheet;;2512.0\n"
        "unknown;;9999\n"
        "minor group;;222\n"
        ";;2221\n"
        "words;;abc\n"
        "two decimals;;8331.00\n"
        "esco;;7412.12\n",
        encoding="utf-8-sig",
    )
    rows = read_coded_csv(path)
    assert [r.origin for r in rows][:2] == ["coded.csv:2", "coded.csv:3"]
    repaired: list[dict[str, str]] = []
    valid, invalid = validate(rows, repaired=repaired)
    assert [(e.text, e.code) for e in valid] == [
        ("staff nurse : cares for patients", "2221"),
        ("soldier", "0110"),
        ("spreadsheet", "2512"),
        ("two decimals", "8331"),
        ("esco", "7412"),
    ]
    reasons = {r.origin: r.reason for r in invalid}
    assert reasons == {
        "coded.csv:5": "isco_code: '9999' is not an ISCO-08 code (no group has this number)",
        "coded.csv:6": "isco_code: '222' is a minor group (3 digits); a 4-digit unit group is required",
        "coded.csv:7": "job_title and duties_description are both empty",
        "coded.csv:8": "isco_code: 'abc' is not an ISCO-08 code: it contains 'a', 'b', 'c' "
        "(expected digits only, e.g. 2221)",
    }
    # every repaired code has a report line saying what was done
    assert {(r["origin"], r["code"]): r["repair"] for r in repaired} == {
        ("coded.csv:3", "0110"): "'110' read as 0110 (leading zero restored)",
        ("coded.csv:4", "2512"): "'2512.0' read as 2512 (a number written with decimals)",
        ("coded.csv:9", "8331"): "'8331.00' read as 8331 (a number written with decimals)",
        (
            "coded.csv:10",
            "7412",
        ): "'7412.12' is an ESCO occupation code: coded as its ISCO-08 unit group 7412",
    }


def test_read_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("job_title,code\nnurse,2221\n")
    with pytest.raises(DataError, match="bad.csv: missing column isco_code"):
        read_coded_csv(path)
    path.write_text("name,isco_code\nnurse,2221\n")
    with pytest.raises(DataError, match="neither job_title nor duties_description"):
        read_coded_csv(path)
    path.write_bytes("job_title,isco_code\ncaf\xe9,2221\n".encode("latin-1"))
    # the uploads' reader and message: line, byte and the right legacy encoding
    with pytest.raises(DataError, match="not valid UTF-8: byte 0xe9 at line 2.*Windows-1252"):
        read_coded_csv(path)
    with pytest.raises(DataError, match="file not found"):
        read_coded_csv(tmp_path / "missing.csv")


def test_read_corrections_both_layouts(tmp_path: Path) -> None:
    folder = tmp_path / "fixes"
    folder.mkdir()
    (folder / "a.csv").write_text("job_title,duties_description,corrected_isco_code\nnurse,,2221\n")
    (folder / "b.csv").write_text("text,corrected_isco_code\nwelder : joins metal,7212\n")
    rows = read_corrections(folder)
    assert [(r.job_title, r.isco_code, r.source, r.origin) for r in rows] == [
        ("nurse", "2221", "correction", "a.csv:2"),
        ("welder : joins metal", "7212", "correction", "b.csv:2"),
    ]
    (tmp_path / "with_industry.csv").write_text(
        "job_title,industry,corrected_isco_code\ninspector,paper mfr,7543\n", encoding="utf-8"
    )
    assert [r.industry for r in read_corrections(tmp_path / "with_industry.csv")] == ["paper mfr"]
    (folder / "c.csv").write_text("text,isco_code\nx,1111\n")
    with pytest.raises(DataError, match="c.csv: missing column corrected_isco_code"):
        read_corrections(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .csv files"):
        read_corrections(tmp_path / "empty")
    with pytest.raises(DataError, match="file not found"):
        read_corrections(tmp_path / "missing.csv")


def test_deduplicate_resolves_conflicts_by_source_then_majority() -> None:
    examples = [
        _example("nurse", "2221", "esco_title"),
        _example("nurse", "2221", "esco_title"),  # exact duplicate
        _example("nurse", "3221", "esco_title"),
        _example("cook", "5120", "esco_title"),
        _example("cook", "9411", "esco_title"),
        _example("cook", "9411", "user"),  # a user's record beats the corpus
        _example("chef", "3434", "user"),
        _example("chef", "5120", "correction"),  # a correction beats everything
    ]
    kept, duplicates, conflicts = deduplicate(examples)
    assert {(e.text, e.code) for e in kept} == {("nurse", "2221"), ("cook", "9411"), ("chef", "5120")}
    assert duplicates == 2  # the second nurse/2221 and the second cook/9411
    assert {(c["text"], c["dropped_code"]) for c in conflicts} == {
        ("nurse", "3221"),
        ("cook", "5120"),
        ("chef", "3434"),
    }
    kept_all, _, conflicts_none = deduplicate(examples, resolve_conflicts=False)
    assert len(kept_all) == 6 and conflicts_none == []


def test_dbscan_flags_inconsistent_labels_and_outliers() -> None:
    examples = [_example(f"registered nurse ward {i}", "2221") for i in range(5)]
    examples.append(_example("registered nurse ward 5", "7212"))  # same cluster, another label
    examples += [_example(f"software developer web {i}", "2512") for i in range(5)]
    examples.append(_example("deep sea fishing boat", "2512"))  # nothing like the rest of its group
    config = OutlierConfig(duplicate_eps=0.5, class_eps=0.8, min_samples=3, min_group_examples=5)
    findings = detect_outliers(examples, config)
    kinds = {(f["kind"], examples[f["index"]].text) for f in findings}
    assert ("inconsistent_label", "registered nurse ward 5") in kinds
    assert ("class_outlier", "deep sea fishing boat") in kinds
    assert not any(examples[f["index"]].text.startswith("software developer") for f in findings)
    assert detect_outliers(examples, OutlierConfig(enabled=False)) == []


def test_split_is_stratified_stable_and_keeps_singletons_in_train() -> None:
    config = PreprocessConfig(val_fraction=0.2, test_fraction=0.2)
    examples = [_example(f"nurse {i}", "2221") for i in range(20)]
    examples += [_example(f"cook {i}", "5120") for i in range(10)]
    examples += [_example("lone astronomer", "2111"), _example("pair a", "2113"), _example("pair b", "2113")]
    examples += [_example("fixed nurse", "2221", "correction")]
    train, val, test = split(examples, config)
    by_split = {
        name: [e.code for e in part] for name, part in (("train", train), ("val", val), ("test", test))
    }
    assert by_split["test"].count("2221") == 4 and by_split["val"].count("2221") == 4
    assert by_split["test"].count("5120") == 2 and by_split["val"].count("5120") == 2
    assert "2111" not in by_split["test"] + by_split["val"]  # singleton -> train
    assert by_split["train"].count("2113") == 2  # too small to split
    assert any(e.source == "correction" for e in train)
    # Adding records elsewhere does not move existing records between splits.
    more = examples + [_example(f"welder {i}", "7212") for i in range(10)]
    train2, val2, test2 = split(more, config)
    assert {e.text for e in test} <= {e.text for e in test2}
    assert {e.text for e in val} <= {e.text for e in val2}


def test_prepare_reports_everything(tmp_path: Path) -> None:
    rows = [_row(f"nurse {i}", "2221") for i in range(10)] + [_row(f"cook {i}", "5120") for i in range(10)]
    rows += [_row("nurse 1", "5120"), _row("", "2221"), _row("x", "12345"), _row("soldier", "110")]
    prepared = prepare(rows, PreprocessConfig(outliers=OutlierConfig(min_group_examples=5)))
    assert prepared.stats["invalid_rows"] == 2
    assert prepared.stats["codes_repaired"] == 1
    assert prepared.stats["conflicting_labels_dropped"] == 1
    assert len(prepared.train) + len(prepared.val) + len(prepared.test) == 21
    assert len(prepared.data_hash) == 64 and prepared.eval_data_hash != prepared.data_hash
    paths = prepared.write_reports(tmp_path / "reports")
    with paths["invalid_rows"].open() as f:
        invalid = list(csv.DictReader(f))
    assert [r["reason"] for r in invalid] == [
        "job_title and duties_description are both empty",
        "isco_code: '12345' is not an ISCO-08 code (no group has this number)",
    ]
    with paths["repaired_codes"].open() as f:
        assert [r["repair"] for r in csv.DictReader(f)] == ["'110' read as 0110 (leading zero restored)"]
    assert paths["summary"].is_file() and paths["conflicts"].is_file() and paths["outliers"].is_file()
    # Same input, same hashes (the split is deterministic).
    again = prepare(rows, PreprocessConfig(outliers=OutlierConfig(min_group_examples=5)))
    assert again.eval_data_hash == prepared.eval_data_hash


def test_trainer_settings_from_profile_env_and_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.trainer.config import ProfileError, TrainerSettings

    profile = tmp_path / "p.yaml"
    profile.write_text(
        "replay_size: 7\npreprocess:\n  test_fraction: 0.2\nfinetune:\n  epochs: 2\n  max_length: 64\n"
        "learning_rate: 0.001\n"  # a flat recipe key: taken as a finetune setting
    )
    monkeypatch.setenv("ISCO_FINETUNE__EPOCHS", "1")
    monkeypatch.setenv("ISCO_PREPROCESS__VAL_FRACTION", "0.05")
    settings = TrainerSettings(profile=str(profile), data_dir=tmp_path, replay_size=9)
    assert settings.replay_size == 9  # argument > profile
    assert settings.preprocess.test_fraction == 0.2 and settings.preprocess.val_fraction == 0.05
    config = settings.finetune_config(base_model="some/dir")
    assert (config.epochs, config.max_length, config.learning_rate) == (1, 64, 0.001)  # env > profile
    assert config.base_model == "some/dir"

    profile.write_text("finetune:\n  epoch: 3\n")
    with pytest.raises(ProfileError, match="unknown setting.*epoch"):
        TrainerSettings(profile=str(profile)).finetune_config()
    with pytest.raises(ProfileError, match="unknown profile 'nope'"):
        TrainerSettings(profile="nope")


def test_data_info_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.cli import build_app

    coded = tmp_path / "coded.csv"
    coded.write_text("job_title,isco_code\nnurse,2221\nwelder,7212\nghost,9999\n")
    env = {"ISCO_ENV": "test", "ISCO_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    result = CliRunner().invoke(build_app(), ["data", "info", "--data", str(coded)], env=env)
    assert result.exit_code == 0, result.output
    assert "esco_title" in result.output and "of 436" in result.output
    assert "3 rows, 2 valid, 1 invalid" in result.output and "coded.csv:4" in result.output


def test_a_repaired_code_is_reported_where_its_row_is(tmp_path: Path) -> None:
    """`isco data info` lists each repaired code beside its row, and `isco train` prints the same lines under
    its preprocessing summary (`PreparedData.summary`), not only in repaired_codes.csv."""
    from typer.testing import CliRunner

    from services.cli import build_app

    coded = tmp_path / "coded.csv"
    coded.write_text("job_title,isco_code\nnurse,2221\nsoldier,110\nghost,9999\n")
    env = {"ISCO_ENV": "test", "ISCO_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    result = CliRunner().invoke(build_app(), ["data", "info", "--data", str(coded)], env=env)
    assert result.exit_code == 0, result.output
    assert "3 rows, 2 valid, 1 invalid, 1 codes repaired" in result.output
    assert "coded.csv:3: isco_code '110' read as 0110 (leading zero restored)" in result.output

    rows = [_row(f"nurse {i}", "2221") for i in range(10)] + [_row("soldier", "110"), _row("x", "12345")]
    prepared = prepare(rows, PreprocessConfig(outliers=OutlierConfig(enabled=False)))
    first, *repairs = prepared.summary(tmp_path / "reports")
    assert "1 invalid rows, 1 codes repaired" in first and str(tmp_path / "reports") in first
    assert repairs == ["  test:soldier: isco_code '110' read as 0110 (leading zero restored)"]
    many = [{"origin": f"f.csv:{i}", "repair": "r"} for i in range(12)]
    assert repair_lines(many)[-1] == "  ... and 2 more (repaired_codes.csv)" and len(repair_lines(many)) == 11


def test_split_keeps_an_occupations_titles_together() -> None:
    from shared.corpus import load_esco_facts

    config = PreprocessConfig(val_fraction=0.2, test_fraction=0.2)
    facts = [f for f in load_esco_facts() if f[1] == "2221"][:12]
    examples = [_example(label, "2221") for _, _, labels in facts for label in labels[:4]]
    train, val, test = split(examples, config)
    occupation = {label.lower(): uri for uri, _, labels in facts for label in labels[:4]}
    where = {
        name: {occupation[e.text.lower()] for e in part}
        for name, part in (("train", train), ("val", val), ("test", test))
    }
    assert where["val"] and where["test"]
    assert not (where["train"] & where["val"]) and not (where["train"] & where["test"])
    assert not (where["val"] & where["test"])
    assert split(examples, config.model_copy(update={"group_by": "record"}))[2] != test


def test_validation_can_hold_new_titles_of_known_occupations() -> None:
    from shared.corpus import load_esco_facts

    config = PreprocessConfig(val_fraction=0.2, test_fraction=0.2)
    facts = [f for f in load_esco_facts() if f[1] == "2221"][:12]
    examples = [_example(label, "2221") for _, _, labels in facts for label in labels[:4]]
    described = [  # a title with its occupation's description as duties
        Example(f"{e.job_title} : cares for patients", "2221", "esco_description", e.job_title,
                "cares for patients", "test")
        for e in examples
    ]  # fmt: skip
    occupation = {label.lower(): uri for uri, _, labels in facts for label in labels[:4]}
    train0, val0, test0 = split(examples + described, config)
    train, val, test = split(examples + described, config.model_copy(update={"val_known_titles": 0.2}))
    assert test == test0 and all(e in val for e in val0)  # test and the held-out occupations unchanged
    known = [e for e in val if e not in val0]
    assert 0 < len(known) <= 0.2 * len(train0) + 1
    trained = {occupation[e.job_title.lower()] for e in train}
    # each moved title's occupation still trains on another title; only the title alone is validated, and
    # its records with duties leave training too
    assert all(occupation[e.job_title.lower()] in trained for e in known)
    assert all(not e.duties_description for e in known)
    moved = {e.job_title for e in known}
    assert not any(e.job_title in moved for e in train)
    assert sorted(e.text for e in train + known) == sorted(
        e.text for e in train0 if not (e.job_title in moved and e.duties_description)
    )


def test_held_out_records_whose_duties_also_train_are_dropped() -> None:
    """An ISCO task line is paired with two titles of its unit group, which may fall in different splits:
    held out, its duties would give the code away, so validation and test keep only duties they never
    trained on, and prepare() says how many it dropped."""
    nurses = [f"nurse {i}" for i in range(20)]
    rows = [_row(t, "2221") for t in nurses]
    rows += [_row(t, "2221", duties="monitors patients on the ward") for t in nurses]
    rows += [_row(t, "2221", duties=f"{t} cares for patients in ward {t[-1]}") for t in nurses]
    prepared = prepare(rows, PreprocessConfig(val_fraction=0.2, test_fraction=0.2))
    held_out = prepared.val + prepared.test
    assert held_out and not any(e.duties_description == "monitors patients on the ward" for e in held_out)
    assert any(e.duties_description.endswith(e.job_title[-1]) for e in held_out)  # duties of its own stay
    dropped = prepared.stats["held_out_duties_seen_in_training_dropped"]
    # one record dropped per held-out title: its shared task line (its title and own duties stay)
    assert dropped["val"] + dropped["test"] == sum(not e.duties_description for e in held_out) > 0
    assert any(e.duties_description == "monitors patients on the ward" for e in prepared.train)


def test_coding_index_beats_esco_on_one_text_and_users_beat_both() -> None:
    examples = [
        _example("technical manager", "2654", "esco_title"),
        _example("technical manager", "1321", "ons_title"),
        _example("wire drawer", "8121", "esco_title"),
        _example("wire drawer", "7221", "ons_title"),
        _example("wire drawer", "8121", "user"),
    ]
    kept, _, conflicts = deduplicate(examples)
    assert {(e.text, e.code, e.source) for e in kept} == {
        ("technical manager", "1321", "ons_title"),
        ("wire drawer", "8121", "user"),
    }
    assert len(conflicts) == 2


def test_industry_is_read_and_becomes_part_of_the_model_input(tmp_path: Path) -> None:
    path = tmp_path / "coded.csv"
    path.write_text(
        "job_title,industry,isco_code\nInspector,paper mfr,7543\nInspector,banking,3359\n", encoding="utf-8"
    )
    rows = read_coded_csv(path)
    assert [r.industry for r in rows] == ["paper mfr", "banking"]
    valid, invalid = validate(rows)
    assert not invalid
    assert [e.text for e in valid] == [
        "inspector (industry: paper manufacturing)",
        "inspector (industry: banking)",
    ]
    # one text per industry: neither is a duplicate or a conflict of the other
    kept, duplicates, conflicts = deduplicate(valid)
    assert len(kept) == 2 and duplicates == 0 and conflicts == []
    # an industry alone is no record
    _, refused = validate([RawRow("", "", "7543", "user", "x:1", "paper mfr")])
    assert refused and "both empty" in refused[0].reason


def test_split_holds_out_a_title_with_its_qualifiers_and_industries() -> None:
    config = PreprocessConfig(val_fraction=0.2, test_fraction=0.2)
    examples = []
    for i in range(12):
        title = f"sorter{i}"
        examples += [
            Example(f"{title}", "9329", "ons_title", title, "", "t"),
            Example(f"{title} (metal)", "9329", "ons_title", f"{title} (metal)", "", "t"),
            Example(f"{title} (industry: x)", "9329", "ons_industry", title, "", "t", "x"),
        ]
    train, val, test = split(examples, config)
    base = {name: {e.job_title.split()[0] for e in part} for name, part in (("train", train), ("val", val))}
    held = {e.job_title.split()[0] for e in test}
    assert held and base["val"]
    assert not (held & base["train"]) and not (base["val"] & base["train"])
    assert all(sum(e.job_title.split()[0] == t for e in test) == 3 for t in held)
