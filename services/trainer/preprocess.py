"""Preprocessing: coded records -> cleaned, validated, de-duplicated, checked and split training data.

    rows = read_coded_csv(path) + rows_from_corpus(build_default_corpus(settings))
    prepared = prepare(rows, PreprocessConfig())
    prepared.write_reports(run_dir)

Steps (each reported, nothing dropped silently):
1. clean text (`shared.text`), build the one model input per record, validate and normalise the code against
   ISCO-08; invalid rows go to `invalid_rows.csv` with the reason;
2. de-duplicate on the model input; when one text carries several codes the record from the most trusted
   source wins (correction > user > corpus), then the majority; the losers go to `conflicts.csv`;
3. DBSCAN over TF-IDF vectors: dense clusters of near-identical texts whose labels disagree with a clear
   majority ("inconsistent_label"), and records far from every other record of their own unit group
   ("class_outlier"); reported in `outliers.csv`, excluded only when configured;
4. split train/validation/test, stratified by unit group and grouped by occupation: records of one ESCO
   occupation (any of its titles, with or without duties) or, outside ESCO, of one job title stay together,
   so validation and test hold titles the model has never seen, like the titles users send (choose early
   stopping, weights, temperature and routing thresholds there). In each unit group the occupations are
   ordered by a seeded hash of their key and the first ones go to test and validation, so a record keeps its
   split when other records are added (re-trained and corrected models are evaluated on the same records).
   Unit groups smaller than `min_group_size_to_split` and train-only sources (corrections) go to train.
   `group_by: record` restores the per-record split. With `val_known_titles`, validation also gets a share of
   the ESCO titles whose occupation keeps other titles in training (the title alone, `_known_titles`): users
   send new titles of known occupations as well as new occupations, and what is chosen on validation (the
   temperature, the reranker, the routing thresholds) should see both. Test stays occupations only.
   Validation and test records whose duties also train, word for word, are dropped (`drop_seen_duties`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.taxonomy import InvalidCode, Taxonomy, get_taxonomy
from shared.text import clean_text, model_input

log = logging.getLogger(__name__)

# Higher wins when one text carries different codes. A coding index entry is a coder's decision for exactly
# that text as a survey answer, where an ESCO label names an occupation that may be coded elsewhere when
# written alone: the ONS index wins over ESCO and ISCO-08 texts, the user's own records over both.
SOURCE_PRIORITY = {"correction": 4, "user": 3, "ons_title": 2, "ons_industry": 2}
DEFAULT_PRIORITY = 1  # other default corpus sources (esco_title, isco_task, ...)
CORRECTION_SOURCE = "correction"
USER_SOURCE = "user"


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the field and the reason."""


class OutlierConfig(BaseModel):
    """DBSCAN checks over TF-IDF vectors (cosine distance)."""

    enabled: bool = True
    duplicate_eps: float = Field(
        0.3, gt=0, lt=1, description="cosine distance within a near-duplicate cluster"
    )
    min_samples: int = Field(3, ge=2, description="DBSCAN min_samples for both checks")
    majority: float = Field(
        0.75, gt=0.5, le=1, description="label share that makes the rest of a cluster suspect"
    )
    class_eps: float = Field(0.9, gt=0, lt=1, description="cosine distance to a same-group neighbour")
    min_group_examples: int = Field(
        30, ge=3, description="groups smaller than this are not checked for outliers"
    )
    exclude: Literal["none", "inconsistent", "all"] = Field(
        "none", description="drop inconsistent labels, or every finding, from training; default: report only"
    )
    max_records: int = Field(250_000, ge=1, description="above this the near-duplicate check is skipped")


