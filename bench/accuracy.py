"""Accuracy benchmark: a model directory vs the TF-IDF + linear SVM baseline on the development sets.

Usage:
    python -m bench.accuracy                      # the registered best model
    python -m bench.accuracy --model-dir DIR      # any model directory
    python -m bench.accuracy --no-baseline        # skip training the SVM baseline (~2 minutes)
    python -m bench.accuracy --language en        # every record sent with the `language` hint "en"

The dev sets and what counts as correct: bench/devsets.py. Prints top-1, top-3, top-5 and 3-digit accuracy
side by side; writes JSON to bench/results/accuracy-<timestamp>.json.

Second table, per training source on the model's test split (ESCO titles, ONS index entries with and
without their industry, ...): the model's figures are those its training run took before the test records
joined its indexes (`metrics.json`, `test.per_source`; afterwards the model knows them); the TF-IDF peer is
trained on the same training split (the split is deterministic: `prepare` with the model's preprocess
config) and scored on the same test records.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.baseline_svm import SvmBaseline
from bench.devsets import DEVSETS_DIR, accepted_codes, load_devsets
from services.trainer.evaluate import EvalSet, routed_confidence
from services.trainer.metrics import compute_metrics
from shared.corpus import label_codes
from shared.language import LANGUAGES
from shared.settings import CommonSettings

RESULTS_DIR = Path(__file__).parent / "results"
COLUMNS = (("accuracy", "top-1"), ("top3", "top-3"), ("top5", "top-5"), ("accuracy_3digit", "3-digit"))


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def evaluate_model_dir(
    model_dir: Path, devsets: dict[str, EvalSet], threads: int | None = None, language: str = ""
) -> dict[str, Any]:
    """Metrics of the model directory on each dev set (through the same scorer every service uses); with
    `language`, routed as records sent with that `language` hint (the dev sets are English)."""
    from shared.decision import Hierarchy
    from shared.model.directory import read_model_languages
    from shared.model.scorer import UnitScorer
    from shared.routing import RoutingModel

    scorer = UnitScorer.load(model_dir, device="auto", threads=threads)
    routing, hierarchy = RoutingModel.load(model_dir), Hierarchy.from_codes(scorer.codes)
    out: dict[str, Any] = {
        "version": scorer.version,
        "model_dir": str(model_dir),
        "language_hint": language or None,
        "sets": {},
    }
    for name, dev in devsets.items():
        dev = replace(dev, language_hint=language)
        texts = dev.texts()
        t = time.perf_counter()
        probs, nearest = scorer.unit_scores(texts)
        seconds = time.perf_counter() - t
        routed = routed_confidence(routing, hierarchy, dev, probs, nearest, read_model_languages(model_dir))
        metrics = compute_metrics(
            probs,
            scorer.codes,
            dev.gold,
            dev.accept,
            routed_confidence=routed[0] if routed else None,
            auto_coded=routed[1] if routed else None,
        )
        metrics["texts_per_second"] = round(len(texts) / seconds, 1)
        out["sets"][name] = metrics
    return out


def evaluate_baseline(devsets: dict[str, EvalSet]) -> dict[str, Any]:
    """Train the SVM baseline on the default corpus and score the dev sets (softmax of SVM scores)."""
    t = time.perf_counter()
    model = SvmBaseline.train_default()
    out: dict[str, Any] = {"train_seconds": round(time.perf_counter() - t, 1), "sets": {}}
    codes = label_codes()
    for name, dev in devsets.items():
        scores = model.scores(dev.texts(), codes)
        metrics = compute_metrics(_softmax(scores), codes, dev.gold, dev.accept)
        # SVM margins are not probabilities: summing their softmax over a minor group favours big groups,
        # so the baseline's 3-digit accuracy is that of its top-1 unit group's prefix.
        top1 = scores.argmax(axis=1)
        metrics["accuracy_3digit"] = float(
            np.mean(
                [
                    any(a.startswith(codes[j][:3]) for a in acc)
                    for j, acc in zip(top1, accepted_codes(dev), strict=True)
                ]
            )
        )
        out["sets"][name] = metrics
    return out


def test_split_report(model_dir: Path | None, baseline: bool = True) -> dict[str, Any]:
    """Per-source metrics on the test split: the model's as its training run took them, the TF-IDF peer's
    trained on the same training split (see the module docstring)."""
    from services.trainer.config import PreprocessConfig
    from services.trainer.evaluate import data_hash_of, per_source_metrics
    from services.trainer.pipeline import eval_set_from_examples
    from services.trainer.preprocess import prepare
    from services.trainer.records import rows_from_corpus
    from shared.corpus import build_default_corpus

    out: dict[str, Any] = {}
    config = PreprocessConfig()
    if model_dir is not None and (Path(model_dir) / "metrics.json").exists():
        metrics = json.loads((Path(model_dir) / "metrics.json").read_text())
        test = metrics.get("test", {})
        if "per_source" in test:
            out["model"] = {"per_source": test["per_source"], "data_hash": test.get("data_hash")}
        preprocess = Path(model_dir) / "preprocess.json"
        if preprocess.exists():
            config = PreprocessConfig.model_validate(json.loads(preprocess.read_text())["config"])
    if baseline:
        config.outliers.enabled = False  # reported only, never excluded by default: the split is the same
        prepared = prepare(rows_from_corpus(build_default_corpus()), config)
        svm = SvmBaseline().fit([e.text for e in prepared.train], [e.code for e in prepared.train])
        test_set = eval_set_from_examples("test", prepared.test)
        codes = label_codes()
        probs = _softmax(svm.scores(test_set.texts(), codes))
        out["tfidf+svm on the same split"] = {
            "per_source": per_source_metrics(probs, codes, test_set),
            "data_hash": data_hash_of(test_set.texts(), test_set.gold),
        }
    return out


def print_test_split(report: dict[str, Any]) -> None:
    """One row per training source: n, then top-1 (top-3) of each system, and the model's auto-coding."""
    from rich.console import Console
    from rich.table import Table

    if not report:
        return
    table = Table(title="Test split per training source (model: as taken before the test records joined it)")
    table.add_column("source")
    table.add_column("n", justify="right")
    for system in report:
        table.add_column(f"{system} top-1", justify="right")
        table.add_column("top-3", justify="right")
    if "model" in report:
        table.add_column("auto-coded", justify="right")
        table.add_column("its precision", justify="right")
    sources = sorted({s for r in report.values() for s in r["per_source"]})
    for source in sources:
        cells: list[str] = []
        n = "-"
        for r in report.values():
            m = r["per_source"].get(source)
            n = str(m["n"]) if m else n
            cells += [f"{m['accuracy']:.3f}", f"{m['top3']:.3f}"] if m else ["-", "-"]
        if "model" in report:
            m = report["model"]["per_source"].get(source, {})
            auto, precision = m.get("auto_coded"), m.get("auto_coded_precision")
            cells += [
                "-" if auto is None else f"{auto:.3f}",
                "-" if precision is None else f"{precision:.3f}",
            ]
        table.add_row(source, n, *cells)
    Console().print(table)
    hashes = {r.get("data_hash") for r in report.values()}
    if len(hashes) > 1:
        print("warning: the systems were scored on different test records (the corpus or split changed)")


