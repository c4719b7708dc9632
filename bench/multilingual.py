"""Per-language benchmark (issue 28): a model through the default serving path beside a character n-gram peer,
on the labels of the occupations held out of every language's training (shared/corpus_multilingual.py).

Usage:
    python -m bench.multilingual                      # the registered best model, and the peer
    python -m bench.multilingual --model-dir DIR      # any model directory
    python -m bench.multilingual --no-model           # the peer alone
    python -m bench.multilingual --per-language 300 --languages de,fr
    python -m bench.multilingual --model-dir DIR --hints   # each label sent with its language as the hint

Dev split: the held-out occupations' labels (one occupation in ten, by a hash of its ESCO URI), up to
`--per-language` per language chosen by a seeded hash (the same labels on every run). Gold: the label's
ISCO-08 unit group in ESCO v1.0.8; ESCO v1.2's code of the same occupation is accepted too (v1.2 re-coded 61
occupations; the corpus trains on v1.2's).

Model: `shared.predictor.Predictor` with the serving defaults (ONNX int8 on CPU), each label sent as a job
title, as the API receives it: top-1 and top-3 of the unit group, the share auto-coded (`needs_review`
false) and how often what was auto-coded (`isco_code`) is right. With `--hints` each label comes with its
language as the `language` hint, as from an office that knows its survey's language: routing then holds it to
that language's threshold instead of reading the language from a short title.

Peer: TF-IDF over character n-grams (analyzer "char_wb", n = 2..4, sublinear tf) with the nearest training
label by cosine (1-NN; top-3 = the codes of the nearest labels, distinct), fitted on the same training labels
as the model's corpus: English ESCO titles and the multilingual labels outside the dev split (all of them by
default: `--peer-max-labels` samples them as the corpus does).

Prints a table per language with the average and the weakest language; writes JSON to
bench/results/multilingual-<timestamp>.json with the machine's load average (a busy machine slows the model,
not its accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared.corpus_multilingual import ESCO_LANGUAGES, LanguageLabel, check_languages, dev_split

RESULTS_DIR = Path(__file__).parent / "results"
PER_LANGUAGE = 300
CHUNK = 128  # peer queries per dense similarity block (128 x ~300k float32: ~150 MB)


@dataclass
class DevRecord:
    """One held-out label to code: its language, text and accepted unit groups (gold first)."""

    language: str
    label: str
    gold: str
    accept: set[str]


def dev_records(
    languages: Sequence[str], per_language: int | None, labels: Sequence[LanguageLabel] | None = None
) -> list[DevRecord]:
    """The dev split as records; ESCO v1.2's code of the label's occupation is accepted beside v1.0.8's."""
    from shared.corpus import load_esco_facts

    current = {uri: code for uri, code, _ in load_esco_facts()}
    return [
        DevRecord(x.language, x.label, x.isco_code, {x.isco_code, current.get(x.concept_uri, x.isco_code)})
        for x in dev_split(languages, per_language, labels=labels)
    ]


def peer_training_labels(max_labels: int | None) -> tuple[list[str], list[str]]:
    """(texts, codes) the peer learns: the corpus's English ESCO titles and multilingual labels."""
    from shared.corpus import build_default_corpus

    corpus = build_default_corpus(
        sources=("esco_title", "esco_title_multilingual"),
        languages=("en", *ESCO_LANGUAGES),
        multilingual_max_labels=max_labels,
    )
    return [r.job_title for r in corpus], [r.isco_code for r in corpus]


class CharNgramPeer:
    """1-NN by cosine over character n-gram TF-IDF vectors of the training labels."""

    def __init__(self, ngram_range: tuple[int, int] = (2, 4)):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True, dtype=np.float32
        )

    def fit(self, texts: Sequence[str], codes: Sequence[str]) -> CharNgramPeer:
        self.matrix = self.vectorizer.fit_transform(texts).T.tocsr()  # n-grams x labels
        self.codes = list(codes)
        return self

    def top_codes(self, texts: Sequence[str], k: int = 3) -> list[list[str]]:
        """The codes of each text's nearest labels, distinct, nearest first (at most k)."""
        out: list[list[str]] = []
        queries = self.vectorizer.transform(texts)
        for start in range(0, len(texts), CHUNK):
            sims = (queries[start : start + CHUNK] @ self.matrix).toarray()
            pool = min(sims.shape[1] - 1, 50)  # labels looked at to find k distinct codes
            nearest = np.argpartition(-sims, pool, axis=1)[:, : pool + 1]
            for row, candidates in zip(sims, nearest, strict=True):
                ranked: list[str] = []
                for j in candidates[np.argsort(-row[candidates], kind="stable")]:
                    if self.codes[j] not in ranked:
                        ranked.append(self.codes[j])
                    if len(ranked) == k:
                        break
                out.append(ranked)
        return out


