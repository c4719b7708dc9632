"""Evaluation: coded records read as an evaluation set, scored by a loaded Predictor (metrics: metrics.py).

An evaluation CSV holds job_title, duties_description, isco_code and optionally accept (alternative correct
codes) and industry; codes are normalised with the taxonomy. The router's decisions are scored as the
Predictor makes them, so the auto-coded share and its precision are what a user would get.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.trainer.metrics import compute_metrics
from shared.language import DEFAULT_MODEL_LANGUAGES
from shared.taxonomy import InvalidCode, get_taxonomy

if TYPE_CHECKING:
    from services.trainer.routing_data import RoutingData
    from shared.decision import Hierarchy
    from shared.model.signals import NearestMatch
    from shared.routing import RecordInputs, RoutingModel


class EvalDataError(ValueError):
    """An evaluation file that cannot be used; the message names the file, row, field and reason."""


@dataclass
class EvalSet:
    """Records to evaluate on: model inputs, gold codes and the accepted codes of each record."""

    name: str
    job_titles: list[str]
    duties: list[str]
    gold: list[str]
    accept: list[set[str]]
    skipped: list[tuple[int, str]]
    industries: list[str] = field(default_factory=list)  # empty: no record has one
    sources: list[str] = field(default_factory=list)  # training source of each record (the test split)
    language_hint: str = ""  # every record sent with this `language` hint ("": none, the text is read)
    languages: list[str] = field(default_factory=list)  # each record's own language (the test split)
    groups: list[str] = field(default_factory=list)  # each record's occupation (the test split)

    def __len__(self) -> int:
        return len(self.gold)

    def texts(self) -> list[str]:
        from shared.text import model_input

        industries = self.industries or [""] * len(self.gold)
        return [
            model_input(t, d, i) for t, d, i in zip(self.job_titles, self.duties, industries, strict=True)
        ]


def _parse_accept(raw: str | None) -> set[str]:
    if not raw:
        return set()
    return {
        part.strip()
        for part in raw.replace(";", "|").replace(",", "|").replace(" ", "|").split("|")
        if part.strip()
    }


def load_eval_csv(path: Path, *, skip_invalid: bool = False) -> EvalSet:
    """Read a coded CSV (job_title, duties_description, isco_code[, accept, industry]) for evaluation.

    Codes are normalised with the taxonomy. A bad row raises EvalDataError naming the row and field, unless
    `skip_invalid`, which skips it and lists it in `EvalSet.skipped`.
    """
    taxonomy = get_taxonomy()
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    titles: list[str] = []
    duties: list[str] = []
    industries: list[str] = []
    gold: list[str] = []
    accept: list[set[str]] = []
    skipped: list[tuple[int, str]] = []
    from shared.csvio.reading import CsvFormatError, read_table

    try:
        # the uploads' reader: same encodings, delimiters, header spellings and errors
        header, records = read_table(path)
    except CsvFormatError as exc:
        raise EvalDataError(f"{path}: {exc}") from None
    if "isco_code" not in header:
        raise EvalDataError(f"{path}: missing column(s) isco_code (found: {', '.join(header)})")
    for line, row in records:
        title, duty = (row.get("job_title") or "").strip(), (row.get("duties_description") or "").strip()
        problem = None
        if not title and not duty:
            problem = "job_title and duties_description are both empty"
        else:
            try:
                code = taxonomy.normalise(row.get("isco_code"))
                alternatives = {taxonomy.normalise(a) for a in _parse_accept(row.get("accept"))}
            except InvalidCode as exc:
                problem = f"isco_code/accept: {exc}"
        if problem:
            if not skip_invalid:
                raise EvalDataError(f"{path}, line {line}: {problem}")
            skipped.append((line, problem))
            continue
        titles.append(title)
        duties.append(duty)
        industries.append((row.get("industry") or "").strip())
        gold.append(code)
        accept.append(alternatives)
    return EvalSet(path.stem, titles, duties, gold, accept, skipped, industries if any(industries) else [])


def data_hash_of(texts: Sequence[str], gold: Sequence[str]) -> str:
    """A stable hash of evaluation data (texts and codes, order-independent)."""
    import hashlib

    h = hashlib.sha256()
    for text, code in sorted(zip(texts, gold, strict=True)):
        h.update(f"{text}\t{code}\n".encode())
    return h.hexdigest()


def routed_confidence(
    routing: RoutingModel | None,
    hierarchy: Hierarchy,
    eval_set: EvalSet,
    probs: np.ndarray,
    nearest: NearestMatch | None = None,
    languages: Sequence[str] = DEFAULT_MODEL_LANGUAGES,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The routing's calibrated probability that each 4-digit answer is right, and which records it would
    auto-code, as the Predictor decides them (`languages`: the model's, model.json); None without a routing
    model (no routing.json)."""
    if routing is None:
        return None
    from shared.decision import level_probabilities

    inputs, screened = _routing_inputs(eval_set, languages)
    confidence, auto = routing.unit_routing(level_probabilities(probs, hierarchy), inputs, nearest)
    return confidence, auto & ~screened


