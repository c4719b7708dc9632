"""A cross-encoder reranker over the model's top candidates (issue 10: "retrieve, then rerank").

    python -m bench.experiments.cross_rerank MODEL_DIR [--minutes 15] [--k 5] [--negatives 3]

The shipped second stage (shared.model.rerank) rescores candidates from features of the first stage. This
one reads the record and each candidate unit group together, as the Eurostat challenge's top entries and
TGRE do: a MiniLM cross-encoder (started from the model's fine-tuned encoder, a fresh linear score) on
"record [SEP] group title: example titles". Trained here, time-boxed, bf16 autocast on CPU:
- queries: the model's own training records (the first `train` entries of its kNN index, encoded by the
  fine-tuned encoder after training), candidates = the gold group + the head's highest-scoring wrong groups
  (hard negatives, mostly siblings), listwise softmax over them;
- first stage on validation: the model as shipped but with validation's own entries removed from the kNN and
  lexical indexes (as training's stages see them); on the dev sets: the model as shipped.
Final score of each of the top-k candidates: log p_first + w * cross score, w chosen on validation (highest
top-1, ties to the lower weight); the dev sets are only scored, at that w. Candidate texts use the official
group title and ISCO-08's own example titles only, so no held-out ESCO title appears in them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from bench.devsets import accepted_codes, load_devsets
from bench.experiments.exp_common import held_out_signals
from shared.corpus import load_isco_group_texts
from shared.model.scorer import UnitScorer
from shared.settings import CommonSettings
from shared.taxonomy import get_taxonomy

WEIGHTS = [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 100.0]


def group_texts(codes: list[str]) -> list[str]:
    """Per unit group: its official title and up to eight of ISCO-08's example titles."""
    taxonomy = get_taxonomy()
    groups = load_isco_group_texts(CommonSettings())
    out = []
    for code in codes:
        examples: list[str] = []
        for g in groups.get(code, []):
            examples += [e for e in g.examples or [] if e.lower() not in {x.lower() for x in examples}]
        out.append(f"{taxonomy.title(code)}: {', '.join(examples[:8])}")
    return out


class CrossEncoder(torch.nn.Module):
    def __init__(self, encoder_dir: Path):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(encoder_dir)
        self.score = torch.nn.Linear(self.encoder.config.hidden_size, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.score(pooled).squeeze(-1)


def pair_batch(
    tokenizer, queries: list[str], candidates: list[str], max_length: int
) -> dict[str, torch.Tensor]:
    return dict(
        tokenizer(
            queries, candidates, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
    )


def score_pairs(model, tokenizer, queries, candidates, max_length, batch=128) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for s in range(0, len(queries), batch):
            out.append(
                model(pair_batch(tokenizer, queries[s : s + batch], candidates[s : s + batch], max_length))
                .float()
                .numpy()
            )
    return np.concatenate(out)


def rerank_scores(model, tokenizer, texts, first, cand_text, k, max_length):
    top = np.argsort(-first, axis=1)[:, :k]
    queries = [t for t in texts for _ in range(k)]
    cands = [cand_text[j] for row in top for j in row]
    cross = score_pairs(model, tokenizer, queries, cands, max_length).reshape(len(texts), k)
    return top, cross


def accuracy(top, first, cross, w, accepted, codes, n=1) -> float:
    lp = np.log(np.clip(np.take_along_axis(first, top, axis=1), 1e-12, None))
    order = np.argsort(-(lp + w * cross), axis=1)[:, :n]
    picked = np.take_along_axis(top, order, axis=1)
    return float(np.mean([any(codes[j] in a for j in row) for row, a in zip(picked, accepted, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--queries", type=int, default=16, help="queries per step")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-5)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    scorer = UnitScorer.load(args.model_dir, backend="torch", quantize="none", device="cpu")
    codes = scorer.codes
    cand_text = group_texts(codes)
    knn = scorer.signals.knn
    assert knn is not None and knn.texts is not None
    held_signals, val_idx = held_out_signals(scorer, args.model_dir)
    n_train = int(val_idx[0])
    train_texts, train_y = knn.texts[:n_train], knn.labels[:n_train]
    head = scorer.head_logits(knn.embeddings[:n_train])

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir / "encoder")
    model = CrossEncoder(args.model_dir / "encoder")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    t0, steps, seen, losses = time.time(), 0, 0, []
    order = rng.permutation(n_train)
    model.train()
    while time.time() - t0 < args.minutes * 60:
        idx = order[seen % n_train : seen % n_train + args.queries]
        seen += len(idx)
        queries, cands = [], []
        for i in idx:
            wrong = [j for j in np.argsort(-head[i])[: args.negatives + 1] if j != train_y[i]][
                : args.negatives
            ]
            for j in [int(train_y[i]), *wrong]:
                queries.append(train_texts[i])
                cands.append(cand_text[j])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(pair_batch(tokenizer, queries, cands, args.max_length)).float()
        loss = F.cross_entropy(logits.view(len(idx), -1), torch.zeros(len(idx), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        losses.append(loss.item())
        if steps % 50 == 0:
            print(
                f"step {steps}, {seen} queries, loss {np.mean(losses[-50:]):.3f}, {time.time() - t0:.0f}s",
                flush=True,
            )
    train_s = time.time() - t0

    results: dict = {
        "model": str(args.model_dir),
        "steps": steps,
        "queries": seen,
        "train_seconds": round(train_s),
        "k": args.k,
        "negatives": args.negatives,
        "max_length": args.max_length,
    }
    # validation: first stage without validation's own index entries
    val_texts = [knn.texts[i] for i in val_idx]
    val_accept = [{codes[int(knn.labels[i])]} for i in val_idx]
    scorer.signals, shipped = held_signals, scorer.signals
    val_first = scorer.unit_probabilities(val_texts)
    scorer.signals = shipped
    t1 = time.time()
    top, cross = rerank_scores(model, tokenizer, val_texts, val_first, cand_text, args.k, args.max_length)
    results["pairs_per_second"] = round(len(val_texts) * args.k / (time.time() - t1), 1)
    grid = {w: accuracy(top, val_first, cross, w, val_accept, codes) for w in WEIGHTS}
    best = max(WEIGHTS, key=lambda w: (grid[w], -w))
    results["validation"] = {"n": len(val_texts), "top1_by_weight": grid, "weight": best}
    print(f"validation top-1 by weight: {grid}; chosen {best}", flush=True)
    for name, dev in load_devsets().items():
        accepted = accepted_codes(dev)
        first = scorer.unit_probabilities(dev.texts())
        top, cross = rerank_scores(model, tokenizer, dev.texts(), first, cand_text, args.k, args.max_length)
        results[name] = {
            "first_stage": [accuracy(top, first, cross, 0.0, accepted, codes, n) for n in (1, 3)],
            "reranked": [accuracy(top, first, cross, best, accepted, codes, n) for n in (1, 3)],
            "cross_alone": [accuracy(top, first, cross, 100.0, accepted, codes, n) for n in (1, 3)],
            f"top{args.k}_recall": accuracy(top, first, cross, 0.0, accepted, codes, args.k),
            # a diagnostic of what any weight could give, never a choice
            "top1_by_weight": {w: accuracy(top, first, cross, w, accepted, codes) for w in WEIGHTS},
        }
        print(name, results[name], flush=True)
    out = Path("bench/results") / f"cross_rerank-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
