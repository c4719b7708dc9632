"""`isco predict --input IN.csv --output OUT.csv [--model VERSION]`: code a CSV file locally;
`isco predict --job-title T [--duties D] [--industry I] [--language L]`: code one record and print its result
as JSON.

Input: a header with job_title and/or duties_description (case and spaces ignored; comma, semicolon or tab),
optionally industry (the employer's activity, read as context) and language (an ISO 639-1 hint of the row's
language); extra columns (industry too) are kept.
Output: the input columns (a name that clashes with an output column gets an `input_` prefix), then isco_code,
level, title, confidence, is_fallback, unit_code, unit_confidence, top_codes, top_confidences, needs_review,
review_reasons (the predict CSV contract, `shared.csvio`), then row_error: a row that cannot be coded (both
texts empty, wrong number of fields) keeps its place with empty results and the reason. Rows are coded by
`shared.coding`, the engine the job workers use: the same results and the same row_error texts as a CSV job.
The file is streamed in chunks; memory does not grow with its size. The output appears only when complete:
it is written to a hidden temp file that is renamed at the end, and removed on an error, Ctrl-C or SIGTERM.
An Excel workbook (.xlsx) in (`--sheet`, default the first) or out (by the output's name) goes through the
same CSV input layer (`shared.csvio.workbook`); formula cells are read as their saved values, never run.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
err = Console(stderr=True)

CHUNK_ROWS = 512
BAD_INPUT = 2


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(BAD_INPUT)


class Terminated(Exception):
    """SIGTERM arrived: unwind (removing the partial output) and exit like a terminated process."""


class _Termination:
    """Remembers a SIGTERM so that a `Terminated` swallowed on its way up still stops the run."""

    def __init__(self) -> None:
        self.signalled = False

    def check(self) -> None:
        # The handler's exception can land inside a `__del__` (a regex object's, a file's), where Python
        # prints "Exception ignored" and carries on; checking the flag between chunks makes SIGTERM certain.
        if self.signalled:
            raise Terminated(signal.SIGTERM)


@contextmanager
def _sigterm_unwinds() -> Iterator[_Termination]:
    """While active, SIGTERM raises `Terminated` in the main thread, so `finally` blocks run."""
    termination = _Termination()

    def raise_terminated(signum: int, _frame: object) -> None:
        termination.signalled = True
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield termination
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield termination
    finally:
        signal.signal(signal.SIGTERM, previous)


def _model_dir(settings: Any, model: str | None) -> Path:
    from shared.registry import RegistryError, model_dir_for

    try:
        return model_dir_for(settings, model or (str(settings.model_dir) if settings.model_dir else None))
    except RegistryError as exc:
        raise _fail(str(exc)) from None


def _options(settings: Any, unit_threshold: float | None) -> Any:
    from shared.schemas import PredictOptions

    thresholds = settings.thresholds.model_copy(
        update={"unit": unit_threshold} if unit_threshold is not None else {}
    )
    return PredictOptions(top_k=5, thresholds=thresholds)


@app.command()
def predict(
    input: Path = typer.Option(
        None,
        "--input",
        "-i",
        help="CSV or Excel workbook (.xlsx) with job_title and/or duties_description, optionally industry",
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="result CSV, or .xlsx by its name (written atomically)"
    ),
    sheet: str = typer.Option(None, "--sheet", help="workbooks: the sheet to read (default: the first)"),
    job_title: str = typer.Option(None, "--job-title", "-t", help="one record: its job title"),
    duties: str = typer.Option(None, "--duties", "-d", help="one record: its duties description"),
    industry: str = typer.Option(
        None,
        "--industry",
        help="one record: the employer's main activity, e.g. 'paper manufacturing' (optional context; "
        "a file gives it in an industry column)",
    ),
    language: str = typer.Option(
        None,
        "--language",
        "-l",
        help="one record: the ISO 639-1 code of the language it is written in, e.g. 'de' (optional hint; "
        "without it the language is identified from the text; a file gives it in a language column)",
    ),
    model: str = typer.Option(None, "--model", help="model version or directory (default: the best model)"),
    unit_threshold: float = typer.Option(
        None, "--unit-threshold", min=0.0, max=1.0, help="4-digit confidence below which the code falls back"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Code every row of a CSV file (--input, --output), or one record (--job-title and/or --duties,
    optionally --industry and --language; its result is printed as JSON), with the best (or the given)
    model."""
    single = any(value is not None for value in (job_title, duties, industry, language))
    if single:
        if input is not None or output is not None:
            raise _fail(
                "give either --input/--output (a file; its industry and language columns give each row's) or "
                "--job-title/--duties/--industry/--language (one record), not both"
            )
        _predict_one(job_title or "", duties or "", industry or "", language or "", model, unit_threshold)
        return
    if input is None or output is None:
        raise _fail("give --input and --output (a CSV file), or --job-title and/or --duties (one record)")
    _predict_file(input, output, model, unit_threshold, progress, sheet)


