"""Encode the default corpus and the dev sets (title+duties, title alone, duties alone); cache them.

Usage: python -m bench.experiments.cache_views [MODEL_DIR] [TAG]   (default: the base MiniLM, tag "base")
Writes var/cache/<TAG>_{corpus,ilo,onet,onet_title,onet_duties}.npy (mean-pooled, normalised, 64 tokens).
The dev sets are only encoded here, for evaluation; nothing is fitted on them.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from bench.experiments.encode_base import dev_rows, encode
from shared.corpus import build_default_corpus
from shared.model.resources import default_base_model
from shared.settings import REPO_ROOT
from shared.text import model_input

CACHE = REPO_ROOT / "var" / "cache"


def dev_views() -> dict[str, list[str]]:
    """Dev-set texts in each view, keyed by cache name."""
    ilo = dev_rows("ilo_titles_dev.csv")
    onet = dev_rows("onet_jobs_dev.csv")
    return {
        "ilo": [model_input(r["job_title"], r["duties_description"]) for r in ilo],
        "onet": [model_input(r["job_title"], r["duties_description"]) for r in onet],
        "onet_title": [model_input(r["job_title"], "") for r in onet],
        "onet_duties": [model_input("", r["duties_description"]) for r in onet],
    }


if __name__ == "__main__":
    torch.set_num_threads(2)
    model_dir = sys.argv[1] if len(sys.argv) > 1 else default_base_model()
    tag = sys.argv[2] if len(sys.argv) > 2 else "base"
    skip_corpus = "--dev-only" in sys.argv
    CACHE.mkdir(parents=True, exist_ok=True)
    t = time.time()
    for name, texts in dev_views().items():
        np.save(CACHE / f"{tag}_{name}.npy", encode(texts, model_dir, max_length=64))
    print("dev", round(time.time() - t), flush=True)
    if not skip_corpus:
        recs = build_default_corpus()
        texts = [model_input(r.job_title, r.duties_description) for r in recs]
        np.save(CACHE / f"{tag}_corpus.npy", encode(texts, model_dir, max_length=64))
        print("corpus", len(recs), round(time.time() - t), flush=True)
