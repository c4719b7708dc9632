"""The contrastive stage: teach the encoder that titles of one unit group belong together (issue 10).

Runs before the head stage when the profile gives it a time budget (`contrastive_seconds` > 0).
Pairs: each training title (a record without duties) with another title of the same unit group. Loss:
multiple-negatives ranking over the batch, both directions, scale 20, with same-label masking (an in-batch
"negative" of the anchor's unit group is not a negative; GISTEmbed-style). Half of the anchors are replaced by
a variant people write (`shared.variants`: abbreviated, gender-swapped, with a seniority word, inverted).
Short inputs (titles are ~8 tokens), word embeddings frozen as in the trainer stage, linear warm-up, a
wall-clock budget. Measured: bench/experiments/contrastive.py.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from shared import variants
from shared.text import TITLE_SEPARATOR

if TYPE_CHECKING:
    from services.trainer.state import TrainState

log = logging.getLogger(__name__)


def title_pairs(texts: list[str], labels: list[int], rng: random.Random) -> list[tuple[str, str, int]]:
    """(anchor, positive, label) for every title-only text whose unit group has another title; shuffled."""
    by_label: dict[int, list[str]] = defaultdict(list)
    for text, label in zip(texts, labels, strict=True):
        if TITLE_SEPARATOR not in text and len(text) <= 120:
            by_label[label].append(text)
    pairs = []
    for label in sorted(by_label):
        titles = list(dict.fromkeys(by_label[label]))
        if len(titles) < 2:
            continue
        for i, title in enumerate(titles):
            other = titles[(i + 1 + rng.randrange(len(titles) - 1)) % len(titles)]
            pairs.append((title, other, label))
    rng.shuffle(pairs)
    return pairs


def masked_mnrl(
    anchors: torch.Tensor, positives: torch.Tensor, labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """Symmetric in-batch multiple-negatives ranking loss; same-label pairs off the diagonal are masked."""
    target = torch.arange(len(labels))
    same = labels[:, None] == labels[None, :]
    same[target, target] = False
    sims = (scale * anchors @ positives.T).masked_fill(same, -1e4)
    return 0.5 * (F.cross_entropy(sims, target) + F.cross_entropy(sims.T, target))


def contrastive_stage(state: TrainState) -> None:
    """Contrastive title training of the encoder for `contrastive_seconds` (skipped when 0, for corrections
    and without titles)."""
    config = state.config
    if config.contrastive_seconds <= 0 or state.init_model_dir is not None:
        return
    model, tokenizer = state.require_model()
    rng = random.Random(config.seed)
    pairs = title_pairs(state.train_texts, state.train_labels, rng)
    if len(pairs) < config.contrastive_batch_size:
        return
    encoder = model.encoder.to(state.device)
    encoder.train()
    word_embeddings = encoder.get_input_embeddings().weight
    was_trainable = word_embeddings.requires_grad
    word_embeddings.requires_grad_(False)
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.contrastive_learning_rate, weight_decay=0.01)
    batch = config.contrastive_batch_size
    started = time.monotonic()
    step = seen = 0
    warmup = 30
    loss_value = float("nan")
    while time.monotonic() - started < config.contrastive_seconds:
        start = (step * batch) % len(pairs)
        chunk = pairs[start : start + batch]
        if len(chunk) < batch // 2:
            step += 1
            continue
        anchors = [
            variants.variant(a, rng) if config.contrastive_variants and rng.random() < 0.5 else a
            for a, _, _ in chunk
        ]
        for group in optimizer.param_groups:
            group["lr"] = config.contrastive_learning_rate * min(1.0, (step + 1) / warmup)
        enc_a = tokenizer(anchors, padding=True, truncation=True, max_length=32, return_tensors="pt")
        enc_p = tokenizer(
            [p for _, p, _ in chunk], padding=True, truncation=True, max_length=32, return_tensors="pt"
        )
        emb_a = model.embed(enc_a["input_ids"].to(state.device), enc_a["attention_mask"].to(state.device))
        emb_p = model.embed(enc_p["input_ids"].to(state.device), enc_p["attention_mask"].to(state.device))
        labels = torch.tensor([label for _, _, label in chunk], device=state.device)
        loss = masked_mnrl(emb_a, emb_p, labels, config.contrastive_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        step += 1
        seen += len(chunk)
        if step % 50 == 0:
            log.info(
                "contrastive step %d, %d pairs, loss %.3f, %.0fs",
                step,
                seen,
                loss_value,
                time.monotonic() - started,
            )
    word_embeddings.requires_grad_(was_trainable)
    encoder.eval()
    state.contrastive = {
        "steps": step,
        "pairs_seen": seen,
        "epochs": round(seen / len(pairs), 3),
        "pairs": len(pairs),
        "final_loss": round(loss_value, 4),
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info("contrastive stage: %s", state.contrastive)
