"""The development sets and the top-k measure every benchmark scores them with.

Dev sets (evaluation only, never trained on): ../shared/data/devsets/ilo_titles_dev.csv (ILO index titles not
in ESCO) and onet_jobs_dev.csv (O*NET titles with task statements). A prediction is correct when it is one of
a row's accepted codes. Its own module so that the accuracy benchmark, the SVM baseline, the throughput
benchmark and the experiments share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.trainer.evaluate import EvalSet, load_eval_csv
from shared.settings import REPO_ROOT

DEVSETS_DIR = REPO_ROOT.parent / "shared" / "data" / "devsets"
DEVSETS = ("ilo_titles_dev.csv", "onet_jobs_dev.csv")


def load_devsets(directory: Path = DEVSETS_DIR) -> dict[str, EvalSet]:
    """The development sets that exist in `directory`, by file stem."""
    return {Path(n).stem: load_eval_csv(directory / n) for n in DEVSETS if (directory / n).exists()}


def accepted_codes(dev: EvalSet) -> list[set[str]]:
    """Each row's accepted codes: its gold code and the alternatives the set accepts."""
    return [{g} | a for g, a in zip(dev.gold, dev.accept, strict=True)]


def topk_accuracy(scores: np.ndarray, accept: Sequence[set[str]], codes: Sequence[str], k: int = 1) -> float:
    """Share of rows with an accepted code among the k highest scores."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([any(codes[j] in a for j in row) for row, a in zip(top, accept, strict=True)]))