def _routing_cells(m: dict[str, Any]) -> list[str]:
    """ECE and coverage at 95% precision of the calibrated confidence (the router's when the model has
    routing.json), and the share the model auto-codes with its precision."""
    routing = m.get("routing")
    if routing is None:
        return [f"{m['ece']:.3f}", f"{m['coverage']['0.95']['unit_only']['coverage']:.3f}", "-", "-"]
    precision = routing.get("auto_coded_precision")
    return [
        f"{routing['ece']:.3f}",
        f"{routing['coverage']['0.95']['coverage']:.3f}",
        f"{routing.get('auto_coded', 0):.3f}",
        "-" if precision is None else f"{precision:.3f}",
    ]


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """One row per (dev set, system), one column per metric."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Dev-set accuracy (correct = any accepted code)")
    table.add_column("dev set")
    table.add_column("system")
    table.add_column("n", justify="right")
    for _, label in COLUMNS:
        table.add_column(label, justify="right")
    table.add_column("texts/s", justify="right")
    for label in ("ECE", "cov@95%", "auto-coded", "its precision"):
        table.add_column(label, justify="right")
    sets = sorted({s for r in results.values() for s in r["sets"]})
    for s in sets:
        for system, r in results.items():
            m = r["sets"].get(s)
            if m is None:
                continue
            speed = f"{m['texts_per_second']:.0f}" if "texts_per_second" in m else "-"
            table.add_row(
                s, system, str(m["n"]), *(f"{m[key]:.3f}" for key, _ in COLUMNS), speed, *_routing_cells(m)
            )
    Console().print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, help="model directory (default: the registered best model)")
    parser.add_argument("--devsets", type=Path, default=DEVSETS_DIR)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-test-split", action="store_true", help="skip the per-source test-split table")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--language", default="", help="send every dev record with this `language` hint (ISO 639-1)"
    )
    parser.add_argument("--output", type=Path, help="JSON path (default: bench/results/accuracy-<time>.json)")
    args = parser.parse_args(argv)
    if args.language and args.language not in LANGUAGES:
        parser.error(f"--language: {args.language!r} is not one of {', '.join(LANGUAGES)}")

    devsets = load_devsets(args.devsets)
    if not devsets:
        raise SystemExit(f"no dev sets found in {args.devsets}")
    model_dir = args.model_dir
    if model_dir is None:
        from shared.registry import best_model_dir

        model_dir = best_model_dir(CommonSettings())
    results: dict[str, dict[str, Any]] = {}
    if model_dir is not None:
        model = evaluate_model_dir(Path(model_dir), devsets, args.threads, args.language)
        results[f"model {model['version']}"] = model
    else:
        print("no model directory given and no best model registered: baseline only")
    if not args.no_baseline:
        results["tfidf+svm baseline"] = evaluate_baseline(devsets)
    print_table(results)
    test_split: dict[str, Any] = {}
    if not args.no_test_split:
        test_split = test_split_report(Path(model_dir) if model_dir else None, not args.no_baseline)
        print_test_split(test_split)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output or RESULTS_DIR / f"accuracy-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"created": stamp, "machine": platform.node(), "results": results, "test_split": test_split}
    path.write_text(json.dumps(payload, indent=1, default=float))
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
