"""Preprocessing: coded records -> cleaned, validated, de-duplicated, checked and split training data.

    rows = read_coded_csv(path) + rows_from_corpus(build_default_corpus(settings))   # records.py
    prepared = prepare(rows, PreprocessConfig())
    prepared.write_reports(run_dir)

Steps (each reported, nothing dropped silently):
1. clean text (`shared.text`), build the one model input per record, validate and normalise the code against
   ISCO-08; invalid rows go to `invalid_rows.csv` with the reason, codes repaired to be valid (`110` read as
   `0110`) to `repaired_codes.csv` with what was done;
2. de-duplicate on the model input; when one text carries several codes the record from the most trusted
   source wins (correction > user > corpus), then the majority; the losers go to `conflicts.csv`;
3. DBSCAN outlier checks (outliers.py), reported in `outliers.csv`, excluded only when configured;
4. split train/validation/test, stratified by unit group and grouped by occupation (splits.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.trainer.config import PreprocessConfig
from services.trainer.outliers import detect_outliers
from services.trainer.records import Example, RawRow
from services.trainer.splits import drop_seen_duties, split
from shared.corpus import MULTILINGUAL_EVAL_SOURCE
from shared.corpus_multilingual import CORPUS_LANGUAGES
from shared.language import identify, record_text
from shared.taxonomy import InvalidCode, Taxonomy, get_taxonomy
from shared.text import clean_text, model_input

log = logging.getLogger(__name__)


# Higher wins when one text carries different codes. A coding index entry is a coder's decision for exactly
# that text as a survey answer, where an ESCO label names an occupation that may be coded elsewhere when
# written alone: the ONS index wins over ESCO and ISCO-08 texts, the user's own records over both.
# Labels that never train (`PreprocessConfig.eval_only_sources`) lose every conflict.
SOURCE_PRIORITY = {
    "correction": 4, "user": 3, "ons_title": 2, "ons_industry": 2, MULTILINGUAL_EVAL_SOURCE: 0,
}  # fmt: skip
DEFAULT_PRIORITY = 1  # other default corpus sources (esco_title, isco_task, ...)


@dataclass
class InvalidRow:
    origin: str
    source: str
    job_title: str
    duties_description: str
    isco_code: str
    reason: str


@dataclass
class PreparedData:
    """The output of `prepare`: splits, findings and hashes."""

    train: list[Example]
    val: list[Example]
    test: list[Example]
    invalid: list[InvalidRow] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    outliers: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    repaired: list[dict[str, str]] = field(default_factory=list)  # codes changed to be valid, and how

    @property
    def data_hash(self) -> str:
        """Hash of all training data (every split), independent of order."""
        return examples_hash([*self.train, *self.val, *self.test])

    @property
    def eval_data_hash(self) -> str:
        """Hash of the test split: models are only compared on equal hashes."""
        return examples_hash(self.test)

    def summary(self, report_dir: Path) -> list[str]:
        """What `isco train` prints of the preprocessing: the counts, then each repaired code beside its row
        (as invalid rows are reported by count and file, a repair is also shown: the row was kept as read
        otherwise)."""
        stats = self.stats
        lines = [
            f"{stats['examples']:,} examples (train {stats['train']:,} / val {stats['val']:,} / test "
            f"{stats['test']:,}); {stats['invalid_rows']:,} invalid rows, {stats['codes_repaired']:,} codes "
            f"repaired, {stats['duplicates_removed']:,} duplicates, {stats['conflicting_labels_dropped']:,} "
            f"conflicting labels, outliers {stats['outliers_found']} -> reports in {report_dir}"
        ]
        return lines + repair_lines(self.repaired)

    def write_reports(self, out_dir: Path) -> dict[str, Path]:
        """Write invalid_rows.csv, repaired_codes.csv, conflicts.csv, outliers.csv and preprocess.json;
        returns their paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            "repaired_codes": _write_csv(
                out_dir / "repaired_codes.csv",
                self.repaired,
                ["origin", "source", "isco_code", "code", "repair"],
            ),
            "invalid_rows": _write_csv(
                out_dir / "invalid_rows.csv",
                [asdict(r) for r in self.invalid],
                list(InvalidRow.__dataclass_fields__),
            ),
            "conflicts": _write_csv(
                out_dir / "conflicts.csv",
                self.conflicts,
                [
                    "text",
                    "kept_code",
                    "kept_source",
                    "dropped_code",
                    "dropped_source",
                    "dropped_count",
                    "dropped_origin",
                ],
            ),
            "outliers": _write_csv(
                out_dir / "outliers.csv",
                self.outliers,
                [
                    "kind",
                    "code",
                    "text",
                    "source",
                    "origin",
                    "majority_code",
                    "majority_share",
                    "cluster_size",
                    "excluded",
                ],
            ),
        }
        summary = {**self.stats, "data_hash": self.data_hash, "eval_data_hash": self.eval_data_hash}
        paths["summary"] = out_dir / "preprocess.json"
        paths["summary"].write_text(json.dumps(summary, indent=1, sort_keys=True))
        return paths


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def repair_lines(repaired: Sequence[dict[str, str]], limit: int = 10) -> list[str]:
    """One line per repaired code (`origin: what was done`), at most `limit`, then how many more."""
    lines = [f"  {r['origin']}: isco_code {r['repair']}" for r in repaired[:limit]]
    if len(repaired) > limit:
        lines.append(f"  ... and {len(repaired) - limit:,} more (repaired_codes.csv)")
    return lines


