"""Encode the default corpus and the dev sets with the base encoder (mean pooled), cache in /tmp/exp.

Used by the quick experiments (prototype / kNN / TF-IDF combinations) before any fine-tuning.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from shared.corpus import build_default_corpus
from shared.model.resources import default_base_model
from shared.text import model_input

DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "devsets"
OUT = Path("/tmp/exp")


@torch.inference_mode()
def encode(texts, model_dir, batch=128, max_length=128):
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = AutoModel.from_pretrained(model_dir).eval()
    out = np.zeros((len(texts), enc.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        b = tok(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        h = enc(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        out[idx] = F.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    return out


def dev_rows(name):
    with (DEV / name).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


if __name__ == "__main__":
    torch.set_num_threads(2)
    model_dir = sys.argv[1] if len(sys.argv) > 1 else default_base_model()
    tag = sys.argv[2] if len(sys.argv) > 2 else "base"
    OUT.mkdir(exist_ok=True)
    recs = build_default_corpus()
    t = time.time()
    for name in ("ilo_titles_dev.csv", "onet_jobs_dev.csv"):
        rows = dev_rows(name)
        np.save(
            OUT / f"{tag}_{name[:4]}.npy",
            encode([model_input(r["job_title"], r["duties_description"]) for r in rows], model_dir),
        )
    print("dev", time.time() - t, flush=True)
    np.save(
        OUT / f"{tag}_corpus.npy",
        encode([model_input(r.job_title, r.duties_description) for r in recs], model_dir),
    )
    print("corpus", len(recs), time.time() - t, flush=True)