class PreprocessConfig(BaseModel):
    """How coded records become training data."""

    val_fraction: float = Field(0.1, ge=0, lt=0.5)
    test_fraction: float = Field(0.1, ge=0, lt=0.5)
    min_group_size_to_split: int = Field(3, ge=1, description="smaller unit groups go wholly to train")
    group_by: Literal["occupation", "record"] = Field(
        "occupation", description="keep an occupation's (or a title's) records in one split, or split records"
    )
    val_known_titles: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="share of the training records moved to validation as ESCO titles alone (their records "
        "with duties dropped): new titles of occupations the model knows, which users send as often as new "
        "occupations",
    )
    seed: int = 13
    resolve_conflicts: bool = Field(True, description="keep one code per text (see module docstring)")
    # the official unit-group title and definition describe the label itself: every model learns them
    train_only_sources: list[str] = Field(
        default_factory=lambda: [CORRECTION_SOURCE, "isco_title", "isco_definition"]
    )
    outliers: OutlierConfig = Field(default_factory=OutlierConfig)


@dataclass
class RawRow:
    """A coded record as read, before validation; `origin` says where it came from (file:line or corpus)."""

    job_title: str
    duties_description: str
    isco_code: str
    source: str
    origin: str
    industry: str = ""


@dataclass
class Example:
    """A validated training example."""

    text: str
    code: str
    source: str
    job_title: str
    duties_description: str
    origin: str
    industry: str = ""


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


def examples_hash(examples: Iterable[Example]) -> str:
    """sha256 over the sorted (model input, code) pairs."""
    h = hashlib.sha256()
    for text, code in sorted((e.text, e.code) for e in examples):
        h.update(f"{text}\t{code}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def _open_csv(
    path: Path, any_of: tuple[str, ...] = ("job_title", "duties_description")
) -> tuple[list[str], Iterable[tuple[int, dict[str, str]]]]:
    """Header (normalised names) and (line, row) pairs, read by the uploads' reader (`shared.csvio`): same
    encodings, delimiters, header spellings and errors."""
    from shared.csvio.reading import CsvFormatError, read_table

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return read_table(path, any_of=any_of)
    except CsvFormatError as exc:
        raise DataError(f"{path}: {exc}") from None


def read_coded_csv(path: Path, *, source: str = USER_SOURCE) -> list[RawRow]:
    """Read a coded CSV: job_title, duties_description, isco_code (either text column may be absent), and
    optionally industry (the employer's activity, read beside the title).

    Header names are matched ignoring case and spaces. Raises DataError naming the missing field.
    """
    path = Path(path)
    header, rows = _open_csv(path)
    if "isco_code" not in header:
        raise DataError(f"{path}: missing column isco_code (columns found: {', '.join(header)})")
    if "job_title" not in header and "duties_description" not in header:
        raise DataError(
            f"{path}: needs a job_title and/or duties_description column (found: {', '.join(header)})"
        )
    return [
        RawRow(
            row.get("job_title", ""),
            row.get("duties_description", ""),
            row.get("isco_code", ""),
            source,
            f"{path.name}:{line}",
            row.get("industry", ""),
        )
        for line, row in rows
    ]


def read_corrections(path: Path) -> list[RawRow]:
    """Read corrections from a CSV file or every *.csv in a directory.

    Accepted layouts: job_title, duties_description, corrected_isco_code (and optionally industry); or text,
    corrected_isco_code.
    """
    path = Path(path)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .csv files with corrections found")
    out: list[RawRow] = []
    for file in files:
        header, rows = _open_csv(file, ("job_title", "duties_description", "text"))
        if "corrected_isco_code" not in header:
            raise DataError(
                f"{file}: missing column corrected_isco_code (columns found: {', '.join(header)})"
            )
        has_fields = "job_title" in header or "duties_description" in header
        if not has_fields and "text" not in header:
            raise DataError(
                f"{file}: needs job_title/duties_description or text columns (found: {', '.join(header)})"
            )
        for line, row in rows:
            if has_fields:
                title, duties = row.get("job_title", ""), row.get("duties_description", "")
            else:
                title, duties = row.get("text", ""), ""
            out.append(
                RawRow(
                    title,
                    duties,
                    row.get("corrected_isco_code", ""),
                    CORRECTION_SOURCE,
                    f"{file.name}:{line}",
                    row.get("industry", "") if has_fields else "",
                )
            )
    return out


def rows_from_corpus(records: Iterable[Any]) -> list[RawRow]:
    """RawRows from `shared.corpus.CodedRecord`s (or anything with the same four fields)."""
    return [
        RawRow(
            r.job_title,
            r.duties_description,
            r.isco_code,
            r.source,
            f"corpus:{r.source}",
            getattr(r, "industry", ""),
        )
        for r in records
    ]


