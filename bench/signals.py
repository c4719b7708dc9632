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

Measured 14:01 UTC in one run on an idle machine (load 1.0): the registered full model v20261201-130342-d8e5
(50,649 kNN and lexical entries, weights 0.2 / 0.05, lexical index pruned at `max_df` 0.01), default backend
ONNX int8; bench/results/signals-20261201-140108.json. Top-1 ILO titles / O*NET; cost in ms per record,
batched (one record per call, after its encoder pass, in brackets):

| signals | top-1 ILO / O*NET | ILO cost | O*NET cost |
|---|---|---|---|
| encoder (not a signal: for scale) | - | 0.65 (2.2) | 3.15 (5.7) |
| head only | 0.589 / 0.452 | 0.005 | 0.006 |
| + kNN (int8 similarities, ranked by ONNX Runtime) | 0.621 / 0.477 | 0.13 (0.8) | 0.14 (1.0) |
| + lexical, `max_df` 0.01 | 0.592 / 0.461 | 0.08 (0.4) | 0.36 (0.9) |
| + kNN + lexical (the model) | 0.629 / 0.479 | 0.21 | 0.50 |

The second stage (shared/model/rerank.py) on the registered v20261201-155612-a092 (17:19 UTC, idle, load 0.4;
signals-20261201-171949.json): first stage 0.627 / 0.478, reranked 0.632 / 0.497 (+0.5 / +1.9 points) for
0.016 / 0.011 ms per record batched and 0.22 ms for one record.

With kNN ranked in numpy (argpartition over a float copy of the similarities; 13:54 UTC, same model,
signals-20261201-135444.json) kNN cost 0.78 / 0.72 ms per record batched and 1.1 / 1.3 ms for one record.

