"""Routing variants for a multilingual model, fitted on a run's validation split and judged per language on
its test split (issue 28: what is auto-coded in any language is right >= 95% of the time).

    python -m bench.experiments.routing_languages RUN_DIR [PROFILE]   (var/runs/<version> of a full run)

PROFILE (e.g. multilingual-full): for a run kept before its routing data named each validation record's
occupation, the run's preprocessing is repeated with that profile (same corpus, same seed) to name them.

Each variant is fitted on `routing_val.npz` only and judged on `routing_test.npz` (held-out occupations, every
label of them: drawn as the dev split is), per language as routing reads it ("?": only guessed), and on the
English test sources. The multilingual dev split (300 labels per language, by each label's own language) and
the English dev sets are scored with the run's model as served and reported beside them, never chosen on.
Writes bench/results/routing_languages-<time>.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.devsets import load_devsets
from bench.experiments.routing_users import Route, screened, shipped_route
from bench.multilingual import PER_LANGUAGE, dev_records
from services.trainer.evaluate import EvalSet, routing_data
from services.trainer.routing_data import ROUTING_DATA_FILES, RoutingData
from services.trainer.routing_fit import fit_logistic, fit_routing, shape_thresholds, threshold_for_precision
from shared.corpus_multilingual import ESCO_LANGUAGES
from shared.routing import ENGLISH, POOLED_LANGUAGES, RoutingModel, routing_features

MIN_AUTO = 20  # a language's precision is reported where it auto-codes at least this many records


def proxy_clusters(d: RoutingData) -> np.ndarray:
    """Each record's occupation, approximated (runs before the kept data named it) by its language and its
    answer: an occupation's labels in one language mostly get the same answer."""
    answers = d.per_level[4].argmax(axis=1)
    return np.array([f"{lang}:{a}" for lang, a in zip(d.inputs.language_codes(), answers, strict=True)])


def refit(
    val: RoutingData, z: float, languages: str = "own", clusters: np.ndarray | None = None
) -> RoutingModel:
    """The trainer's routing refitted at `z`; `languages`: "own" (as shipped: each language's threshold where
    it has enough records, else the pooled one), "pooled" (every non-English record meets the pooled one),
    "max" (the stricter of its own and the pooled)."""
    model = fit_routing(
        val.per_level,
        val.correct,
        val.inputs,
        nearest=val.nearest,
        kinds=val.kinds,
        z=z,
        clusters=clusters,
    )
    for router in [*model.levels.values()]:
        _restrict(router.language_thresholds, languages)
    _restrict(model.match_language_similarities, languages)
    return model


def _restrict(thresholds: dict[str, float], languages: str) -> None:
    pooled = thresholds.get(POOLED_LANGUAGES)
    if pooled is None or languages == "own":
        return
    for lang in list(thresholds):
        if languages == "pooled" and lang != POOLED_LANGUAGES:
            del thresholds[lang]
        elif languages == "max":
            thresholds[lang] = max(thresholds[lang], pooled)


def language_columns(d: RoutingData, languages: list[str]) -> np.ndarray:
    """The router's features with one indicator per language (English and "?" the reference)."""
    codes = d.inputs.language_codes()
    return np.c_[routing_features(d.per_level[4], d.inputs), *[(codes == lang) for lang in languages]]


def language_logistic_route(val: RoutingData, z: float, match: RoutingModel) -> Route:
    """One logistic with a per-language intercept, so that each language's probabilities are calibrated on
    its own; then the shape thresholds and one pooled non-English threshold (no per-language threshold
    chosen among hundreds on a few hundred records); the match rule as `match` has it."""
    codes = val.inputs.language_codes()
    languages = sorted({c for c in codes.tolist() if c not in (ENGLISH, "?")})
    x, y = language_columns(val, languages), val.correct[4].astype(np.float64)
    mean, std, w, b = fit_logistic(x, y)

    def probability(d: RoutingData) -> np.ndarray:
        xd = language_columns(d, languages)
        return 1.0 / (1.0 + np.exp(-np.clip(((xd - mean) / std) @ w + b, -40, 40)))

    p_val = probability(val)
    shapes = val.inputs.shapes()
    by_shape = shape_thresholds(p_val, y, 0.95, shapes, z)
    overall = threshold_for_precision(p_val, y, 0.95, z)
    foreign = codes != ENGLISH
    pooled = threshold_for_precision(p_val[foreign], y[foreign], 0.95, z)

    def route(d: RoutingData) -> tuple[np.ndarray, np.ndarray]:
        p, sd, ld = probability(d), d.inputs.shapes(), d.inputs.language_codes()
        needed = np.array([by_shape.get(s, overall) for s in sd])
        needed = np.where(ld != ENGLISH, np.maximum(needed, pooled), needed)
        auto = (p >= needed) | match.matched(d.per_level[4].argmax(axis=1), d.nearest, sd, ld)
        return p, auto & ~screened(d)

    return route


def report(auto: np.ndarray, right: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(len(auto)),
        "auto": int(auto.sum()),
        "precision": round(float(right[auto].mean()), 4) if auto.any() else None,
    }


