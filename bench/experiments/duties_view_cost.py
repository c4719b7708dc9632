"""What the duties view costs and what cheaper forms of it keep (issue 10: the fast path's speed).

    python -m bench.experiments.duties_view_cost MODEL_DIR

The shipped duties view encodes a record's duties a second time, alone: ~0.85x the tokens of the whole
record again. Cheaper forms compared here, each with its weight chosen on validation's records with duties
(held-out ESCO occupations; validation entries removed from the kNN and lexical indexes, as training's
stage sees them), then scored on the O*NET dev records at that weight:
- `duties`: the duties alone, as shipped;
- `duties[:k]`: the duties alone, cut to their first k tokens;
- `span`: no second pass: the whole record's token states mean-pooled over its duties tokens only.
Torch fp32 on CPU (the span needs token states); extra tokens are per record with duties, relative to the
whole record's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from bench.experiments.exp_common import held_out_signals
from services.trainer.metrics import expected_calibration_error
from shared.model.classifier import encode_views
from shared.model.scorer import UnitScorer, fuse_views
from shared.model.signals import Signals
from shared.text import duties_part

GRID = [round(0.05 * i, 2) for i in range(11)]


def whole_and_span(scorer: UnitScorer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One encoder pass: each text's embedding, and its duties tokens' own mean-pooled embedding."""
    model = scorer.encoder.model  # type: ignore[attr-defined]
    return encode_views(model, scorer.tokenizer, texts, max_length=scorer.max_length)


def views(scorer: UnitScorer, signals: Signals, texts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The whole records' probabilities and each cheaper view's, with its extra tokens per record."""

    def probs(view_texts: list[str], emb: np.ndarray, with_signals: bool = True) -> np.ndarray:
        head = softmax(scorer.head_logits(emb) / scorer.temperature, axis=1)
        return signals.mix(view_texts, emb, head) if with_signals else head

    duties = [duties_part(t) for t in texts]
    whole_emb, span_emb = whole_and_span(scorer, texts)
    out = {"span": probs(duties, span_emb), "span head": probs(duties, span_emb, False)}
    full = scorer.max_length
    for k in (None, 8, 12, 16, 24):
        scorer.max_length = full if k is None else k + 2  # [CLS] ... [SEP]
        try:
            name = "duties" if k is None else f"duties[:{k}]"
            emb = scorer.embed(duties)
            out[name], out[f"{name} head"] = probs(duties, emb), probs(duties, emb, False)
        finally:
            scorer.max_length = full
    return probs(texts, whole_emb), out


def token_share(scorer: UnitScorer, texts: list[str]) -> dict[str, float]:
    def mean_len(xs: list[str], max_length: int) -> float:
        ids = scorer.tokenizer(xs, truncation=True, max_length=max_length)["input_ids"]
        return float(np.mean([len(x) for x in ids]))

    duties = [duties_part(t) for t in texts]
    whole = mean_len(texts, scorer.max_length)
    out = {"span": 0.0, "duties": mean_len(duties, scorer.max_length) / whole}
    for k in (8, 12, 16, 24):
        out[f"duties[:{k}]"] = mean_len(duties, k + 2) / whole
    return {**out, **{f"{name} head": share for name, share in out.items()}}


def main(model_dir: Path) -> None:
    scorer = UnitScorer.load(model_dir, backend="torch", quantize="none", device="cpu")
    codes = scorer.codes
    signals, val = held_out_signals(scorer, model_dir)
    knn = scorer.signals.knn
    assert knn is not None and knn.texts is not None
    val_texts, val_labels = [knn.texts[i] for i in val], knn.labels[val]
    rows = [i for i, t in enumerate(val_texts) if duties_part(t)]
    v_texts, v_labels = [val_texts[i] for i in rows], val_labels[rows]
    v_whole, v_views = views(scorer, signals, v_texts)
    dev = load_devsets()["onet_jobs_dev"]
    accept = accepted_codes(dev)
    d_texts = dev.texts()
    d_whole, d_views = views(scorer, scorer.signals, d_texts)
    share = token_share(scorer, d_texts)

    def val_score(p: np.ndarray) -> tuple[float, float]:
        nll = float(-np.log(np.clip(p[np.arange(len(v_labels)), v_labels], 1e-12, None)).mean())
        return round(float((p.argmax(1) == v_labels).mean()), 4), -nll

    def dev_row(p: np.ndarray) -> str:
        hit = np.array([codes[j] in ok for j, ok in zip(p.argmax(axis=1), accept, strict=True)])
        ece = expected_calibration_error(p.max(axis=1), hit)
        return f"top-1 {hit.mean():.3f} top-3 {topk_accuracy(p, accept, codes, 3):.3f} ECE {ece:.3f}"

    print(f"{model_dir.name}: validation {len(v_texts)} records with duties, O*NET dev {len(d_texts)}")
    print(f"  {'whole only':12} val {val_score(v_whole)[0]:.4f}  dev {dev_row(d_whole)}")
    for name in v_views:
        scores = {w: val_score(fuse_views(v_whole, v_views[name], w)) for w in GRID}
        w = max(GRID, key=lambda x: scores[x])
        print(
            f"  {name:12} +{share[name]:.2f} tokens  w {w:.2f}  val {scores[w][0]:.4f}  "
            f"dev {dev_row(fuse_views(d_whole, d_views[name], w))}",
            flush=True,
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
