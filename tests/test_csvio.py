"""shared/csvio.py: reading job CSVs (encodings, delimiters, headers, ragged rows), writing results safely."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import pytest

from shared.csvio.reading import CsvFormatError, iter_rows, normalise_header, read_layout, read_table, scan
from shared.csvio.writing import (
    JOB_RESULT_COLUMNS,
    RESULT_COLUMNS,
    header_line,
    neutralise,
    result_header,
    result_row,
)
from shared.schemas import Alternative, Prediction


def write(tmp_path: Path, data: bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def error_of(path: Path, **kwargs: object) -> CsvFormatError:
    with pytest.raises(CsvFormatError) as info:
        scan(path, **kwargs)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_delimiters_bom_and_loose_header_names(tmp_path: Path, delimiter: str, bom: bytes) -> None:
    header = delimiter.join(["  Job Title ", "DUTIES-description", "ref"])
    body = "\r\n".join(
        [
            header,
            delimiter.join(["nurse", "cares, for; patients", "1"]).replace(
                "cares, for; patients", '"cares, for; patients"'
            ),
            delimiter.join(["Müller", "", "2"]),
        ]
    )
    path = write(tmp_path, bom + body.encode())
    layout = read_layout(path)
    assert layout.delimiter == delimiter
    assert layout.encoding == ("utf-8-sig" if bom else "utf-8")
    assert (layout.title_index, layout.duties_index) == (0, 1)
    rows = list(iter_rows(path))
    assert [r.cells for r in rows] == [["nurse", "cares, for; patients", "1"], ["Müller", "", "2"]]
    assert scan(path).rows == 2


def test_one_text_column_is_enough(tmp_path: Path) -> None:
    path = write(tmp_path, b"duties_description\nwelds pipes\n")
    layout = read_layout(path)
    assert layout.title_index is None and layout.duties_index == 0
    assert layout.texts(["welds pipes"]) == ("", "welds pipes")


def test_optional_industry_column(tmp_path: Path) -> None:
    path = write(tmp_path, b"Job Title;Industry;ref\ninspector;Paper mfr;1\n")
    layout = read_layout(path)
    assert layout.industry_index == 1 and layout.title_index == 0
    (row,) = iter_rows(path, layout)
    assert layout.texts(row.cells) == ("inspector", "") and layout.industry(row.cells) == "Paper mfr"
    without = read_layout(write(tmp_path, b"job_title,ref\nwelder,1\n", "plain.csv"))
    assert without.industry_index is None and without.industry(["welder", "1"]) == ""
    # not a text column: an industry alone does not make a file codable, and it is read from one column only
    assert error_of(write(tmp_path, b"industry,ref\npaper,1\n", "alone.csv")).code == "missing_columns"
    twice = write(tmp_path, b"job_title,industry,INDUSTRY\na,b,c\n", "twice.csv")
    assert error_of(twice).code == "duplicate_columns" and error_of(twice).details["duplicates"] == [
        "industry"
    ]
    # it passes through to the result like any input column
    assert result_header(["job_title", "industry"])[:2] == ["job_title", "industry"]


def test_quoted_newlines_unicode_separators_and_line_numbers(tmp_path: Path) -> None:
    # U+2028 is legal inside a field: it must not split the row (str.splitlines would)
    path = write(tmp_path, 'job_title,ref\n"night\nnurse",1\n\nchef\u2028cook,2\r\nlast,3'.encode())
    rows = list(iter_rows(path))
    assert [r.cells for r in rows] == [["night\nnurse", "1"], ["chef\u2028cook", "2"], ["last", "3"]]
    assert [r.line for r in rows] == [2, 5, 6]


def test_rows_across_read_blocks(tmp_path: Path) -> None:
    lines = ["job_title,ref"] + [f"title {i} é,{i}" for i in range(20_000)]
    path = write(tmp_path, "\r\n".join(lines).encode())
    rows = list(iter_rows(path))
    assert len(rows) == 20_000 and rows[-1].cells == ["title 19999 é", "19999"]
    assert all(r.error is None for r in rows)


def test_latin1_file_is_refused_naming_the_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "job_title,ref\nCafé owner,1\n".encode("latin-1"))
    err = error_of(path)
    assert err.code == "encoding"
    assert "not valid UTF-8" in err.message and "line 2" in err.message and "0xe9" in err.message
    assert "Save the file as UTF-8" in err.message


def test_bad_byte_deep_in_a_large_file_is_found(tmp_path: Path) -> None:
    good = "".join(f"title {i},{i}\n" for i in range(100_000)).encode()
    path = write(tmp_path, b"job_title,ref\n" + good + b"caf\xe9,x\n")
    err = error_of(path)
    assert err.code == "encoding" and err.details["line"] == 100_002


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_utf16_and_utf32_are_named(tmp_path: Path, encoding: str) -> None:
    path = write(tmp_path, "job_title\nnurse\n".encode(encoding))
    err = error_of(path)
    assert err.code == "encoding" and encoding.upper() in err.message


def test_missing_columns_listed(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, b"title;description;code\na;b;c\n"))
    assert err.code == "missing_columns"
    assert err.details["missing"] == ["job_title", "duties_description"]
    assert err.details["found"] == ["title", "description", "code"]
    assert "job_title" in err.message and "title, description, code" in err.message


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"  \r\n\n"])
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    assert error_of(write(tmp_path, data)).code == "empty"


def test_header_only(tmp_path: Path) -> None:
    assert error_of(write(tmp_path, b"job_title,duties_description\n")).code == "no_rows"


def test_ragged_rows_reported_per_row(tmp_path: Path) -> None:
    data = b"job_title,duties_description,ref\nnurse,cares,1\nwelder,welds\nbaker,bakes,3,extra\nok,ok,4\n"
    err = error_of(write(tmp_path, data))
    assert err.code == "ragged_rows" and err.details["count"] == 2
    assert err.details["rows"] == [{"row": 2, "line": 3, "fields": 2}, {"row": 3, "line": 4, "fields": 4}]
    assert "line 3 (2 fields)" in err.message
    # reading (not scanning) keeps going and marks the rows
    rows = list(iter_rows(write(tmp_path, data, "again.csv")))
    assert [r.error is not None for r in rows] == [False, True, True, False]
    assert rows[1].cells == ["welder", "welds", ""]


def test_row_limit(tmp_path: Path) -> None:
    path = write(tmp_path, b"job_title\n" + b"x\n" * 11)
    assert scan(path, max_rows=11).rows == 11
    assert error_of(path, max_rows=10).code == "too_many_rows"


def test_duplicate_text_column(tmp_path: Path) -> None:
    assert error_of(write(tmp_path, b"job_title,Job Title\na,b\n")).code == "duplicate_columns"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("nurse", "nurse"),
        ("a=b", "a=b"),
        ("", ""),
        ("-cmd|' /C calc'!A0", "'-cmd|' /C calc'!A0"),
        ("+HYPERLINK(1)", "'+HYPERLINK(1)"),
        # what a spreadsheet keeps as typed: plain numbers, a lone dash, phone numbers
        ("-1.5", "-1.5"),
        ("+3", "+3"),
        ("-", "-"),
        ("+44 20 7946 0958", "+44 20 7946 0958"),
        ("+1 (555) 010-9999", "+1 (555) 010-9999"),
    ],
)
def test_formula_neutralisation(cell: str, expected: str) -> None:
    assert neutralise(cell) == expected


def _prediction() -> Prediction:
    return Prediction(
        coded=True, isco_code="2221", level=4, title="Nursing professionals", confidence=0.91234,
        is_fallback=False, unit_code="2221", unit_title="Nursing professionals", unit_confidence=0.91234,
        alternatives=[Alternative(code=c, title="t", confidence=0.1) for c in ["2221", "3221", "5321", "2222",
                                                                             "3222", "2269"]],
        path=[], model_version="v1",
    )  # fmt: skip


def test_result_rows_follow_the_contract() -> None:
    header = result_header(["job_title", "ISCO code", "=evil"])
    assert header[:3] == ["job_title", "input_ISCO code", "=evil"]
    assert header[3:] == RESULT_COLUMNS + ["row_error"]
    ok = result_row(["nurse", "x", "=1+2"], _prediction())
    assert ok[2] == "'=1+2"
    assert ok[3:] == ["2221", "4", "Nursing professionals", "0.9123", "false", "2221", "0.9123",
                      "2221|3221|5321|2222|3222", "0.1000|0.1000|0.1000|0.1000|0.1000",
                      "true", "", "", "", ""]  # reasons, language, language_detected, row_error  # fmt: skip
    failed = result_row(["", "", ""], "job_title and duties_description are both empty")
    assert failed[3:-1] == [""] * len(RESULT_COLUMNS) and failed[-1].startswith("job_title")
    line = header_line(header, ";")
    assert next(csv.reader(io.StringIO(line), delimiter=";"))[2] == "'=evil"


def test_result_header_names_are_unique() -> None:
    header = result_header(["job_title", "isco_code", "input_isco_code", "Row Error", "notes"])
    assert header[:5] == ["job_title", "input_isco_code", "input_input_isco_code", "input_Row Error", "notes"]
    assert header[5:] == JOB_RESULT_COLUMNS
    assert len(set(map(normalise_header, header))) == len(header)


def test_cp1252_file_is_named_windows_1252(tmp_path: Path) -> None:
    text = "job_title,duties_description\nCafé owner,runs the café – “bistro” and crèche\n"
    err = error_of(write(tmp_path, text.encode("cp1252")))
    assert err.code == "encoding" and "Windows-1252" in err.message and "1250" not in err.message


def test_read_table_is_the_upload_reader(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffJob Title;ISCO Code\nnurse;2221\n\nwelder;7212\n".encode())
    header, rows = read_table(path)
    assert header == ["job_title", "isco_code"]
    assert list(rows) == [
        (2, {"job_title": "nurse", "isco_code": "2221"}),
        (4, {"job_title": "welder", "isco_code": "7212"}),
    ]
    with pytest.raises(CsvFormatError) as info:
        read_table(write(tmp_path, b"job_title,isco_code\na,1,2\n", "ragged.csv"))
    assert info.value.code == "ragged_rows"


def test_evaluate_and_training_read_files_like_uploads(tmp_path: Path) -> None:
    """`isco evaluate` and the trainer take what an upload takes (BOM, semicolons, loose header names, codes
    as spreadsheets write them) and refuse what it refuses, with the same message."""
    from services.trainer.evaluate import EvalDataError, load_eval_csv
    from services.trainer.records import DataError, read_coded_csv

    path = write(tmp_path, "\ufeffJob Title;ISCO Code\nwelder;7212.00\nnurse;2221\n".encode())
    ev = load_eval_csv(path)
    assert (ev.job_titles, ev.gold) == (["welder", "nurse"], ["7212", "2221"])
    assert [r.isco_code for r in read_coded_csv(path)] == ["7212.00", "2221"]
    bad = write(tmp_path, "job_title,isco_code\nCafé owner,1412\n".encode("cp1252"), "bad.csv")
    upload_message = error_of(bad).message
    with pytest.raises(EvalDataError) as eval_error:
        load_eval_csv(bad)
    with pytest.raises(DataError) as train_error:
        read_coded_csv(bad)
    assert upload_message in str(eval_error.value) and upload_message in str(train_error.value)
