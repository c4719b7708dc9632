"""The coding engine for files: rows in, a Prediction or a row error out, each distinct text coded once.

One engine for the job workers (services/worker/processing.py) and `isco predict`
(services/inference/cli.py), so that both give the same results and the same `row_error` texts. The model
is anything with `predict(records, options)` (a `shared.predictor.Predictor`); nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from cachetools import FIFOCache
from pydantic import ValidationError

from shared.csvio.reading import CsvLayout, iter_rows, normalise_header
from shared.schemas import JobRecord, Prediction, PredictOptions

EMPTY_RECORD = "job_title and duties_description are both empty"
# An optional input column: each row's language hint (shared.schemas.JobRecord.language); an unknown code is
# that row's error, naming the column and the accepted codes.
LANGUAGE = "language"
NO_RESULT = "internal error: no result"


@dataclass
class InputRow:
    """One input record: its CSV cells (passed through; None for batch records), its texts, and the reason it
    cannot be coded, if any."""

    cells: list[str] | None
    record: dict[str, Any]  # id, job_title, duties_description, industry, language
    error: str | None = None


def csv_rows(path: Path, layout: CsvLayout) -> Iterator[InputRow]:
    """The data rows of a CSV as InputRows; a ragged row carries its error (`line N: row has ...`)."""
    names = [normalise_header(h) for h in layout.header]
    language_at = names.index(LANGUAGE) if LANGUAGE in names else None
    for row in iter_rows(path, layout):
        title, duties = layout.texts(row.cells)
        record = {"job_title": title, "duties_description": duties, "industry": layout.industry(row.cells)}
        if language_at is not None and language_at < len(row.cells):
            record["language"] = row.cells[language_at]
        error = f"line {row.line}: {row.error}" if row.error else None
        yield InputRow(row.cells, record, error)


def chunks(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    """Consecutive lists of `size` rows (the last may be shorter)."""
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


RecordKey = tuple[str, str, str, str]  # (title, duties, industry, language hint) as written


class Memo:
    """Results of (title, duties, industry, language) already coded in this file: repeated rows cost
    nothing. The oldest entry goes first when `max_entries` are held (`cachetools.FIFOCache`); 0 disables
    it."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.data: FIFOCache[RecordKey, Prediction] = FIFOCache(maxsize=max(1, max_entries))

    def get(self, key: RecordKey) -> Prediction | None:
        return self.data.get(key)

    def put(self, key: RecordKey, value: Prediction) -> None:
        if self.max_entries <= 0:
            return
        self.data[key] = value


def _record_error(exc: ValidationError) -> str:
    return "; ".join(
        (f"{e['loc'][0]}: " if e["loc"] and e["loc"][0] == LANGUAGE else "")
        + str(e["msg"]).removeprefix("Value error, ")
        for e in exc.errors()
    )


def code_rows(
    rows: Sequence[InputRow], predictor: Any, options: PredictOptions, memo: Memo
) -> list[Prediction | str]:
    """A Prediction or a row error for each row, in order; each distinct (title, duties, industry, language)
    goes to the model once (and not at all when the memo knows it). An industry alone does not make a row
    codable."""
    outcomes: list[Prediction | str | None] = [None] * len(rows)
    todo: dict[RecordKey, list[int]] = {}
    records: list[JobRecord] = []
    for i, row in enumerate(rows):
        if row.error:
            outcomes[i] = row.error
            continue
        title = str(row.record.get("job_title") or "")
        duties = str(row.record.get("duties_description") or "")
        if not title.strip() and not duties.strip():
            outcomes[i] = EMPTY_RECORD
            continue
        industry = str(row.record.get("industry") or "")
        language = str(row.record.get("language") or "")
        key = (title, duties, industry, language)
        known = memo.get(key)
        if known is not None:
            outcomes[i] = known
            continue
        if key in todo:
            todo[key].append(i)
            continue
        try:
            records.append(
                JobRecord(job_title=title, duties_description=duties, industry=industry, language=language)
            )
        except ValidationError as exc:  # e.g. a text over the length limit, an unknown language hint
            outcomes[i] = _record_error(exc)
            continue
        todo[key] = [i]
    if todo:
        keys = list(todo)
        for key, prediction in zip(keys, predictor.predict(records, options), strict=True):
            memo.put(key, prediction)
            for i in todo[key]:
                outcomes[i] = prediction
    return [o if o is not None else NO_RESULT for o in outcomes]
