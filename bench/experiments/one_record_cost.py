"""What one record costs on the serving path, part by part (in process, cache off, the default backend).

    python -m bench.experiments.one_record_cost MODEL_DIR [--records 200]

For the throughput benchmark's records (O*NET title + duties, ~46 tokens with e5's tokenizer) and for their
titles alone, the median over one-record calls of: the encoder pass (tokenising included), the kNN search, the
lexical search, the signals and reranker on a given embedding (both searches included), the scorer's whole
`unit_scores` (the lexical search runs beside the encoder there) and `Predictor.predict` (language reading,
routing and the answer built too). Prints milliseconds; nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from bench.throughput import bench_records
from shared.predictor import Predictor, PredictorConfig
from shared.schemas import JobRecord
from shared.text import model_input


def median_ms(call: Callable[[str], object], texts: Sequence[str]) -> float:
    times = []
    for text in texts:
        started = time.perf_counter()
        call(text)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--records", type=int, default=200)
    args = parser.parse_args()
    predictor = Predictor.load(args.model_dir, PredictorConfig(cache_size=0))
    scorer, signals = predictor.scorer, predictor.scorer.signals
    records = bench_records(args.records)
    whole = [model_input(r.job_title, r.duties_description or "", "") for r in records]
    for name, texts in (("title + duties", whole), ("title alone", [r.job_title for r in records])):
        for text in texts[:20]:  # warm-up
            scorer.unit_scores([text])
        embeddings = {text: scorer.embed([text]) for text in texts}
        print(name)
        print("  encoder             ", median_ms(lambda t: scorer.embed([t]), texts))
        if signals.uses_knn:
            assert signals.knn is not None and signals.knn_config is not None
            k = signals.knn_config.k
            print(
                "  kNN search          ",
                median_ms(lambda t, e=embeddings, k=k: signals.knn.search(e[t], k), texts),
            )
        print("  lexical search      ", median_ms(lambda t: signals.lexical_neighbours([t]), texts))
        print(
            "  signals + reranker  ",
            median_ms(lambda t, e=embeddings: scorer.scores_from_embeddings([t], e[t]), texts),
        )
        print("  unit_scores         ", median_ms(lambda t: scorer.unit_scores([t]), texts))
        print(
            "  Predictor.predict   ", median_ms(lambda t: predictor.predict([JobRecord(job_title=t)]), texts)
        )
    print(scorer.describe())


if __name__ == "__main__":
    main()
