"""Contrastive fine-tuning of the mean-pooled MiniLM on short title pairs (issue 10), time-boxed on CPU.

    python -m bench.experiments.contrastive --minutes 6 [--variants] [--hard-negatives] --tag c1

Pairs: anchor = an ESCO/ISCO title of the training split, positive = another title of the same unit group
(same occupation first: its preferred label). Loss: multiple-negatives ranking (in-batch negatives, scale 20)
with same-label masking (GISTEmbed-style: an in-batch "negative" of the anchor's unit group is dropped);
optional hard negatives: one title of a sibling unit group (same 3-digit minor group) per pair.
Optional title variants (bench/experiments/variants.py) replace the anchor half of the time.

After training it encodes the title-only corpus records and the dev sets into var/cache/<tag>_titles.npy,
<tag>_ilo.npy, <tag>_onet*.npy and prints the same frozen evaluation for base and tuned encoders
(prototype and kNN over the training titles of the occupation split; weights/temperatures are not tuned here).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from bench.devsets import accepted_codes, load_devsets
from bench.experiments.cache_views import CACHE, dev_views
from bench.experiments.encode_base import encode
from bench.experiments.exp_common import knn_probs, occupation_split, prototypes, topk
from shared import variants as V
from shared.corpus import build_default_corpus, label_codes
from shared.model.resources import default_base_model
from shared.text import model_input

TITLE_SOURCES = ("esco_title", "isco_title", "isco_example", "isco_related")


def mean_pool(model, batch):
    h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def build_pairs(records, train_idx, rng, with_duties=False, duties_share=0.5):
    """(anchor, positive, label, minor) over training titles; positives from the same unit group."""
    by_code: dict[str, list[str]] = defaultdict(list)
    for i in train_idx:
        r = records[i]
        if r.source in TITLE_SOURCES:
            by_code[r.isco_code].append(r.job_title.lower())
    pairs = []
    for code, titles in by_code.items():
        titles = list(dict.fromkeys(titles))
        for t in titles:
            others = [o for o in titles if o != t]
            if not others:
                continue
            pairs.append((t, rng.choice(others), code))
    if with_duties:
        # anchors with duties ("title : one sentence"), positives: another title of the group
        for i in train_idx:
            r = records[i]
            titles = by_code.get(r.isco_code, [])
            if r.duties_description and titles and rng.random() < duties_share:
                pairs.append(
                    (model_input(r.job_title, r.duties_description), rng.choice(titles), r.isco_code)
                )
    rng.shuffle(pairs)
    return pairs, by_code


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--hard-negatives", action="store_true")
    ap.add_argument("--no-mask", action="store_true")
    ap.add_argument("--with-duties", action="store_true", help="also anchors with duties (title : sentence)")
    ap.add_argument("--tag", default="c1")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)

    records = build_default_corpus()
    train_idx, _ = occupation_split(records)
    pairs, by_code = build_pairs(records, train_idx, rng, with_duties=args.with_duties)
    codes = label_codes()
    pos = {c: i for i, c in enumerate(codes)}
    siblings: dict[str, list[str]] = defaultdict(list)
    for c in by_code:
        siblings[c[:3]].append(c)
    print("pairs", len(pairs), flush=True)

    base = default_base_model()
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base)
    model.embeddings.word_embeddings.weight.requires_grad_(False)  # as the Trainer recipe: faster, no drift
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    model.train()
    t0 = time.time()
    step, seen = 0, 0
    budget = args.minutes * 60
    warm = 30
    while time.time() - t0 < budget:
        chunk = pairs[(step * args.batch) % len(pairs) :][: args.batch]
        if len(chunk) < 8:
            step += 1
            continue
        anchors = [
            V.variant(a, rng) if args.variants and " : " not in a and rng.random() < 0.5 else a
            for a, _, _ in chunk
        ]
        positives = [p for _, p, _ in chunk]
        labels = torch.tensor([pos[c] for _, _, c in chunk])
        extra, extra_labels = [], []
        if args.hard_negatives:
            for _, _, c in chunk:
                sib = [s for s in siblings[c[:3]] if s != c]
                if sib:
                    s = rng.choice(sib)
                    extra.append(rng.choice(by_code[s]))
                    extra_labels.append(pos[s])
        cand_texts = positives + extra
        cand_labels = torch.cat([labels, torch.tensor(extra_labels, dtype=torch.long)])
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / warm)
        ea = mean_pool(model, tok(anchors, padding=True, truncation=True, max_length=48, return_tensors="pt"))
        ec = mean_pool(
            model, tok(cand_texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
        )
        sims = args.scale * ea @ ec.T
        target = torch.arange(len(anchors))
        if not args.no_mask:
            same = labels[:, None] == cand_labels[None, :]
            same[target, target] = False
            sims = sims.masked_fill(same, -1e4)
        loss = F.cross_entropy(sims, target)
        # symmetric term: positive -> anchor (in-batch), helps short-text alignment
        sims2 = args.scale * ec[: len(anchors)] @ ea.T
        if not args.no_mask:
            same2 = labels[:, None] == labels[None, :]
            same2[target, target] = False
            sims2 = sims2.masked_fill(same2, -1e4)
        loss = 0.5 * (loss + F.cross_entropy(sims2, target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        seen += len(anchors)
        if step % 20 == 0 or step == 5:
            print(f"step {step} pairs {seen} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
    train_min = (time.time() - t0) / 60
    print(
        f"trained {step} steps, {seen} pairs ({seen / len(pairs):.2f} epochs) in {train_min:.1f} min",
        flush=True,
    )
    out_dir = CACHE / f"enc_{args.tag}"
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    t1 = time.time()
    for name, texts in dev_views().items():
        np.save(CACHE / f"{args.tag}_{name}.npy", encode(texts, str(out_dir), max_length=64))
    title_idx = [i for i, r in enumerate(records) if r.source in TITLE_SOURCES]
    titles = [model_input(records[i].job_title, "") for i in title_idx]
    np.save(CACHE / f"{args.tag}_titles.npy", encode(titles, str(out_dir), max_length=64))
    print(f"encoded in {(time.time() - t1) / 60:.1f} min", flush=True)
    report(args.tag, records, title_idx, train_idx)


def report(tag, records, title_idx, train_idx):
    """Prototype and kNN over training titles (title-only records), base vs tag, on both dev sets."""
    codes = label_codes()
    pos = {c: i for i, c in enumerate(codes)}
    devs = load_devsets()
    train_set = set(train_idx.tolist())
    keep = np.array([k for k, i in enumerate(title_idx) if i in train_set])
    y = np.array([pos[records[title_idx[k]].isco_code] for k in keep])
    for t in ("base", tag):
        if t == "base":
            full = np.load(CACHE / "base_corpus.npy")
            emb = full[np.array(title_idx)[keep]]
        else:
            emb = np.load(CACHE / f"{t}_titles.npy")[keep]
        proto = prototypes(emb, y, len(codes))
        row = []
        for name, key in (("ilo", "ilo_titles_dev"), ("onet", "onet_jobs_dev")):
            q = np.load(CACHE / f"{t}_{name}.npy")
            acc = accepted_codes(devs[key])
            pp = q @ proto.T
            pk = knn_probs(q, emb, y, len(codes), k=10, tau=0.05)
            mix = (
                0.5
                * np.exp((pp - pp.max(1, keepdims=True)) * 30)
                / np.exp((pp - pp.max(1, keepdims=True)) * 30).sum(1, keepdims=True)
                + 0.5 * pk
            )
            row.append(
                f"{name}: proto {topk(pp, acc, codes):.3f}/{topk(pp, acc, codes, 3):.3f} "
                f"knn {topk(pk, acc, codes):.3f}/{topk(pk, acc, codes, 3):.3f} "
                f"mix {topk(mix, acc, codes):.3f}/{topk(mix, acc, codes, 3):.3f}"
            )
        print(t, " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