Earlier, on the quick model v20261201-041936-2d1b (05:27 UTC, load 3.4-4.9, so its costs are noisy): head only
0.587 / 0.409; + lexical with all n-grams 0.591 / 0.416 at 1.96 / 5.56 ms per record batched (about the
encoder's cost on O*NET records); `max_df` 0.05 0.591 / 0.411 at 0.25 / 1.39 ms; `max_df` 0.01 0.591 / 0.409
at 0.07 / 0.46 ms. The old pipeline (float32 kNN, all n-grams) cost 1.25 / 1.20 ms per record batched and
10.3 / 8.7 ms one record per call for kNN, 2.43 / 7.34 ms for lexical.

Kept: kNN (+3.2 / +2.5 points for a twentieth of the encoder's time on title + duties records, a fifth
on short titles), with int8 similarities ranked inside ONNX Runtime (same neighbours as float32); the
lexical signal pruned to n-grams in at most 1% of the training texts (+0.8 / +0.2 points on top of kNN at
a fifteenth of its cost with every n-gram; the profiles' `lexical_max_df`).
Tried and dropped: kNN over only the entries of the head's 16-64 most probable groups (same top-1, but those
groups hold most entries, so one record cost 8 ms instead of 2 ms).
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

from bench.accuracy import RESULTS_DIR
from bench.devsets import DEVSETS_DIR, accepted_codes, load_devsets, topk_accuracy


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
    from scipy.special import softmax

    from shared.model.knn import KnnConfig, knn_probabilities
    from shared.model.lexical import LexicalConfig, LexicalIndex
    from shared.model.scorer import UnitScorer
    from shared.model.signals import mix_probabilities

    scorer = UnitScorer.load(model_dir, backend=backend, quantize=quantize, threads=threads)
    signals = scorer.signals
    knn_cfg = signals.knn_config or KnnConfig(k=10, tau=0.1)
    lex_cfg = signals.lexical_config or LexicalConfig()
    w_knn = knn_cfg.weight or knn_weight
    w_lex = lex_cfg.weight or lexical_weight
    codes, n_codes = scorer.codes, len(scorer.codes)
    # signal variants: name -> (weight, fn(texts, embeddings, head) -> probabilities)
    variants: dict[str, tuple[float, Any]] = {}
    if signals.knn is not None:
        variants["knn"] = (w_knn, lambda t, e, h: knn_probabilities(e, signals.knn, knn_cfg, n_codes))
    if signals.lexical is not None:
        stored = LexicalIndex.load(model_dir, lex_cfg)  # as stored: the scorer's copy may be pruned already
        # the index is stored pruned at the model's own max_df: only stricter pruning can be measured from it
        stricter = (m for m in (1.0, 0.05, 0.01) if m < lex_cfg.max_df)
        for max_df in sorted({lex_cfg.max_df, *stricter}, reverse=True):
            cfg = lex_cfg.model_copy(update={"max_df": max_df})
            index = stored.pruned(cfg)
            variants[f"lexical max_df {max_df}"] = (
                w_lex,
                lambda t, e, h, cfg=cfg, index=index: index.probabilities(t, cfg, n_codes),
            )
    out: dict[str, Any] = {
        "model": scorer.describe(),
        "weights": {"knn": w_knn, "lexical": w_lex},
        "index_entries": {
            "knn": len(signals.knn) if signals.knn is not None else 0,
            "lexical": len(signals.lexical) if signals.lexical is not None else 0,
        },
        "sets": {},
    }
    reranker = signals.reranker
    for name, dev in load_devsets(DEVSETS_DIR).items():
        texts, accept = dev.texts(), accepted_codes(dev)
        scorer.embed(texts[:16])  # warm-up
        emb, t_enc = _timed(lambda texts=texts: scorer.embed(texts))
        head, t_head = _timed(lambda emb=emb: softmax(scorer.head_logits(emb) / scorer.temperature, axis=1))
        row: dict[str, Any] = {"n": len(texts), "ms_per_record": {"encoder": 1000 * t_enc / len(texts)}}
        row["ms_per_record"]["head"] = 1000 * t_head / len(texts)
        probs: dict[str, np.ndarray] = {}
        for variant, (_, fn) in variants.items():
            fn(texts[:16], emb[:16], head[:16])  # warm-up: the int8 kNN index is built on first use
            probs[variant], seconds = _timed(lambda fn=fn, t=texts, e=emb, h=head: fn(t, e, h))
            row["ms_per_record"][variant] = 1000 * seconds / len(texts)
        mixes = {"head": head}
        for variant, (weight, _) in variants.items():
            mixes[f"head + {variant}"] = mix_probabilities(head, [(probs[variant], weight)])
        knn_names = [v for v in variants if v.startswith("knn")]
        lex_names = [v for v in variants if v.startswith("lexical")]
        for knn_name in knn_names:
            for lex_name in lex_names:
                mixes[f"head + {knn_name} + {lex_name}"] = mix_probabilities(
                    head, [(probs[knn_name], w_knn), (probs[lex_name], w_lex)]
                )
        if reranker is not None:  # the second stage reads the first stage's signals and their similarities
            (mixed, parts), _ = _timed(lambda t=texts, e=emb, h=head: signals.first_stage(t, e, h))
            mixes["first stage (the model's mix)"] = mixed
            mixes["reranked (the model)"], seconds = _timed(
                lambda m=mixed, p=parts: reranker.rerank(codes, m, p)
            )
            row["ms_per_record"]["rerank"] = 1000 * seconds / len(texts)
        row["top1"] = {k: topk_accuracy(p, accept, codes) for k, p in mixes.items()}
        row["one_record_ms"] = one_record_costs(scorer, texts[:100], variants)
        out["sets"][name] = row
    return out


def one_record_costs(
    scorer: Any, texts: list[str], variants: dict[str, tuple[float, Any]]
) -> dict[str, float]:
    """Median ms of each stage for one record per call (what a lone /predict/job request pays)."""
    from scipy.special import softmax

    costs: dict[str, list[float]] = {"encoder": [], **{v: [] for v in variants}, "rerank": []}
    reranker = scorer.signals.reranker
    for text in texts:
        emb, t = _timed(lambda text=text: scorer.embed([text]))
        costs["encoder"].append(t)
        head = softmax(scorer.head_logits(emb) / scorer.temperature, axis=1)
        if reranker is not None:
            mixed, parts = scorer.signals.first_stage([text], emb, head)
            costs["rerank"].append(_timed(lambda m=mixed, p=parts: reranker.rerank(scorer.codes, m, p))[1])
        for variant, (_, fn) in variants.items():
            costs[variant].append(
                _timed(lambda fn=fn, text=text, emb=emb, head=head: fn([text], emb, head))[1]
            )
    return {k: 1000 * float(np.median(v)) for k, v in costs.items() if v}


def print_table(result: dict[str, Any]) -> None:
    print(f"model {result['model']}; weights {result['weights']}; entries {result['index_entries']}")
    for name, row in result["sets"].items():
        costs = row["ms_per_record"]
        print(f"\n{name} ({row['n']} records)")
        print("  batched, ms/record: " + ", ".join(f"{k} {v:.3f}" for k, v in costs.items()))
        print(
            "  one record per call, median ms: "
            + ", ".join(f"{k} {v:.2f}" for k, v in row["one_record_ms"].items())
        )
        base = row["top1"]["head"]
        for variant, acc in row["top1"].items():
            print(f"  top-1 {variant:<58} {acc:.3f} ({100 * (acc - base):+.1f} points)")


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