def examples_hash(examples: Iterable[Example]) -> str:
    """sha256 over the sorted (model input, code) pairs."""
    h = hashlib.sha256()
    for text, code in sorted((e.text, e.code) for e in examples):
        h.update(f"{text}\t{code}\n".encode())
    return h.hexdigest()


def validate(
    rows: Iterable[RawRow],
    taxonomy: Taxonomy | None = None,
    repaired: list[dict[str, str]] | None = None,
) -> tuple[list[Example], list[InvalidRow]]:
    """Clean texts and normalise codes; rows that cannot be used are returned with the reason. Every code
    that had to be repaired (`8331.00`, `110`, an ESCO code) is appended to `repaired` with what was done."""
    taxonomy = taxonomy or get_taxonomy()
    valid: list[Example] = []
    invalid: list[InvalidRow] = []
    for row in rows:
        title, duties = clean_text(row.job_title), clean_text(row.duties_description)
        reason = None
        code = ""
        if not title and not duties:
            reason = "job_title and duties_description are both empty"
        else:
            try:
                normalised = taxonomy.normalise_code(row.isco_code)
                code = normalised.code
                if normalised.repair and repaired is not None:
                    repaired.append(
                        {
                            "origin": row.origin,
                            "source": row.source,
                            "isco_code": str(row.isco_code),
                            "code": code,
                            "repair": normalised.repair,
                        }
                    )
            except InvalidCode as exc:
                reason = f"isco_code: {exc}"
        language = row.language.strip().lower()
        if not reason and language and language not in CORPUS_LANGUAGES:
            reason = f"language: {row.language!r} is not one of {', '.join(CORPUS_LANGUAGES)} (ISO 639-1)"
        elif not reason and not language:
            language = _identified_language(title, duties, row.industry)
        if reason:
            invalid.append(
                InvalidRow(
                    row.origin, row.source, row.job_title, row.duties_description, str(row.isco_code), reason
                )
            )
            continue
        industry = clean_text(row.industry)
        valid.append(
            Example(
                model_input(title, duties, industry),
                code,
                row.source,
                title,
                duties,
                row.origin,
                industry,
                language,
                row.group,
            )
        )
    return valid, invalid


def _identified_language(title: str, duties: str, industry: str) -> str:
    """A row's language when it gives none: identified from its text (shared/language.py) when sure and one of
    the corpus languages, else "" (unknown)."""
    found = identify(record_text(title, duties, industry)).language
    return found if found in CORPUS_LANGUAGES else ""


def _priority(source: str) -> int:
    return SOURCE_PRIORITY.get(source, DEFAULT_PRIORITY)