def _routing_inputs(eval_set: EvalSet, languages: Sequence[str]) -> tuple[RecordInputs, np.ndarray]:
    """What each record gave as the router reads it (its language read as serving reads it, with the set's
    hint), and which records screening sends to a coder whatever the router says."""
    from shared.routing import record_inputs
    from shared.screening import flagged, read_languages, routing_languages

    titles, duties = eval_set.job_titles, eval_set.duties
    readings = read_languages(titles, duties, eval_set.industries, languages, eval_set.language_hint or None)
    inputs = record_inputs(titles, duties, eval_set.texts(), routing_languages(readings, languages))
    return inputs, flagged(titles, duties, readings)


def routing_data(predictor: Any, eval_set: EvalSet) -> RoutingData:
    """`eval_set` as routing reads it, scored by a loaded `shared.predictor.Predictor` (its cache makes this
    free after `evaluate_set`): what a run keeps of its test split to judge routing variants on."""
    from services.trainer.routing_data import RoutingData, correct_by_level
    from shared.decision import level_probabilities

    probs, nearest = predictor.scores(eval_set.texts())
    per_level = level_probabilities(probs, predictor.hierarchy)
    inputs, screened = _routing_inputs(eval_set, predictor.languages)
    accepted = [{g} | a for g, a in zip(eval_set.gold, eval_set.accept, strict=True)]
    return RoutingData(
        per_level,
        correct_by_level(per_level, predictor.hierarchy, accepted),
        inputs,
        nearest,
        list(eval_set.sources) if eval_set.sources else None,
        screened,
        np.asarray(eval_set.groups, dtype=str) if eval_set.groups else None,
    )


def evaluate_set(predictor: Any, eval_set: EvalSet) -> dict[str, Any]:
    """Score an EvalSet with a loaded `shared.predictor.Predictor`."""
    probs, nearest = predictor.scores(eval_set.texts())
    routed = routed_confidence(
        predictor.routing, predictor.hierarchy, eval_set, probs, nearest, predictor.languages
    )
    metrics = compute_metrics(
        probs,
        predictor.codes,
        eval_set.gold,
        eval_set.accept,
        routed_confidence=routed[0] if routed else None,
        auto_coded=routed[1] if routed else None,
    )
    metrics["data_hash"] = data_hash_of(eval_set.texts(), eval_set.gold)
    if eval_set.sources:
        metrics["per_source"] = per_source_metrics(probs, predictor.codes, eval_set, routed)
    if len(set(eval_set.languages)) > 1:
        metrics["per_language"] = per_source_metrics(
            probs, predictor.codes, eval_set, routed, groups=eval_set.languages
        )
    if eval_set.skipped:
        metrics["skipped_rows"] = len(eval_set.skipped)
    return metrics


def per_source_metrics(
    probs: np.ndarray,
    codes: Sequence[str],
    eval_set: EvalSet,
    routed: tuple[np.ndarray, np.ndarray] | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Top-1 and top-3 per training source (`EvalSet.sources`, or per value of `groups`: each record's
    language), and, with routing, the share auto-coded and its precision: a source that hurts, or that
    routing over-trusts, shows in its own row."""
    out: dict[str, dict[str, Any]] = {}
    top = np.argsort(-probs, axis=1)[:, :3]
    accepted = [{g} | a for g, a in zip(eval_set.gold, eval_set.accept, strict=True)]
    hit1 = np.array([codes[row[0]] in acc for row, acc in zip(top, accepted, strict=True)])
    hit3 = np.array([any(codes[j] in acc for j in row) for row, acc in zip(top, accepted, strict=True)])
    labels = list(eval_set.sources if groups is None else groups)
    sources = np.asarray(labels)
    for source in sorted(set(labels)):
        rows = sources == source
        entry: dict[str, Any] = {
            "n": int(rows.sum()),
            "accuracy": float(hit1[rows].mean()),
            "top3": float(hit3[rows].mean()),
        }
        if routed is not None:
            auto = routed[1][rows]
            entry["auto_coded"] = float(auto.mean())
            entry["auto_coded_precision"] = float(hit1[rows][auto].mean()) if auto.any() else None
        out[source] = entry
    return out
