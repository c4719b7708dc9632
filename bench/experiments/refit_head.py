"""How to refit the cosine head on every labelled record, chosen on held-out occupations (never dev sets).

A trained full model's kNN index holds the fine-tuned encoder's embeddings of every training, validation and
test record (in that order; `index_validation`, `index_test`). Here the head is refitted from its trained
weights on the training + test entries only, for several schedules, and scored head-only on the validation
entries (occupations neither the head nor the refit saw); the pipeline's `refit_head_*` settings take the
schedule with the lowest validation log loss.

    python -m bench.experiments.refit_head var/models/VERSION

Measured on v20261201-104113-a334 (full profile, 3.05 epochs), 2026-12-01 11:33 UTC, load ~1:
as trained: top-1 0.6057, log loss 1.7503; 1 ep 1e-4: 0.6073 / 1.7421; 2 ep 1e-4: 0.6070 / 1.7361;
2 ep 3e-4: 0.6050 / 1.7285; 3 ep 3e-4: 0.6044 / 1.7258 (lowest loss: the setting); 5 ep 3e-4: 0.5997 / 1.7282;
2 ep 1e-3: 0.5974 / 1.7415; 5 ep 1e-3: 0.5925 / 1.7481. Unseen occupations neither gain nor lose top-1;
the refit's gain is on titles of the held-out occupations, which the product then knows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from services.trainer.head import train_head
from shared.model.scorer import UnitScorer

SCHEDULES = [(1, 1e-4), (2, 1e-4), (2, 3e-4), (3, 3e-4), (5, 3e-4), (2, 1e-3), (5, 1e-3)]


def main(model_dir: str) -> None:
    scorer = UnitScorer.load(model_dir)
    stats = json.loads((Path(model_dir) / "metrics.json").read_text())["training"]["preprocess"]
    n_train, n_val, n_test = stats["train"], stats["val"], stats["test"]
    knn = scorer.signals.knn
    assert knn is not None and len(knn) == n_train + n_val + n_test, "needs a model with every record indexed"
    emb, y = torch.from_numpy(knn.embeddings), torch.from_numpy(knn.labels)
    fit = torch.cat([torch.arange(0, n_train), torch.arange(n_train + n_val, n_train + n_val + n_test)])
    val = torch.arange(n_train, n_train + n_val)
    head0 = torch.from_numpy(scorer.head_t.T.copy())

    def val_score(head: torch.Tensor) -> tuple[float, float]:
        logits = scorer.scale * emb[val] @ F.normalize(head, dim=-1).T / scorer.temperature
        return float((logits.argmax(1) == y[val]).float().mean()), float(F.cross_entropy(logits, y[val]))

    top1, loss = val_score(head0)
    print(f"as trained: top-1 {top1:.4f}, log loss {loss:.4f}")
    for epochs, lr in SCHEDULES:
        head = torch.nn.Parameter(head0.clone())
        scale = torch.tensor(scorer.scale)
        train_head(head, scale, emb[fit], y[fit], epochs=epochs, lr=lr, seed=0)  # the pipeline's refit
        top1, loss = val_score(head.detach())
        print(f"{epochs} epochs at {lr:g}: top-1 {top1:.4f}, log loss {loss:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