# ----------------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------------


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
                model_input(title, duties, industry), code, row.source, title, duties, row.origin, industry
            )
        )
    return valid, invalid


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
            kept.extend(items[0] for items in per_code.values())
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


def _radius_graph(vectors: Any, eps: float, block: int = 2000) -> Any:
    """Sparse cosine-distance graph keeping pairs closer than `eps` (rows of `vectors` are L2-normalised).

    Blockwise sparse products instead of DBSCAN's own cosine neighbour search: the same clusters, several
    times faster and without dense intermediate matrices.
    """
    import numpy as np
    import scipy.sparse as sp

    transposed = vectors.T.tocsr()
    blocks = []
    for start in range(0, vectors.shape[0], block):
        sims = vectors[start : start + block] @ transposed
        sims.data[sims.data < 1 - eps] = 0
        sims.eliminate_zeros()
        blocks.append(sims)
    graph = sp.vstack(blocks).tocsr()
    # distance = 1 - similarity; a tiny floor keeps identical texts as stored (non-missing) neighbours
    graph.data = np.clip(1 - graph.data, 1e-9, None)
    return graph


def _dbscan(vectors: Any, eps: float, min_samples: int) -> Any:
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(
        _radius_graph(vectors, eps)
    )


def detect_outliers(examples: Sequence[Example], config: OutlierConfig) -> list[dict[str, Any]]:
    """DBSCAN findings (see module docstring); each finding names the example by index (`index`)."""
    if not config.enabled or len(examples) < config.min_samples:
        return []
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [e.text for e in examples]
    vectors = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts).astype(np.float32)
    findings: list[dict[str, Any]] = []

    if len(examples) <= config.max_records:
        labels = _dbscan(vectors, config.duplicate_eps, config.min_samples)
        clusters: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            if label >= 0:
                clusters[label].append(i)
        for members in clusters.values():
            counts = Counter(examples[i].code for i in members)
            if len(counts) < 2:
                continue
            majority_code, n_major = counts.most_common(1)[0]
            share = n_major / len(members)
            if share < config.majority:
                continue
            for i in members:
                if examples[i].code != majority_code:
                    findings.append(
                        {
                            "index": i,
                            "kind": "inconsistent_label",
                            "majority_code": majority_code,
                            "majority_share": round(share, 3),
                            "cluster_size": len(members),
                        }
                    )
    else:
        log.warning(
            "near-duplicate check skipped: %d records > outliers.max_records=%d",
            len(examples),
            config.max_records,
        )

    by_code: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_code[e.code].append(i)
    for code, members in by_code.items():
        if len(members) < config.min_group_examples:
            continue
        labels = _dbscan(vectors[members], config.class_eps, config.min_samples)
        for i, label in zip(members, labels, strict=True):
            if label < 0:
                findings.append(
                    {
                        "index": i,
                        "kind": "class_outlier",
                        "majority_code": code,
                        "majority_share": None,
                        "cluster_size": len(members),
                    }
                )
    return findings


def _split_key(seed: int, text: str) -> str:
    return hashlib.sha1(f"{seed}:{text}".encode()).hexdigest()


def _occupation_keys() -> dict[str, str]:
    """Lower-cased ESCO title -> its occupation URI (the first occupation that has it)."""
    from shared.corpus import load_esco_facts

    keys: dict[str, str] = {}
    for uri, _, labels in load_esco_facts():
        for label in labels:
            keys.setdefault(label.strip().lower(), uri)
    return keys


_QUALIFIER = re.compile(r"\s*\([^()]*\)$")


def split_group(example: Example, occupations: dict[str, str]) -> str:
    """The unit of the split: the ESCO occupation of the title, else the title, else the text.

    The title is read without a trailing qualifier in parentheses and without its industry: a coding
    index's "inspector (railways)" and "inspector" in banking are one title, held out together, so a held-out
    title is one the model never saw in any context (as the dev sets' titles are). A title that is also an
    ESCO label goes with that ESCO occupation."""
    title = example.job_title.strip().lower()
    if not title:
        return f"text:{example.text}"
    base = _QUALIFIER.sub("", title) or title
    return occupations.get(title, occupations.get(base, f"title:{base}"))