def deduplicate(
    examples: Sequence[Example], *, resolve_conflicts: bool = True
) -> tuple[list[Example], int, list[dict[str, Any]]]:
    """One example per model input (per input and code without `resolve_conflicts`).

    Returns (kept, number of exact duplicates removed, conflicts). Of several codes for one text the most
    trusted source wins, then the most frequent code, then the first seen.
    """
    by_text: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_text[e.text].append(e)
    kept: list[Example] = []
    duplicates = 0
    conflicts: list[dict[str, Any]] = []
    for text, group in by_text.items():
        per_code: dict[str, list[Example]] = {}
        for e in group:
            per_code.setdefault(e.code, []).append(e)
        duplicates += len(group) - len(per_code)
        if len(per_code) == 1 or not resolve_conflicts:
            # of one text with one code the first record stays, unless it never trains and another may
            kept.extend(max(items, key=lambda e: min(_priority(e.source), 1)) for items in per_code.values())
            continue
        order = list(per_code)
        winner = max(
            order,
            key=lambda c: (max(_priority(e.source) for e in per_code[c]), len(per_code[c]), -order.index(c)),
        )
        best = max(per_code[winner], key=lambda e: _priority(e.source))
        kept.append(best)
        for code, items in per_code.items():
            if code != winner:
                conflicts.append(
                    {
                        "text": text,
                        "kept_code": winner,
                        "kept_source": best.source,
                        "dropped_code": code,
                        "dropped_source": items[0].source,
                        "dropped_count": len(items),
                        "dropped_origin": items[0].origin,
                    }
                )
    return kept, duplicates, conflicts


def prepare(rows: Iterable[RawRow], config: PreprocessConfig | None = None) -> PreparedData:
    """Run every step (see module docstring) and collect the findings."""
    config = config or PreprocessConfig()
    rows = list(rows)
    repaired: list[dict[str, str]] = []
    valid, invalid = validate(rows, repaired=repaired)
    kept, duplicates, conflicts = deduplicate(valid, resolve_conflicts=config.resolve_conflicts)
    findings = detect_outliers(kept, config.outliers)
    exclude_kinds = {
        "none": set(),
        "inconsistent": {"inconsistent_label"},
        "all": {"inconsistent_label", "class_outlier"},
    }[config.outliers.exclude]
    excluded = {f["index"] for f in findings if f["kind"] in exclude_kinds}
    outliers = []
    for f in findings:
        e = kept[f.pop("index")]
        outliers.append(
            {
                **f,
                "code": e.code,
                "text": e.text,
                "source": e.source,
                "origin": e.origin,
                "excluded": f["kind"] in exclude_kinds,
            }
        )
    usable = [e for i, e in enumerate(kept) if i not in excluded]
    train, val, test = split(usable, config)
    val, val_dropped = drop_seen_duties(train, val)
    test, test_dropped = drop_seen_duties(train, test)
    stats = {
        "rows_read": len(rows),
        "rows_read_per_source": dict(Counter(r.source for r in rows)),
        "invalid_rows": len(invalid),
        "codes_repaired": len(repaired),
        "duplicates_removed": duplicates,
        "conflicting_labels_dropped": len(conflicts) if config.resolve_conflicts else 0,
        "outliers_found": dict(Counter(o["kind"] for o in outliers)),
        "outliers_excluded": len(excluded),
        "examples": len(usable),
        "train": len(train),
        "val": len(val),
        "test": len(test),
        "held_out_duties_seen_in_training_dropped": {"val": val_dropped, "test": test_dropped},
        "unit_groups_in_train": len({e.code for e in train}),
        "unit_groups_in_test": len({e.code for e in test}),
        "config": config.model_dump(),
    }
    log.debug(
        "preprocessed %d rows: %d invalid, %d duplicates, %d conflicts, %d outliers (%d excluded); "
        "train %d / val %d / test %d",
        len(rows),
        len(invalid),
        duplicates,
        len(conflicts),
        len(outliers),
        len(excluded),
        len(train),
        len(val),
        len(test),
    )
    return PreparedData(train, val, test, invalid, conflicts, outliers, stats, repaired)
