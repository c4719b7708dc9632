"""Length-sorted batching with dynamic padding, done once for every backend (no torch).

All texts are tokenised in one call, sorted by token count and cut into batches that are padded (right, with
the tokenizer's own pad id) only to their longest member. Sorting by characters instead still padded
O*NET-like records by ~40% at 32 a batch; by tokens ~10%.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def token_batches(
    tokenizer: Any,
    texts: list[str],
    max_length: int,
    batch_size: int,
    pad_token_id: int,
    token_type_ids: bool,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(positions in `texts`, model inputs as int64 arrays) per batch, batches of similar token length."""
    if not texts:
        return
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        input_ids = np.full((len(idx), width), pad_token_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            input_ids[row, : lengths[i]] = ids[i]
            mask[row, : lengths[i]] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if token_type_ids:
            batch["token_type_ids"] = np.zeros_like(input_ids)
        yield idx, batch