def split(
    examples: Sequence[Example], config: PreprocessConfig
) -> tuple[list[Example], list[Example], list[Example]]:
    """Stratified, hash-ordered train/validation/test split, grouped by occupation (see module docstring)."""
    train: list[Example] = []
    val: list[Example] = []
    test: list[Example] = []
    by_code: dict[str, list[Example]] = defaultdict(list)
    train_only = set(config.train_only_sources)
    for e in examples:
        if e.source in train_only:
            train.append(e)
        else:
            by_code[e.code].append(e)
    occupations = _occupation_keys() if config.group_by == "occupation" else {}
    for code in sorted(by_code):
        members: dict[str, list[Example]] = defaultdict(list)
        for e in by_code[code]:
            key = split_group(e, occupations) if config.group_by == "occupation" else e.text
            members[key].append(e)
        groups = [members[k] for k in sorted(members, key=lambda k: _split_key(config.seed, k))]
        n = len(by_code[code])
        if n < config.min_group_size_to_split or len(groups) < 2:
            train.extend(by_code[code])
            continue
        n_test = max(1, round(n * config.test_fraction)) if config.test_fraction > 0 else 0
        n_val = max(1, round(n * config.val_fraction)) if config.val_fraction > 0 else 0
        while n_test + n_val > n - 1:  # keep at least one training example of every group
            if n_val >= n_test and n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        taken_test = taken_val = 0
        for i, group in enumerate(groups):
            last = i == len(groups) - 1  # the last occupation always trains
            # an occupation larger than twice what a split still needs trains instead of swamping that split
            if not last and taken_test < n_test and len(group) <= 2 * (n_test - taken_test) + 1:
                test.extend(group)
                taken_test += len(group)
            elif not last and taken_val < n_val and len(group) <= 2 * (n_val - taken_val) + 1:
                val.extend(group)
                taken_val += len(group)
            else:
                train.extend(group)
    if config.val_known_titles > 0 and occupations:
        train, known = _known_titles(train, occupations, train_only, config)
        val.extend(known)
    return train, val, test


def _known_titles(
    train: list[Example], occupations: dict[str, str], train_only: set[str], config: PreprocessConfig
) -> tuple[list[Example], list[Example]]:
    """Move `val_known_titles` of the ESCO titles in training (chosen by a seeded hash) to validation, where
    the title's occupation keeps another title in training. Only the title alone goes to validation; its
    records with duties are dropped: their duties (the occupation's description) stay in training under the
    occupation's other titles, so validation would see them nearly verbatim and over-trust duties."""
    titles: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(train):
        title = e.job_title.strip().lower()
        if e.source not in train_only and title in occupations:
            titles[title].append(i)
    kept_titles = Counter(occupations[t] for t in titles)
    moved: set[int] = set()
    for title in sorted(titles, key=lambda t: _split_key(config.seed, f"known:{t}")):
        if len(moved) >= config.val_known_titles * len(train):
            break
        if kept_titles[occupations[title]] > 1:
            kept_titles[occupations[title]] -= 1
            moved.update(titles[title])
    known = [train[i] for i in sorted(moved) if not train[i].duties_description.strip()]
    return [e for i, e in enumerate(train) if i not in moved], known


def drop_seen_duties(train: list[Example], held_out: list[Example]) -> tuple[list[Example], int]:
    """The held-out records, less those whose duties are also a training record's duties (and how many).

    The split keeps an occupation's records together, but one text of duties can belong to several: an ISCO
    task line is paired with two titles of its unit group (`shared.corpus`), which may fall in different
    splits. Held out, such a record's duties alone give its code away (44% of the full profile's
    validation records with duties), so what is chosen on validation (the duties view's weight, the
    temperature, the routing thresholds) would over-trust duties, which users write in their own words."""
    trained = {e.duties_description.strip().lower() for e in train if e.duties_description.strip()}
    kept = [e for e in held_out if e.duties_description.strip().lower() not in trained]
    return kept, len(held_out) - len(kept)


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
