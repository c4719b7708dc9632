"""A job at a glance: how its rows stand (auto-coded, to review, settled by a coder, failed), the codes by
ISCO-08 major group, and the model's confidence as a histogram, for the job's page (the charts:
services/gateway/review/templates/job_summary.html).

The result file is read once into a `ResultProfile` (a byte or two per row, kept by the gateway per result
file); each view adds the job's current decisions to it (`summarise`), so a decision shows at once without a
second read of the file. The statuses are those of the reviewed result's `final_status` column
(`shared.review.exports.final_status`), so the page and the download always agree.

Which code a row counts under in the major-group chart: its `final_code` where it has one (auto-coded rows:
the model's code; settled rows: the coder's), and the model's first unit group for rows still to review (what
the model makes of the file so far); uncodable and failed rows have none. The histogram is the model's
calibrated confidence in its first unit group (the first of `top_confidences`), in tenths; it does not change
with review.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.db.tables import ReviewDecision
from shared.review.exports import FinalStatus
from shared.review.results import ResultRow
from shared.taxonomy import Taxonomy, get_taxonomy

CONFIDENCE_BINS = 10
MAJOR_GROUPS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0")  # ISCO-08's order: armed forces last
SETTLED = (FinalStatus.reviewed, FinalStatus.changed, FinalStatus.uncodable)

# a row in the profile: its route (what the result says before any review) and its code's major group
_ABSENT, _AUTO, _QUEUE, _FAILED = 0, 1, 2, 3
_NO_MAJOR = 10  # no code (a failed row, an auto-coded row without a code)


@dataclass(frozen=True)
class ResultProfile:
    """What a job's result says of each row, compactly: route and major group by row number (index)."""

    routes: bytes  # _AUTO, _QUEUE or _FAILED at index `number` (_ABSENT where the file has no such row)
    majors: bytes  # 0-9: the major group of the row's code before review (_NO_MAJOR: none)
    confidence_bins: tuple[int, ...]  # rows by the model's confidence in its first answer, in tenths
    no_confidence: int  # rows without one (failed rows)

    @property
    def total_rows(self) -> int:
        return len(self.routes) - self.routes.count(_ABSENT)


def confidence_bin(confidence: float) -> int:
    """The histogram bin of a confidence: [0, 0.1) -> 0 ... [0.9, 1] -> 9."""
    return min(max(int(confidence * CONFIDENCE_BINS), 0), CONFIDENCE_BINS - 1)


def _major(code: str) -> int:
    return int(code[0]) if code[:1].isdigit() else _NO_MAJOR


def profile_rows(rows: Iterable[ResultRow]) -> ResultProfile:
    """One pass over a job's result rows (`shared.review.results.iter_result_rows`)."""
    routes, majors = bytearray([_ABSENT]), bytearray([_NO_MAJOR])  # index 0: no row 0
    bins = [0] * CONFIDENCE_BINS
    no_confidence = 0
    for row in rows:
        if row.number >= len(routes):
            grow = row.number + 1 - len(routes)
            routes.extend(bytes(grow))
            majors.extend(bytes([_NO_MAJOR]) * grow)
        if row.row_error:
            routes[row.number], majors[row.number] = _FAILED, _NO_MAJOR
        elif row.in_queue:
            routes[row.number], majors[row.number] = _QUEUE, _major(row.unit_code)
        else:
            routes[row.number], majors[row.number] = _AUTO, _major(row.isco_code)
        first = row.candidates[0].confidence if row.candidates else None
        if first is None:
            no_confidence += 1
        else:
            bins[confidence_bin(first)] += 1
    return ResultProfile(bytes(routes), bytes(majors), tuple(bins), no_confidence)


@dataclass(frozen=True)
class MajorGroupCount:
    code: str  # "1" ... "9", "0"
    title: str
    rows: int


@dataclass(frozen=True)
class JobSummary:
    """A job's rows by status, by major group of their code, and by the model's confidence."""

    total_rows: int
    statuses: dict[FinalStatus, int]  # every FinalStatus, as the reviewed result's final_status counts it
    majors: list[MajorGroupCount]  # in MAJOR_GROUPS order, zeros included
    no_code: int  # rows counted under no major group (uncodable, failed)
    confidence_bins: tuple[int, ...]
    no_confidence: int

    @property
    def auto_coded(self) -> int:
        return self.statuses[FinalStatus.auto_coded]

    @property
    def to_review(self) -> int:
        return self.statuses[FinalStatus.pending]

    @property
    def settled(self) -> int:
        return sum(self.statuses[s] for s in SETTLED)

    @property
    def failed(self) -> int:
        return self.statuses[FinalStatus.failed]

    def share(self, rows: int) -> float:
        """`rows` as a share of the job's rows (0 for an empty job)."""
        return rows / self.total_rows if self.total_rows else 0.0


def _decided(decision: ReviewDecision) -> FinalStatus:
    """As `shared.review.exports.final_status` reads a decided row."""
    if decision.final_code is None:
        return FinalStatus.uncodable
    return FinalStatus.reviewed if decision.final_code == decision.model_code else FinalStatus.changed


def summarise(
    profile: ResultProfile, decisions: Mapping[int, ReviewDecision], taxonomy: Taxonomy | None = None
) -> JobSummary:
    """The profile with the job's current decisions applied (a decided row counts as the coder left it)."""
    taxonomy = taxonomy or get_taxonomy()
    routes, majors = profile.routes, profile.majors
    statuses = dict.fromkeys(FinalStatus, 0)
    statuses[FinalStatus.auto_coded] = routes.count(_AUTO)
    statuses[FinalStatus.pending] = routes.count(_QUEUE)
    statuses[FinalStatus.failed] = routes.count(_FAILED)
    by_major = [0] * (_NO_MAJOR + 1)
    for value in range(_NO_MAJOR + 1):
        by_major[value] = majors.count(value)
    by_major[_NO_MAJOR] -= routes.count(_ABSENT)  # absent rows hold _NO_MAJOR too
    for number, decision in decisions.items():
        route = routes[number] if 0 < number < len(routes) else _ABSENT
        if route in (_ABSENT, _FAILED):  # a failed row takes no decision; an unknown row is no row of the job
            continue
        statuses[FinalStatus.auto_coded if route == _AUTO else FinalStatus.pending] -= 1
        statuses[_decided(decision)] += 1
        by_major[majors[number]] -= 1
        by_major[_major(decision.final_code or "")] += 1
    return JobSummary(
        total_rows=profile.total_rows,
        statuses=statuses,
        majors=[MajorGroupCount(code, taxonomy.title(code), by_major[int(code)]) for code in MAJOR_GROUPS],
        no_code=by_major[_NO_MAJOR],
        confidence_bins=profile.confidence_bins,
        no_confidence=profile.no_confidence,
    )
