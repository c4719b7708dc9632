"""The audit of auto-coded rows: a seeded random sample of the rows the model coded alone, which a coder may
check like the review queue, and what those checks found.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

from shared.db.tables import ReviewDecision
from shared.review.results import ResultCounts

AUDIT_SHARE = 0.05  # the audit sample's default size: this share of a job's auto-coded rows ...
AUDIT_MIN_ROWS = 20  # ... but at least this many (all of them in a smaller job)
AUDIT_MAX_ROWS = 2000  # the largest sample the page offers (the rows it keeps in memory per job)


def audit_key(job_id: str, number: int) -> int:
    """A row's place in its job's audit order: a keyed hash of the row number, seeded with the job id.

    The sample of size k is the k auto-coded rows with the smallest keys, so it is the same for every coder
    and every process, it is a uniform random sample, and a larger share only adds rows to a smaller one."""
    digest = hashlib.blake2b(number.to_bytes(8, "little"), key=job_id.encode()[:64], digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def audit_size(auto_coded: int, share: float | None = None, rows: int | None = None) -> int:
    """How many auto-coded rows to check: `rows`, else `share` of them (rounded up), else the default
    (`AUDIT_SHARE`, at least `AUDIT_MIN_ROWS`); never more than there are, nor than `AUDIT_MAX_ROWS`."""
    if rows is not None:
        wanted = rows
    elif share is not None:
        wanted = math.ceil(round(auto_coded * share, 6))  # rounded first: 100 * 0.07 is 7.000000000000001
    else:
        wanted = max(math.ceil(round(auto_coded * AUDIT_SHARE, 6)), AUDIT_MIN_ROWS)
    return max(0, min(wanted, auto_coded, AUDIT_MAX_ROWS))


@dataclass(frozen=True)
class AuditCounts:
    """Auto-coded rows a coder checked, and how many of them got another code (or none)."""

    checked: int
    changed: int


def audit_counts(decisions: Iterable[ReviewDecision], queue: ResultCounts) -> AuditCounts:
    """Decisions on rows outside the review queue are audit decisions (failed rows take none)."""
    checked = changed = 0
    for d in decisions:
        if not queue.in_queue(d.row_number):
            checked += 1
            changed += d.final_code != d.model_code
    return AuditCounts(checked, changed)
