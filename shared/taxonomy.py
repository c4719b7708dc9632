"""ISCO-08: the 619 groups (10 major, 43 sub-major, 130 minor, 436 unit groups) and code validation.

Codes are strings with leading zeros (armed forces: 0110, 0210, 0310). The table ships with the package
(`shared/data/isco08_groups.csv`, titles only), so every service has titles and hierarchy offline.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

GROUPS_CSV = Path(__file__).parent / "data" / "isco08_groups.csv"
LEVEL_NAMES = {1: "major", 2: "sub-major", 3: "minor", 4: "unit"}


class InvalidCode(ValueError):
    """A code that is not an ISCO-08 group; the message says why."""


@dataclass(frozen=True)
class IscoGroup:
    code: str
    level: int
    title: str
    parent: str | None
    children: tuple[str, ...] = field(default=())


class Taxonomy:
    """The ISCO-08 hierarchy with titles, parents and children."""

    def __init__(self, rows: list[tuple[str, int, str, str]]):
        children: dict[str, list[str]] = {}
        for code, _level, _title, parent in rows:
            if parent:
                children.setdefault(parent, []).append(code)
        self.groups: dict[str, IscoGroup] = {
            code: IscoGroup(code, level, title, parent or None, tuple(sorted(children.get(code, []))))
            for code, level, title, parent in rows
        }
        self.unit_groups: list[str] = sorted(c for c, g in self.groups.items() if g.level == 4)

    @classmethod
    def from_csv(cls, path: Path = GROUPS_CSV) -> Taxonomy:
        with path.open(encoding="utf-8") as f:
            rows = [(r["code"], int(r["level"]), r["title"], r["parent"]) for r in csv.DictReader(f)]
        return cls(rows)

    def __contains__(self, code: object) -> bool:
        return code in self.groups

    def group(self, code: str) -> IscoGroup:
        return self.groups[code]

    def title(self, code: str) -> str:
        return self.groups[code].title

    def ancestors(self, code: str) -> list[IscoGroup]:
        """The path from the major group down to `code` itself."""
        path = []
        node: str | None = code
        while node:
            g = self.groups[node]
            path.append(g)
            node = g.parent
        return path[::-1]

    def normalise(self, raw: object, *, unit_only: bool = True) -> str:
        """Return the canonical code for a user-supplied value, or raise InvalidCode with the reason.

        Accepts surrounding spaces, spreadsheet floats ("2511.0") and the armed-forces codes without their
        leading zero (110 -> 0110). With unit_only, only 4-digit unit groups are accepted.
        """
        text = "" if raw is None else str(raw).strip()
        if text.endswith(".0") and text[:-2].isdigit():
            text = text[:-2]
        if not text:
            raise InvalidCode("empty code")
        if not text.isdigit():
            raise InvalidCode(f"{text!r} is not numeric")
        if text not in self.groups and ("0" + text) in self.groups and len(text) == 3:
            text = "0" + text  # armed forces unit groups lose their leading zero in spreadsheets
        if text not in self.groups:
            raise InvalidCode(f"{text!r} is not an ISCO-08 code")
        if unit_only and self.groups[text].level != 4:
            level = self.groups[text].level
            raise InvalidCode(f"{text!r} is a {LEVEL_NAMES[level]} group; a 4-digit unit group is required")
        return text


@lru_cache(maxsize=1)
def get_taxonomy() -> Taxonomy:
    """The process-wide ISCO-08 taxonomy."""
    return Taxonomy.from_csv()