def _predict_one(
    job_title: str,
    duties: str,
    industry: str,
    language: str,
    model: str | None,
    unit_threshold: float | None,
) -> None:
    from pydantic import ValidationError

    from services.inference.settings import InferenceSettings
    from shared.schemas import JobRecord

    try:
        record = JobRecord(
            job_title=job_title, duties_description=duties, industry=industry, language=language or None
        )
    except ValidationError as exc:
        reasons = "; ".join(
            ("--language: " if e["loc"] == ("language",) else "")
            + str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise _fail(reasons.replace("job_title and duties_description", "--job-title and --duties")) from None
    settings = InferenceSettings()
    model_dir = _model_dir(settings, model)

    from shared.predictor import Predictor

    # stdout carries the JSON alone: what model loading prints (e.g. int8 calibration) goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        predictor = Predictor.load(model_dir, settings)
        prediction = predictor.predict([record], _options(settings, unit_threshold))[0]
    typer.echo(prediction.model_dump_json(indent=2, exclude={"evidence"}))


def _predict_file(
    input: Path,
    output: Path,
    model: str | None,
    unit_threshold: float | None,
    progress: bool,
    sheet: str | None = None,
) -> None:
    """A workbook in or out goes through a CSV in a temporary folder: the input layer reads the same CSV a
    job would (`shared.csvio.workbook`), and the .xlsx result is the CSV result's cells."""
    from shared.csvio.reading import CsvFormatError
    from shared.csvio.workbook import XLSX_SUFFIX, is_workbook, workbook_to_csv

    if not input.is_file():
        raise _fail(f"--input: {input} does not exist")
    if output.resolve() == input.resolve():
        raise _fail("--output: must not be the input file")
    with open(input, "rb") as f:
        head = f.read(8)
    book = is_workbook(head, input.name)
    if sheet is not None and not book:
        raise _fail("--sheet: only for a workbook (.xlsx) input")
    if not book and output.suffix.lower() != XLSX_SUFFIX:
        _predict_csv(input, output, model, unit_threshold, progress)
        return
    with tempfile.TemporaryDirectory(prefix="isco-predict-") as folder:
        csv_input, csv_output = input, output
        if book:
            csv_input = Path(folder) / "input.csv"
            try:
                found = workbook_to_csv(input, csv_input, sheet=sheet)
            except CsvFormatError as exc:
                raise _fail(f"{input}: {exc}") from None
            others = [name for name in found.sheets if name != found.sheet]
            err.print(
                f"reading sheet {found.sheet!r} of {input}"
                + (f" (other sheets: {', '.join(others)}; --sheet chooses)" if others else ""),
                highlight=False,
            )
            if found.formula_note():
                err.print(found.formula_note(), highlight=False)
        if output.suffix.lower() == XLSX_SUFFIX:
            csv_output = Path(folder) / "result.csv"
        _predict_csv(csv_input, csv_output, model, unit_threshold, progress)
        if csv_output != output:
            _csv_to_xlsx(csv_output, output)


def _csv_to_xlsx(source: Path, output: Path) -> None:
    import csv

    from shared.csvio.reading import read_layout
    from shared.csvio.workbook import write_xlsx

    layout = read_layout(source, any_of=("isco_code",))
    partial = output.with_name(output.name + ".partial")
    with open(source, encoding=layout.encoding, newline="") as f:
        write_xlsx(csv.reader(f, delimiter=layout.delimiter), partial)
    partial.replace(output)


def _predict_csv(
    input: Path, output: Path, model: str | None, unit_threshold: float | None, progress: bool
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from services.inference.settings import InferenceSettings
    from shared.coding import Memo, chunks, code_rows, csv_rows
    from shared.csvio.reading import CsvFormatError, iter_rows, read_layout
    from shared.csvio.writing import header_line, result_header, result_row, write_rows
    from shared.files import atomic_open

    if not input.is_file():
        raise _fail(f"--input: {input} does not exist")
    if output.resolve() == input.resolve():
        raise _fail("--output: must not be the input file")
    settings = InferenceSettings()
    try:
        layout = read_layout(input)
        total = sum(1 for _ in iter_rows(input, layout))
    except CsvFormatError as exc:
        raise _fail(f"{input}: {exc}") from None
    model_dir = _model_dir(settings, model)

    from shared.predictor import Predictor

    predictor = Predictor.load(model_dir, settings)
    options = _options(settings, unit_threshold)
    coded = failed = 0
    memo = Memo(20_000)
    with _sigterm_unwinds() as termination:
        try:
            # the output appears whole or not at all: a temporary beside it replaces it at the end
            with (
                atomic_open(output) as out,
                Progress(
                    TextColumn("coding"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=err,
                    disable=not progress,
                    transient=False,
                ) as bar,
            ):
                task = bar.add_task("rows", total=total)
                out.write(header_line(result_header(layout.header, job=True), layout.delimiter))
                for chunk in chunks(csv_rows(input, layout), CHUNK_ROWS):
                    outcomes = code_rows(chunk, predictor, options, memo)
                    rows = []
                    for row, outcome in zip(chunk, outcomes, strict=True):
                        assert row.cells is not None
                        rows.append(result_row(row.cells, outcome, job=True))
                        if isinstance(outcome, str):
                            failed += 1
                        else:
                            coded += 1
                    write_rows(out, rows, layout.delimiter)
                    bar.advance(task, len(chunk))
                    termination.check()
                termination.check()
        except CsvFormatError as exc:
            raise _fail(f"{input}: {exc}") from None
        except Terminated:
            err.print("terminated: no output written", highlight=False)
            raise typer.Exit(128 + signal.SIGTERM) from None
    err.print(
        f"{coded:,} rows coded, {failed:,} rows with errors (see row_error) -> {output} "
        f"(model {predictor.version})",
        highlight=False,
    )
