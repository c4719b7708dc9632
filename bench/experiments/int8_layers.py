"""What int8 costs on the dev sets, and how much keeping more FFN output projections in fp32 wins back.

Usage: python -m bench.experiments.int8_layers MODEL_DIR [LAYERS ...]   (default: 2 3 4 6)

Scores both dev sets with the ONNX backend of the scorer every service uses, fp32 first, then int8 with
the FFN output projections of the first LAYERS layers kept in fp32 (`int8_fp32_layers`, 2 by default in the
services), and prints top-1 and records/s of each (one pass, so the speeds are rough: use bench.throughput
for speed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from shared.model.scorer import UnitScorer


def main(model_dir: Path, layers: list[int]) -> None:
    devsets = load_devsets()
    for n in [-1, *layers]:
        if n < 0:
            scorer, label = UnitScorer.load(model_dir, backend="onnx", quantize="none"), "ONNX fp32"
        else:
            scorer = UnitScorer.load(model_dir, backend="onnx", quantize="int8", int8_fp32_layers=n)
            label = f"ONNX int8, {n} fp32 FFN layers"
        scorer.unit_probabilities(["warm up"] * 8)
        cells = []
        for name, dev in devsets.items():
            texts = dev.texts()
            start = time.perf_counter()
            probs = scorer.unit_probabilities(texts)
            seconds = time.perf_counter() - start
            top1 = topk_accuracy(probs, accepted_codes(dev), scorer.codes, 1)
            cells.append(f"{name} {top1:.3f} ({len(texts) / seconds:.0f} records/s)")
        print(f"{label:32} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), [int(a) for a in sys.argv[2:]] or [2, 3, 4, 6])
