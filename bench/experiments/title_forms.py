"""What reading titles as `shared.titles.normalise_title` does adds, on a trained model (issue 10).

Usage: python -m bench.experiments.title_forms [MODEL_DIR]   (default: the registered best model)

Scores the dev sets twice through the scorer every service uses: with the model input as `model_input` builds
it now, and with the title read as before `head_last` and `drop_alias` existed (cleaned, lower-cased,
abbreviations spelled out). Prints top-1 / top-3 on each whole set and on the records whose input the
normalisation changes. The rules are general forms of titles (occupation indexes, job boards), decided from
the training corpus, which never writes "head - qualifier": nothing here is fitted on the dev sets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from shared.model.scorer import UnitScorer
from shared.text import clean_text
from shared.titles import expand_abbreviations


def previous_input(job_title: str, duties: str) -> str:
    """The model input before titles were normalised: only abbreviations spelled out."""
    title = expand_abbreviations(clean_text(job_title).lower())
    duties = clean_text(duties).lower()
    return f"{title} : {duties}" if title and duties else title or duties


def main(model_dir: Path) -> None:
    scorer = UnitScorer.load(model_dir)
    print(f"model {scorer.version}")
    for name, dev in load_devsets().items():
        now = dev.texts()
        before = [previous_input(t, d) for t, d in zip(dev.job_titles, dev.duties, strict=True)]
        accept = accepted_codes(dev)
        changed = np.array([a != b for a, b in zip(now, before, strict=True)])
        probs = {"before": scorer.unit_probabilities(before), "normalised": scorer.unit_probabilities(now)}
        for label, p in probs.items():
            cells = [
                f"{topk_accuracy(p[rows], [accept[i] for i in np.flatnonzero(rows)], scorer.codes, k):.3f}"
                for rows in (np.ones(len(now), bool), changed)
                for k in (1, 3)
            ]
            print(
                f"{name:16} {label:10} all {cells[0]} / {cells[1]}   "
                f"changed ({changed.sum()} records) {cells[2]} / {cells[3]}",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        from shared.registry import best_model_dir
        from shared.settings import CommonSettings

        found = best_model_dir(CommonSettings())
        if found is None:
            raise SystemExit("no registered best model: pass MODEL_DIR")
        main(Path(found))
