"""A job at a glance on the job's page: the share of rows auto-coded, to review and settled, the codes by
ISCO-08 major group and the model's confidence histogram, drawn as inline SVG by the server
(templates/job_summary.html; no script, no chart library). The counts are `shared.review.summary`'s; this
module lays out the bars.

The result is read once per result file (`PROFILES`, like the review queue in queue.py); the decisions are
applied on each view, so a decision shows at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.gateway.review.queue import QUEUES_KEPT, ResultCache
from shared.db.tables import Job, ReviewDecision
from shared.review.exports import FinalStatus
from shared.review.results import iter_result_rows
from shared.review.summary import CONFIDENCE_BINS, JobSummary, ResultProfile, profile_rows, summarise

PROFILES: ResultCache[ResultProfile] = ResultCache(
    lambda job: profile_rows(iter_result_rows(job)), QUEUES_KEPT
)

# the SVG's own units; the page scales each chart to its box (viewBox), so these are proportions
MAJOR_WIDTH, MAJOR_LABEL, MAJOR_ROW = 560, 300, 22
HIST_WIDTH, HIST_HEIGHT, HIST_BASE, HIST_LEFT = 400, 190, 160, 8
STATUS_WIDTH, STATUS_HEIGHT = 560, 26

STATUS_PARTS = (  # (status, label, CSS class of its colour)
    (FinalStatus.auto_coded, "auto-coded", "auto"),
    (FinalStatus.reviewed, "reviewed", "reviewed"),
    (FinalStatus.changed, "changed", "changed"),
    (FinalStatus.uncodable, "uncodable", "uncodable"),
    (FinalStatus.pending, "to review", "pending"),
    (FinalStatus.failed, "failed", "failed"),
)


@dataclass(frozen=True)
class Bar:
    """One bar: what it counts, its rows, and where it is drawn (SVG units)."""

    key: str  # the major group's code, the bin's index or the status
    label: str
    rows: int
    share: float
    x: float
    y: float
    width: float
    height: float
    css: str = ""


@dataclass(frozen=True)
class Glance:
    summary: JobSummary
    statuses: list[Bar]  # one stacked bar: auto-coded, reviewed, changed, uncodable, to review, failed
    majors: list[Bar]  # horizontal bars, ISCO-08 order
    confidence: list[Bar]  # vertical bars, tenths
    bin_labels: list[tuple[float, str]]  # (x, label) under the histogram: 0, 0.1 ... 1


def _share(rows: int, total: int) -> float:
    return rows / total if total else 0.0


def lay_out(summary: JobSummary) -> Glance:
    """The bars of the three charts for a summary."""
    total = summary.total_rows
    statuses, x = [], 0.0
    for status, label, css in STATUS_PARTS:
        rows = summary.statuses[status]
        width = STATUS_WIDTH * _share(rows, total)
        statuses.append(Bar(str(status), label, rows, _share(rows, total), x, 0, width, STATUS_HEIGHT, css))
        x += width

    top = max((m.rows for m in summary.majors), default=0) or 1
    room = MAJOR_WIDTH - MAJOR_LABEL - 60  # the count is written after the bar
    majors = [
        Bar(m.code, m.title, m.rows, _share(m.rows, total), MAJOR_LABEL, i * MAJOR_ROW + 3,
            room * m.rows / top, MAJOR_ROW - 6)
        for i, m in enumerate(summary.majors)
    ]  # fmt: skip

    tallest = max(summary.confidence_bins, default=0) or 1
    step = (HIST_WIDTH - 2 * HIST_LEFT) / CONFIDENCE_BINS
    confidence = []
    for i, rows in enumerate(summary.confidence_bins):
        height = (HIST_BASE - 20) * rows / tallest
        label = f"{i / CONFIDENCE_BINS:.1f}–{(i + 1) / CONFIDENCE_BINS:.1f}"
        confidence.append(
            Bar(str(i), label, rows, _share(rows, total), HIST_LEFT + i * step + 2, HIST_BASE - height,
                step - 4, height)
        )  # fmt: skip
    labels = [(HIST_LEFT + i * step, f"{i / CONFIDENCE_BINS:g}") for i in range(CONFIDENCE_BINS + 1)]
    return Glance(summary, statuses, majors, confidence, labels)


def job_glance(job: Job, decisions: Mapping[int, ReviewDecision]) -> Glance:
    """The job's charts with its current decisions (410 when the result is gone, as for the queue)."""
    return lay_out(summarise(PROFILES.get(job), decisions))