def judge(name: str, route: Route, splits: dict[str, tuple[RoutingData, np.ndarray]]) -> dict[str, Any]:
    """Per split: every record, the English and the other records, and each language (`groups`: the language
    routing read on the test split, each label's own on the dev split)."""
    out: dict[str, Any] = {}
    cells = []
    for split, (d, groups) in splits.items():
        _, auto = route(d)
        right = d.correct[4]
        per = {g: report(auto[groups == g], right[groups == g]) for g in sorted(set(groups.tolist()))}
        foreign = groups != ENGLISH
        short = [
            g for g, r in per.items() if g != ENGLISH and r["auto"] >= MIN_AUTO and r["precision"] < 0.95
        ]
        worst = min(
            (r["precision"] for g, r in per.items() if g != ENGLISH and r["auto"] >= MIN_AUTO), default=None
        )
        out[split] = {
            "all": report(auto, right),
            "english": report(auto[~foreign], right[~foreign]),
            "other": report(auto[foreign], right[foreign]),
            "languages_below_0.95": short,
            "lowest": worst,
            "per_language": per,
        }
        o, e = out[split]["other"], out[split]["english"]
        cells.append(
            f"{split}: other {o['auto'] / max(o['n'], 1):.3f}@{o['precision'] or 0:.3f} "
            f"en {e['auto'] / max(e['n'], 1):.3f}@{e['precision'] or 0:.3f} below {len(short)} "
            f"lowest {worst or 0:.2f}"
        )
    print(f"{name:28s} " + " | ".join(cells), flush=True)
    return out


def dev_split_data(predictor: Any) -> tuple[RoutingData, np.ndarray]:
    """The multilingual dev split as routing reads it, with each label's own language."""
    records = dev_records(ESCO_LANGUAGES, PER_LANGUAGE)
    n = len(records)
    dev = EvalSet(
        "multilingual_dev",
        [r.label for r in records],
        [""] * n,
        [r.gold for r in records],
        [r.accept - {r.gold} for r in records],
        [],
    )
    return routing_data(predictor, dev), np.array([r.language for r in records], dtype=object)


def rebuilt_clusters(val: RoutingData, profile: str) -> np.ndarray:
    """Each validation record's occupation, for a run kept without them: the run's split made again with
    `profile`, in the order training gave validation to routing (by text length), checked record by record
    against the kept sources."""
    from services.trainer.config import TrainerSettings
    from services.trainer.pipeline import _load_rows
    from services.trainer.preprocess import prepare

    settings = TrainerSettings(profile=profile)
    rows, _ = _load_rows(settings, None, None, None, print)
    records = sorted(prepare(rows, settings.preprocess).val, key=lambda e: len(e.text))
    if [e.source for e in records] != list(val.kinds or []):
        raise SystemExit(f"the split made with {profile} is not the run's validation split")
    return np.array([e.group for e in records], dtype=str)


def main(run_dir: Path, profile: str | None = None) -> None:
    from shared.predictor import Predictor

    t0 = time.time()
    val = RoutingData.load(run_dir / ROUTING_DATA_FILES["val"])
    if val.clusters is None and profile is not None:  # a run kept before its data named occupations
        val.clusters = rebuilt_clusters(val, profile)
    test = RoutingData.load(run_dir / ROUTING_DATA_FILES["test"])
    model_dir = run_dir.parent.parent / "models" / run_dir.name
    predictor = Predictor.load(model_dir)
    splits: dict[str, tuple[RoutingData, np.ndarray]] = {"test": (test, test.inputs.language_codes())}
    splits["dev_multilingual"] = dev_split_data(predictor)
    for name, dev in load_devsets().items():
        d = routing_data(predictor, dev)
        splits[name] = (d, np.full(len(dev), ENGLISH, dtype=object))
    codes = val.inputs.language_codes()
    print(
        f"validation {len(codes)}: "
        + ", ".join(f"{c} {int((codes == c).sum())}" for c in sorted(set(codes.tolist())))
    )
    shipped = RoutingModel.load(model_dir)
    results: dict[str, Any] = {"run": str(run_dir), "validation_n": len(codes)}
    results["shipped"] = judge("shipped routing.json", shipped_route(shipped), splits)
    for z in (1.28, 1.64, 2.33):
        for languages in ("own", "max", "pooled"):
            name = f"z={z} languages={languages}"
            results[name] = judge(name, shipped_route(refit(val, z, languages)), splits)
        name = f"z={z} per-language intercept"
        results[name] = judge(name, language_logistic_route(val, z, refit(val, z, "pooled")), splits)
    for z in (0.5, 0.84, 1.0, 1.28):
        for languages in ("own", "max", "pooled"):
            name = f"language+answer clusters z={z} languages={languages}"
            route = shipped_route(refit(val, z, languages, proxy_clusters(val)))
            results[name] = judge(name, route, splits)
            if val.clusters is not None:
                name = f"occupation clusters z={z} languages={languages}"
                results[name] = judge(name, shipped_route(refit(val, z, languages, val.clusters)), splits)
    results["seconds"] = round(time.time() - t0)
    out = Path("bench/results") / f"routing_languages-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
