"""Signals benchmark: each signal's dev-set gain against its CPU cost, in the same run, on one model.

Usage:
    python -m bench.signals                       # the registry's best model, default backend
    python -m bench.signals --model-dir DIR [--backend onnx --quantize int8] [--threads 2]

For each dev set (ILO titles, O*NET title + duties) it encodes the texts once with the scorer every service
uses, then times and scores separately: the head (cosine + temperature), the kNN vote over the stored training
embeddings, and the lexical vote (character n-gram TF-IDF kNN); and top-1 of head alone, head + kNN,
head + lexical and head + both, mixed with the model's own weights (model.json; a signal the model stores with
weight 0 is scored at the profile weight given by --knn-weight / --lexical-weight). Writes
bench/results/signals-<timestamp>.json.

Measured (2-core machine shared with other jobs; quick-profile model, 25k kNN entries; default backend
ONNX int8): see the "Signals" table in README.md, which is the output of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.accuracy import DEVSETS_DIR, RESULTS_DIR, _accepted, load_devsets, topk_accuracy


def _timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def measure(
    model_dir: Path,
    backend: str = "auto",
    quantize: str = "int8",
    threads: int | None = None,
    knn_weight: float = 0.2,
    lexical_weight: float = 0.05,
) -> dict[str, Any]:
    from shared.model.scorer import UnitScorer, softmax
    from shared.model.signals import KnnConfig, KnnIndex, LexicalConfig, knn_probabilities, mix_probabilities

    scorer = UnitScorer.load(model_dir, backend=backend, quantize=quantize, threads=threads)
    signals = scorer.signals
    knn_cfg = signals.knn_config or KnnConfig(k=10, tau=0.1)
    lex_cfg = signals.lexical_config or LexicalConfig()
    w_knn = knn_cfg.weight or knn_weight
    w_lex = lex_cfg.weight or lexical_weight
    codes, n_codes = scorer.codes, len(scorer.codes)
    out: dict[str, Any] = {
        "model": scorer.describe(),
        "weights": {"knn": w_knn, "lexical": w_lex},
        "index_entries": {
            "knn": len(signals.knn) if signals.knn is not None else 0,
            "lexical": len(signals.lexical) if signals.lexical is not None else 0,
        },
        "sets": {},
    }
    for name, dev in load_devsets(DEVSETS_DIR).items():
        texts, accept = dev.texts(), _accepted(dev)
        scorer.embed(texts[:16])  # warm-up
        emb, t_enc = _timed(lambda texts=texts: scorer.embed(texts))
        head, t_head = _timed(lambda emb=emb: softmax(scorer.head_logits(emb) / scorer.temperature))
        row: dict[str, Any] = {"n": len(texts), "ms_per_record": {"encoder": 1000 * t_enc / len(texts)}}
        row["ms_per_record"]["head"] = 1000 * t_head / len(texts)
        variants = {"head": head}
        parts: list[tuple[np.ndarray, float]] = []
        if signals.knn is not None:
            knn, t_knn = _timed(lambda emb=emb: knn_probabilities(emb, signals.knn, knn_cfg, n_codes))
            row["ms_per_record"]["knn"] = 1000 * t_knn / len(texts)
            variants["head + knn"] = mix_probabilities(head, [(knn, w_knn)])
            parts.append((knn, w_knn))
        if signals.lexical is not None:
            lex, t_lex = _timed(lambda texts=texts: signals.lexical.probabilities(texts, lex_cfg, n_codes))
            row["ms_per_record"]["lexical"] = 1000 * t_lex / len(texts)
            variants["head + lexical"] = mix_probabilities(head, [(lex, w_lex)])
            parts.append((lex, w_lex))
        if len(parts) == 2:
            variants["head + knn + lexical"] = mix_probabilities(head, parts)
        # smaller kNN indexes (seeded samples of the stored one): accuracy against cost
        if signals.knn is not None:
            for size in (30000, 15000, 7500):
                if size >= len(signals.knn):
                    continue
                keep = np.sort(np.random.default_rng(0).choice(len(signals.knn), size, replace=False))
                small = KnnIndex(signals.knn.embeddings[keep], signals.knn.labels[keep])
                knn_small, t_small = _timed(
                    lambda emb=emb, small=small: knn_probabilities(emb, small, knn_cfg, n_codes)
                )
                row["ms_per_record"][f"knn {size}"] = 1000 * t_small / len(texts)
                variants[f"head + knn {size}"] = mix_probabilities(head, [(knn_small, w_knn)])
        row["top1"] = {k: topk_accuracy(p, accept, codes) for k, p in variants.items()}
        row["one_record_ms"] = one_record_costs(scorer, texts[:100], knn_cfg, lex_cfg)
        out["sets"][name] = row
    return out


def one_record_costs(scorer: Any, texts: list[str], knn_cfg: Any, lex_cfg: Any) -> dict[str, float]:
    """Median ms of each stage for one record per call (what a lone /predict/job request pays)."""
    from shared.model.signals import knn_probabilities

    signals, n_codes = scorer.signals, len(scorer.codes)
    costs: dict[str, list[float]] = {"encoder": [], "knn": [], "lexical": []}
    for text in texts:
        emb, t = _timed(lambda text=text: scorer.embed([text]))
        costs["encoder"].append(t)
        if signals.knn is not None:
            costs["knn"].append(
                _timed(lambda emb=emb: knn_probabilities(emb, signals.knn, knn_cfg, n_codes))[1]
            )
        if signals.lexical is not None:
            costs["lexical"].append(
                _timed(lambda text=text: signals.lexical.probabilities([text], lex_cfg, n_codes))[1]
            )
    return {k: 1000 * float(np.median(v)) for k, v in costs.items() if v}


def print_table(result: dict[str, Any]) -> None:
    print(f"model {result['model']}; weights {result['weights']}; entries {result['index_entries']}")
    for name, row in result["sets"].items():
        costs = row["ms_per_record"]
        total = sum(costs.values())
        print(f"\n{name} ({row['n']} records)")
        print(
            "  cost ms/record: "
            + ", ".join(f"{k} {v:.3f} ({100 * v / total:.0f}%)" for k, v in costs.items())
        )
        print(
            "  one record per call, median ms: "
            + ", ".join(f"{k} {v:.2f}" for k, v in row["one_record_ms"].items())
        )
        base = row["top1"]["head"]
        for variant, acc in row["top1"].items():
            print(f"  top-1 {variant:<22} {acc:.3f} ({100 * (acc - base):+.1f} points)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--quantize", default="int8")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        from shared.registry import best_model_dir
        from shared.settings import CommonSettings

        found = best_model_dir(CommonSettings())
        if found is None:
            raise SystemExit("no registered best model: pass --model-dir")
        model_dir = Path(found)
    result = measure(model_dir, args.backend, args.quantize, args.threads)
    result["meta"] = {
        "model_dir": str(model_dir),
        "loadavg": os.getloadavg(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print_table(result)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"signals-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
