"""The decision layer: a matrix of unit-group probabilities in, Predictions out. Pure numpy, no model.

- `Hierarchy`, `level_probabilities`: unit probabilities summed up to minor, sub-major and major groups.
- `choose_level`: the deepest level whose confidence clears its threshold (the 4-digit threshold decides the
  3-digit fallback, and so on up).
- `review_fields`, `build_predictions`: `needs_review` and its reasons (the model's router,
  `shared.routing`; the record's language against the model's `languages`, `shared.screening`),
  alternatives, the path and the official titles.
- `record_text`: a record's model input text, each field cut to its limit (`truncated` in the result).

`shared.predictor.Predictor` scores the texts and calls these; the trainer's evaluation and the benchmarks
call them on probabilities they computed themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.language import DEFAULT_MODEL_LANGUAGES
from shared.model.signals import NearestMatch
from shared.routing import RoutingModel, record_inputs
from shared.schemas import (
    MAX_TEXT_CHARS,
    Alternative,
    GroupRef,
    JobRecord,
    Prediction,
    Thresholds,
)
from shared.screening import LanguageReading, read_language, review_reasons, routing_languages
from shared.taxonomy import Taxonomy, get_taxonomy
from shared.text import INDUSTRY_MAX_CHARS, clean_text, model_input

LEVELS_DEEPEST_FIRST = (4, 3, 2, 1)


@dataclass(frozen=True)
class Hierarchy:
    """Maps the model's unit groups (label order) onto their minor, sub-major and major groups."""

    unit_codes: tuple[str, ...]
    group_codes: dict[int, tuple[str, ...]]  # level -> codes of that level, in column order
    indicators: dict[int, np.ndarray]  # level -> (n_units, n_groups) 0/1 matrix: unit i belongs to group j
    index: dict[int, dict[str, int]] = field(default_factory=dict)  # level -> code -> column

    @classmethod
    def from_codes(cls, unit_codes: Sequence[str], taxonomy: Taxonomy | None = None) -> Hierarchy:
        """Build from the unit codes in label order; codes unknown to the taxonomy are rejected."""
        taxonomy = taxonomy or get_taxonomy()
        unit_codes = tuple(unit_codes)
        group_codes: dict[int, tuple[str, ...]] = {4: unit_codes}
        indicators: dict[int, np.ndarray] = {4: np.eye(len(unit_codes), dtype=np.float32)}
        ancestors = {code: {g.level: g.code for g in taxonomy.ancestors(code)} for code in unit_codes}
        for level in (3, 2, 1):
            codes = tuple(sorted({ancestors[c][level] for c in unit_codes}))
            col = {c: j for j, c in enumerate(codes)}
            ind = np.zeros((len(unit_codes), len(codes)), dtype=np.float32)
            for i, unit in enumerate(unit_codes):
                ind[i, col[ancestors[unit][level]]] = 1.0
            group_codes[level], indicators[level] = codes, ind
        index = {level: {c: j for j, c in enumerate(codes)} for level, codes in group_codes.items()}
        return cls(unit_codes, group_codes, indicators, index)


def level_probabilities(unit_probs: np.ndarray, hierarchy: Hierarchy) -> dict[int, np.ndarray]:
    """Probabilities of every group at every level: unit probabilities summed up the hierarchy.

    Returns level -> array (n_records, n_groups_at_level); level 4 is `unit_probs` itself.
    """
    unit_probs = np.asarray(unit_probs, dtype=np.float32)
    return {
        level: unit_probs if level == 4 else unit_probs @ hierarchy.indicators[level]
        for level in (4, 3, 2, 1)
    }


@dataclass(frozen=True)
class LevelChoice:
    level: int
    code: str
    confidence: float


def choose_level(best_per_level: dict[int, tuple[str, float]], thresholds: Thresholds) -> LevelChoice | None:
    """The deepest level whose most likely group reaches that level's threshold (>=), or None.

    `best_per_level`: level -> (most likely code at that level, its probability). The unit threshold decides
    whether the answer falls back to the minor group, and so on up to the major group.
    """
    for level in LEVELS_DEEPEST_FIRST:
        code, confidence = best_per_level[level]
        if confidence >= thresholds.for_level(level):
            return LevelChoice(level, code, confidence)
    return None


def review_fields(
    choice: LevelChoice | None,
    record: JobRecord | None = None,
    routed_unit: bool | None = None,
    reading: LanguageReading | None = None,
) -> dict[str, Any]:
    """`needs_review` and its reasons, and the record's `language`: only a 4-digit answer is auto-coded, only
    when the model's router says it is right with the fitted precision (`routed_unit`; None: no
    routing.json), and never an answer that is not an occupation, in a language or script the model does not
    cover, or whose language hint the text contradicts (`reading`: `shared.screening.read_language` of the
    record for the model's languages; the record is judged on its language only with its reading)."""
    level = choice.level if choice is not None else None
    if level == 4 and routed_unit is False:
        level = 3  # a 4-digit answer below the router's threshold: reviewed like a fallback
    if record is None or reading is None:
        reasons = ["not_coded"] if level is None else ["below_threshold"] if level < 4 else []
        return {"needs_review": bool(reasons), "review_reasons": reasons}
    reasons = review_reasons(record.job_title, record.duties_description, level, reading)
    return {
        "needs_review": bool(reasons),
        "review_reasons": reasons,
        "language": reading.language,
        "language_detected": reading.detected,
    }


