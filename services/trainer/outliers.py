"""Outlier checks: DBSCAN over TF-IDF vectors (cosine distance) of the de-duplicated training records.

Two findings, reported in `outliers.csv` and excluded from training only when configured (`exclude`): dense
clusters of near-identical texts whose labels disagree with a clear majority ("inconsistent_label"), and
records far from every other record of their own unit group ("class_outlier").
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from services.trainer.records import Example

log = logging.getLogger(__name__)


class OutlierConfig(BaseModel):
    """DBSCAN checks over TF-IDF vectors (cosine distance)."""

    enabled: bool = True
    duplicate_eps: float = Field(
        0.3, gt=0, lt=1, description="cosine distance within a near-duplicate cluster"
    )
    min_samples: int = Field(3, ge=2, description="DBSCAN min_samples for both checks")
    majority: float = Field(
        0.75, gt=0.5, le=1, description="label share that makes the rest of a cluster suspect"
    )
    class_eps: float = Field(0.9, gt=0, lt=1, description="cosine distance to a same-group neighbour")
    min_group_examples: int = Field(
        30, ge=3, description="groups smaller than this are not checked for outliers"
    )
    exclude: Literal["none", "inconsistent", "all"] = Field(
        "none", description="drop inconsistent labels, or every finding, from training; default: report only"
    )
    max_records: int = Field(250_000, ge=1, description="above this the near-duplicate check is skipped")


def _radius_graph(vectors: Any, eps: float, block: int = 2000) -> Any:
    """Sparse cosine-distance graph keeping pairs closer than `eps` (rows of `vectors` are L2-normalised).

    Blockwise sparse products instead of DBSCAN's own cosine neighbour search: the same clusters, several
    times faster and without dense intermediate matrices.
    """
    import numpy as np
    import scipy.sparse as sp

    transposed = vectors.T.tocsr()
    blocks = []
    for start in range(0, vectors.shape[0], block):
        sims = vectors[start : start + block] @ transposed
        sims.data[sims.data < 1 - eps] = 0
        sims.eliminate_zeros()
        blocks.append(sims)
    graph = sp.vstack(blocks).tocsr()
    # distance = 1 - similarity; a tiny floor keeps identical texts as stored (non-missing) neighbours
    graph.data = np.clip(1 - graph.data, 1e-9, None)
    return graph


def _dbscan(vectors: Any, eps: float, min_samples: int) -> Any:
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(
        _radius_graph(vectors, eps)
    )


def detect_outliers(examples: Sequence[Example], config: OutlierConfig) -> list[dict[str, Any]]:
    """DBSCAN findings (see module docstring); each finding names the example by index (`index`)."""
    if not config.enabled or len(examples) < config.min_samples:
        return []
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [e.text for e in examples]
    vectors = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts).astype(np.float32)
    findings: list[dict[str, Any]] = []

    if len(examples) <= config.max_records:
        labels = _dbscan(vectors, config.duplicate_eps, config.min_samples)
        clusters: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            if label >= 0:
                clusters[label].append(i)
        for members in clusters.values():
            counts = Counter(examples[i].code for i in members)
            if len(counts) < 2:
                continue
            majority_code, n_major = counts.most_common(1)[0]
            share = n_major / len(members)
            if share < config.majority:
                continue
            for i in members:
                if examples[i].code != majority_code:
                    findings.append(
                        {
                            "index": i,
                            "kind": "inconsistent_label",
                            "majority_code": majority_code,
                            "majority_share": round(share, 3),
                            "cluster_size": len(members),
                        }
                    )
    else:
        log.warning(
            "near-duplicate check skipped: %d records > outliers.max_records=%d",
            len(examples),
            config.max_records,
        )

    by_code: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_code[e.code].append(i)
    for code, members in by_code.items():
        if len(members) < config.min_group_examples:
            continue
        labels = _dbscan(vectors[members], config.class_eps, config.min_samples)
        for i, label in zip(members, labels, strict=True):
            if label < 0:
                findings.append(
                    {
                        "index": i,
                        "kind": "class_outlier",
                        "majority_code": code,
                        "majority_share": None,
                        "cluster_size": len(members),
                    }
                )
    return findings