def peer_results(records: Sequence[DevRecord], texts: Sequence[str], codes: Sequence[str]) -> dict[str, Any]:
    """The peer's per-language top-1 and top-3 on the dev records."""
    started = time.perf_counter()
    peer = CharNgramPeer().fit(texts, codes)
    fitted = time.perf_counter()
    ranked = peer.top_codes([r.label for r in records])
    rows = [
        {
            "language": r.language,
            "top1": bool(top[:1] and top[0] in r.accept),
            "top3": bool(set(top) & r.accept),
        }
        for r, top in zip(records, ranked, strict=True)
    ]
    return {
        "train_labels": len(texts),
        "fit_seconds": round(fitted - started, 1),
        "score_seconds": round(time.perf_counter() - fitted, 1),
        "languages": summarise(rows),
    }


def model_results(
    model_dir: Path, records: Sequence[DevRecord], batch: int = 256, hints: bool = False
) -> dict[str, Any]:
    """The model through the serving path (`Predictor`, serving defaults), each label as a job title (with
    its language as the hint when `hints`)."""
    from shared.predictor import Predictor
    from shared.schemas import JobRecord

    predictor = Predictor.load(model_dir)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        predictions = predictor.predict(
            [JobRecord(job_title=r.label, language=r.language if hints else None) for r in chunk]
        )
        for r, p in zip(chunk, predictions, strict=True):
            top = [a.code for a in p.alternatives[:3]]
            auto = not p.needs_review
            rows.append(
                {
                    "language": r.language,
                    "top1": p.unit_code in r.accept,
                    "top3": bool(set(top) & r.accept),
                    "auto": auto,
                    "auto_right": auto and p.isco_code in r.accept,
                    # the router's probability that the 4-digit answer is right (None: no routing.json)
                    "routing_confidence": p.routing_confidence,
                    "reasons": list(p.review_reasons),
                }
            )
    seconds = time.perf_counter() - started
    return {
        "version": predictor.version,
        "model_dir": str(model_dir),
        "texts_per_second": round(len(records) / seconds, 1) if seconds > 0 else None,
        "language_hints": hints,
        "languages": summarise(rows),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per language: n, top-1, top-3 and, where the rows say it, the auto-coded share, its precision and the
    review reasons' counts; then `average` (the mean over languages, each language weighing the same; the
    auto-coded precision pooled over every auto-coded record) with the weakest language."""
    by_language: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_language.setdefault(row["language"], []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for language, items in by_language.items():
        m: dict[str, Any] = {
            "n": len(items),
            "top1": float(np.mean([r["top1"] for r in items])),
            "top3": float(np.mean([r["top3"] for r in items])),
        }
        if "auto" in items[0]:
            auto = [r for r in items if r["auto"]]
            m["auto_coded"] = len(auto) / len(items)
            m["auto_coded_precision"] = float(np.mean([r["auto_right"] for r in auto])) if auto else None
            if items[0].get("routing_confidence") is not None:
                m.update(calibration(items))
            reasons: dict[str, int] = {}
            for r in items:
                for reason in r["reasons"]:
                    reasons[reason] = reasons.get(reason, 0) + 1
            m["review_reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
        out[language] = m
    if out:
        weakest = min(out, key=lambda lang: out[lang]["top1"])
        average: dict[str, Any] = {
            "n": sum(m["n"] for m in out.values()),
            "top1": float(np.mean([m["top1"] for m in out.values()])),
            "top3": float(np.mean([m["top3"] for m in out.values()])),
            "min_language": weakest,
            "min_top1": out[weakest]["top1"],
        }
        if "auto" in rows[0]:
            auto = [r for r in rows if r["auto"]]
            average["auto_coded"] = float(np.mean([m["auto_coded"] for m in out.values()]))
            # precision over every auto-coded record (a language's own rests on a handful where few are)
            average["auto_coded_precision"] = (
                float(np.mean([r["auto_right"] for r in auto])) if auto else None
            )
            languages = [m for m in out.values() if "ece" in m]
            if languages:
                average["ece"] = float(np.mean([m["ece"] for m in languages]))
                average["max_ece"] = max(m["ece"] for m in languages)
        out["average"] = average
    return out


def calibration(items: Sequence[dict[str, Any]]) -> dict[str, float]:
    """How well the router's probability that the 4-digit answer is right matches how often it is, in one
    language: ECE over 15 equal-width bins, and the mean probability beside the top-1 rate."""
    from services.trainer.metrics import expected_calibration_error

    confidence = np.array([r["routing_confidence"] for r in items], dtype=np.float64)
    right = np.array([r["top1"] for r in items], dtype=np.float64)
    return {"ece": expected_calibration_error(confidence, right), "mean_confidence": float(confidence.mean())}


def language_summary(result: dict[str, Any]) -> str:
    """One line: the average top-1 over languages and the weakest language (what bench.accuracy prints)."""
    average = result["languages"].get("average")
    if not average:
        return "no languages scored"
    return (
        f"top-1 {average['top1']:.3f} averaged over {len(result['languages']) - 1} languages "
        f"(top-3 {average['top3']:.3f}); lowest: {average['min_language']} ({average['min_top1']:.3f})"
    )


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """One row per language (then the average), top-1 / top-3 per system, the model's auto-coding."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Held-out occupations' labels per language (top-1 / top-3 of the unit group)")
    table.add_column("language")
    table.add_column("n", justify="right")
    for system in results:
        table.add_column(f"{system} top-1", justify="right")
        table.add_column("top-3", justify="right")
        if "auto_coded" in next(iter(results[system]["languages"].values()), {}):
            table.add_column("auto-coded", justify="right")
            table.add_column("its precision", justify="right")
            table.add_column("ECE", justify="right")
    languages = [x for x in next(iter(results.values()))["languages"] if x != "average"] + ["average"]
    for language in languages:
        cells: list[str] = []
        n = "-"
        for r in results.values():
            m = r["languages"].get(language, {})
            n = str(m.get("n", n))
            cells += [f"{m['top1']:.3f}", f"{m['top3']:.3f}"] if m else ["-", "-"]
            if "auto_coded" in next(iter(r["languages"].values()), {}):
                precision = m.get("auto_coded_precision")
                cells += [
                    f"{m['auto_coded']:.3f}" if "auto_coded" in m else "-",
                    "-" if precision is None else f"{precision:.3f}",
                    f"{m['ece']:.3f}" if "ece" in m else "-",
                ]
        table.add_row(language, n, *cells)
    Console().print(table)
    for system, r in results.items():
        print(f"{system}: {language_summary(r)}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, help="model directory (default: the registered best model)")
    parser.add_argument("--no-model", action="store_true", help="the peer alone")
    parser.add_argument("--no-peer", action="store_true", help="the model alone")
    parser.add_argument("--per-language", type=int, default=PER_LANGUAGE, help="dev labels per language")
    parser.add_argument("--languages", default=",".join(ESCO_LANGUAGES), help="comma-separated ISO 639-1")
    parser.add_argument(
        "--peer-max-labels", type=int, default=None, help="peer's labels per occupation and language (all)"
    )
    parser.add_argument(
        "--hints", action="store_true", help="send each label with its language as the `language` hint"
    )
    parser.add_argument(
        "--output", type=Path, help="JSON path (default: bench/results/multilingual-<time>.json)"
    )
    args = parser.parse_args(argv)
    try:
        languages = [x for x in check_languages(args.languages.split(",")) if x != "en"]
    except ValueError as exc:
        parser.error(f"--{exc}")
    if args.per_language < 1:
        parser.error("--per-language: must be at least 1")

    records = dev_records(languages, args.per_language)
    results: dict[str, dict[str, Any]] = {}
    if not args.no_model:
        model_dir = args.model_dir
        if model_dir is None:
            from shared.registry import best_model_dir
            from shared.settings import CommonSettings

            model_dir = best_model_dir(CommonSettings())
        if model_dir is None:
            print("no model directory given and no best model registered: the peer alone")
        else:
            model = model_results(Path(model_dir), records, hints=args.hints)
            results[f"model {model['version']}"] = model
    if not args.no_peer:
        texts, codes = peer_training_labels(args.peer_max_labels)
        results["char n-gram 1-NN"] = peer_results(records, texts, codes)
    if not results:
        raise SystemExit("nothing to score: both --no-model and --no-peer (or no model)")
    print_table(results)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output or RESULTS_DIR / f"multilingual-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "created": stamp,
        "machine": platform.node(),
        "load_average": list(os.getloadavg()),
        "per_language": args.per_language,
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=1, default=float))
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