def _conf(x: float) -> float:
    return round(float(x), 6)


def build_predictions(
    unit_probs: np.ndarray,
    hierarchy: Hierarchy,
    thresholds: Thresholds,
    top_k: int,
    model_version: str,
    *,
    ids: Sequence[str | None] | None = None,
    truncated: Sequence[bool] | None = None,
    taxonomy: Taxonomy | None = None,
    records: Sequence[JobRecord] | None = None,
    routing: RoutingModel | None = None,
    texts: Sequence[str] | None = None,
    nearest: NearestMatch | None = None,
    languages: Sequence[str] = DEFAULT_MODEL_LANGUAGES,
) -> list[Prediction]:
    """Turn a (n_records, n_units) probability matrix into Predictions (pure: no model involved).

    The level answered is the deepest whose probability reaches its level's threshold. With `routing` (the
    model's routing.json) and the `records` and their model `texts`, `routing_confidence` is the router's
    calibrated probability that the 4-digit answer is right, and only answers at or above its fitted
    threshold, or that the record's `nearest` training text agrees with (the match rule), are auto-coded
    (`needs_review` false). With `records`, each result says its `language`, and review reasons include
    non-occupation answers, languages or scripts outside the model's `languages` and contradicted hints.
    """
    taxonomy = taxonomy or get_taxonomy()
    n = unit_probs.shape[0]
    ids = ids if ids is not None else [None] * n
    truncated = truncated if truncated is not None else [False] * n
    per_level = level_probabilities(unit_probs, hierarchy)
    best_idx = {level: per_level[level].argmax(axis=1) for level in (4, 3, 2, 1)}
    readings = (
        [read_language(r.job_title, r.duties_description, r.industry, r.language, languages) for r in records]
        if records is not None
        else None
    )
    routed = None
    if routing is not None and records is not None and readings is not None and texts is not None:
        inputs = record_inputs(
            [r.job_title for r in records],
            [r.duties_description for r in records],
            texts,
            routing_languages(readings, languages),
        )
        routed = routing.unit_routing(per_level, inputs, nearest)
    k = min(top_k, unit_probs.shape[1])
    # argpartition then sort only the k candidates: O(n_units) per row instead of a full sort
    top = np.argpartition(-per_level[4], k - 1, axis=1)[:, :k]
    results = []
    for r in range(n):
        best = {
            level: (
                hierarchy.group_codes[level][best_idx[level][r]],
                float(per_level[level][r, best_idx[level][r]]),
            )
            for level in (4, 3, 2, 1)
        }
        choice = choose_level(best, thresholds)
        routed_unit = bool(routed[1][r]) if routed is not None else None
        unit_code, unit_conf = best[4]
        # ties in label order, as argmax breaks them (argpartition's order differs between CPUs)
        row_top = sorted(top[r], key=lambda j: (-per_level[4][r, j], j))
        alternatives = [
            Alternative(
                code=hierarchy.unit_codes[j],
                title=taxonomy.title(hierarchy.unit_codes[j]),
                confidence=_conf(per_level[4][r, j]),
            )
            for j in row_top
        ]
        path = [
            GroupRef(
                code=g.code,
                level=g.level,
                title=g.title,
                confidence=_conf(per_level[g.level][r, hierarchy.index[g.level][g.code]]),
            )
            for g in taxonomy.ancestors(unit_code)
        ]
        results.append(
            Prediction(
                id=ids[r],
                coded=choice is not None,
                isco_code=choice.code if choice else None,
                level=choice.level if choice else None,
                title=taxonomy.title(choice.code) if choice else None,
                confidence=_conf(choice.confidence) if choice else None,
                is_fallback=choice is None or choice.level < 4,
                unit_code=unit_code,
                unit_title=taxonomy.title(unit_code),
                unit_confidence=_conf(unit_conf),
                alternatives=alternatives,
                path=path,
                model_version=model_version,
                truncated=bool(truncated[r]),
                routing_confidence=_conf(routed[0][r]) if routed is not None else None,
                **review_fields(
                    choice,
                    records[r] if records is not None else None,
                    routed_unit,
                    readings[r] if readings is not None else None,
                ),
            )
        )
    return results


def record_text(record: JobRecord, limit: int = MAX_TEXT_CHARS) -> tuple[str, bool]:
    """The model input for a record and whether a field had to be cut: the title or duties to `limit`
    characters, the industry to `INDUSTRY_MAX_CHARS` (cleaned, as `industry_phrase` reads it)."""
    title, duties = record.job_title or "", record.duties_description or ""
    industry = (record.industry or "")[:limit]  # bounds the cleaning work; industry_phrase cuts to its limit
    cut = (
        len(title) > limit
        or len(duties) > limit
        or len(record.industry or "") > limit
        or len(clean_text(industry).lower()) > INDUSTRY_MAX_CHARS
    )
    return model_input(title[:limit], duties[:limit], industry), cut
