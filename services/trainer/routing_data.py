"""What a run's routing was fitted on and what it is judged on, kept with the run (`RoutingData`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.decision import Hierarchy
from shared.model.signals import NearestMatch
from shared.routing import LEVELS, RecordInputs

ROUTING_DATA_FILES = {"val": "routing_val.npz", "test": "routing_test.npz"}  # in a run's report directory


@dataclass
class RoutingData:
    """The records routing is fitted on (validation) or judged on (the test split), as the router reads them:
    each level's probabilities, whether each level's top group is right, what each record gave, its nearest
    training text and its training source. A run writes both to its report directory (`ROUTING_DATA_FILES`;
    the test split scored before its records join the indexes and the head is refitted on them), so that
    routing variants can be compared on them (bench/experiments/routing_users.py)."""

    per_level: dict[int, np.ndarray]
    correct: dict[int, np.ndarray]
    inputs: RecordInputs
    nearest: NearestMatch | None
    kinds: list[str] | None = None
    flagged: np.ndarray | None = None  # sent to a coder by screening whatever routing says (test split)
    # each record's occupation (the split's unit, `services.trainer.splits.split_group`): labels of one
    # occupation are right or wrong together, so routing's bounds count occupations (routing_fit.py)
    clusters: np.ndarray | None = None

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {f"p{level}": p.astype(np.float32) for level, p in self.per_level.items()}
        arrays |= {f"correct{level}": c for level, c in self.correct.items()}
        arrays |= {
            "has_duties": self.inputs.has_duties,
            "n_words": self.inputs.n_words,
            "has_industry": self.inputs.has_industry,
            "languages": self.inputs.language_codes().astype(str),
        }
        if self.nearest is not None:
            arrays |= {"near_label": self.nearest.labels, "near_sim": self.nearest.similarity}
        if self.kinds is not None:
            arrays["kinds"] = np.asarray(self.kinds, dtype=str)
        if self.flagged is not None:
            arrays["flagged"] = self.flagged
        if self.clusters is not None:
            arrays["clusters"] = np.asarray(self.clusters, dtype=str)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> RoutingData:
        with np.load(path) as a:
            return cls(
                per_level={level: a[f"p{level}"].astype(np.float64) for level in LEVELS},
                correct={level: a[f"correct{level}"] for level in LEVELS},
                inputs=RecordInputs(
                    a["has_duties"], a["n_words"], a["has_industry"], a["languages"].astype(object)
                ),
                nearest=NearestMatch(a["near_label"], a["near_sim"]) if "near_label" in a else None,
                kinds=a["kinds"].tolist() if "kinds" in a else None,
                flagged=a["flagged"] if "flagged" in a else None,
                clusters=a["clusters"] if "clusters" in a else None,
            )


def correct_by_level(
    per_level: dict[int, np.ndarray], hierarchy: Hierarchy, accepted: Sequence[set[str]]
) -> dict[int, np.ndarray]:
    """Per level, whether each record's most probable group holds one of its accepted unit groups."""
    return {
        level: np.array(
            [
                any(code.startswith(hierarchy.group_codes[level][j]) for code in codes)
                for codes, j in zip(accepted, p.argmax(axis=1), strict=True)
            ]
        )
        for level, p in per_level.items()
    }
