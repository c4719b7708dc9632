"""ISCO-08: the 619 groups (10 major, 43 sub-major, 130 minor, 436 unit groups) and code validation.

Codes are strings with leading zeros (armed forces: 0110, 0210, 0310). The table ships with the package
(`shared/data/isco08_groups.csv`, titles only), so every service has titles and hierarchy offline.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

GROUPS_CSV = Path(__file__).parent / "data" / "isco08_groups.csv"
LEVEL_NAMES = {1: "major", 2: "sub-major", 3: "minor", 4: "unit"}
_FLOAT_FORM = re.compile(r"\d+\.0+")  # 8331.0, 8331.00: a code that went through a spreadsheet as a number
_ESCO_FORM = re.compile(r"\d{4}(\.\d+)+")  # 7412.12, 2654.1.7: ESCO occupation codes under a unit group


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
        """The canonical code for a user-supplied value, or InvalidCode with the reason (`normalise_code`
        without the repair note)."""
        return self.normalise_code(raw, unit_only=unit_only).code

    def normalise_code(self, raw: object, *, unit_only: bool = True) -> NormalisedCode:
        """The canonical code for a user-supplied value and, when the value had to be repaired, what was done.

        One rule for every reader (training, corrections, evaluation): surrounding spaces go; a spreadsheet
        float (`8331.0`, `8331.00`) is its integer; an ESCO occupation code (`7412.12`, `2654.1.7`) is its
        ISCO-08 unit group (the first four digits); an armed-forces code that lost its leading zero (`110`)
        gets it back. Every change except stripping spaces is reported in `repair`. With unit_only, only
        4-digit unit groups are accepted. Raises InvalidCode saying what is wrong with the value.
        """
        original = "" if raw is None else str(raw).strip()
        text = original
        repairs: list[str] = []
        if not text:
            raise InvalidCode("empty code")
        if _FLOAT_FORM.fullmatch(text):
            text = text.split(".", 1)[0]
            repairs.append(f"{original!r} read as {text} (a number written with decimals)")
        elif _ESCO_FORM.fullmatch(text):
            unit = text[:4]
            if unit not in self.groups or self.groups[unit].level != 4:
                raise InvalidCode(
                    f"{original!r} looks like an ESCO occupation code but {unit} is not an ISCO-08 unit group"
                )
            text = unit
            repairs.append(f"{original!r} is an ESCO occupation code: coded as its ISCO-08 unit group {unit}")
        if not text.isdigit():
            bad = sorted({c for c in text if not c.isdigit()})
            raise InvalidCode(
                f"{original!r} is not an ISCO-08 code: it contains {', '.join(repr(c) for c in bad)} "
                "(expected digits only, e.g. 2221)"
            )
        if text not in self.groups and len(text) == 3 and ("0" + text) in self.groups:
            # armed forces unit groups lose their leading zero in spreadsheets
            repairs.append(f"{text!r} read as 0{text} (leading zero restored)")
            text = "0" + text
        if text not in self.groups:
            raise InvalidCode(f"{text!r} is not an ISCO-08 code (no group has this number)")
        level = self.groups[text].level
        if unit_only and level != 4:
            raise InvalidCode(
                f"{text!r} is a {LEVEL_NAMES[level]} group ({level} digits); a 4-digit unit group is required"
            )
        return NormalisedCode(text, "; ".join(repairs) or None)


@dataclass(frozen=True)
class NormalisedCode:
    """A canonical ISCO-08 code and, when the input had to be changed to get it, a line for the report."""

    code: str
    repair: str | None = None


@lru_cache(maxsize=1)
def get_taxonomy() -> Taxonomy:
    """The process-wide ISCO-08 taxonomy."""
    return Taxonomy.from_csv()
