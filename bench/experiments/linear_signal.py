"""Does a discriminative n-gram model add to the fine-tuned model's signals? (issue 10; Statistics Austria
ensembles its transformer with n-gram models.)

`fit`: the pipeline's split of the default corpus (full profile's preprocess settings); a TF-IDF (word 1-2 +
character 2-5 grams) linear SVM (bench.baseline_svm) trained on the training split only; its decision scores
on validation and the dev sets are cached under /tmp/exp.
`mix MODEL_DIR`: the model's first stage on validation (validation entries removed from its indexes, as the
rerank stage sees them), the SVM's softmax(scores / tau) mixed in at weight w; tau and w chosen by log loss
on validation, the reranker refitted on the mix; dev sets scored with the model as shipped.

    python -m bench.experiments.linear_signal fit
    python -m bench.experiments.linear_signal mix var/models/VERSION
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

X = Path("/tmp/exp")


def fit() -> None:
    from bench.baseline_svm import SvmBaseline
    from bench.devsets import load_devsets
    from services.trainer.config import TrainerSettings
    from services.trainer.preprocess import prepare
    from services.trainer.records import rows_from_corpus
    from shared.corpus import build_default_corpus, label_codes

    X.mkdir(exist_ok=True)
    settings = TrainerSettings(profile="full")
    prepared = prepare(rows_from_corpus(build_default_corpus(settings)), settings.preprocess)
    codes = label_codes()
    t = time.time()
    model = SvmBaseline().fit([e.text for e in prepared.train], [e.code for e in prepared.train])
    print(f"SVM on {len(prepared.train):,} training records: {time.time() - t:.0f}s")
    np.save(X / "linear_val.npy", model.scores([e.text for e in prepared.val], codes))
    (X / "linear_val_texts.txt").write_text("\n".join(e.text for e in prepared.val))
    for name, dev in load_devsets().items():
        np.save(X / f"linear_{name}.npy", model.scores(dev.texts(), codes))


def mix(model_dir: Path) -> None:
    from scipy.special import softmax

    from bench.devsets import accepted_codes, load_devsets
    from bench.experiments.exp_common import held_out_signals
    from services.trainer.metrics import expected_calibration_error
    from shared.model.rerank import fit_reranker
    from shared.model.scorer import UnitScorer
    from shared.model.signals import mix_probabilities

    scorer = UnitScorer.load(model_dir, backend="torch", quantize="none", device="cpu")
    held_out, val = held_out_signals(scorer, model_dir)
    knn = scorer.signals.knn
    assert knn is not None and knn.texts is not None
    val_texts = [knn.texts[i] for i in val]
    fitted_val = {t: i for i, t in enumerate((X / "linear_val_texts.txt").read_text().split("\n"))}
    assert set(fitted_val) == set(val_texts), "split differs from `fit`"
    val_emb, labels = knn.embeddings[val], knn.labels[val]
    head = softmax(scorer.head_logits(val_emb) / scorer.temperature, axis=1)
    mixed, parts = held_out.first_stage(val_texts, val_emb, head)
    scores = np.load(X / "linear_val.npy")[[fitted_val[t] for t in val_texts]]
    rows = np.arange(len(labels))

    def nll(p: np.ndarray) -> float:
        return float(-np.log(p[rows, labels] + 1e-9).mean())

    best = (nll(mixed), 0.0, 1.0)
    for tau in (0.05, 0.1, 0.2, 0.3, 0.5):
        linear = softmax(scores / tau, axis=1)
        for w in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
            best = min(best, (nll(mix_probabilities(mixed, [(linear, w)])), w, tau))
    _, w, tau = best
    print(f"validation: first stage nll {nll(mixed):.4f} top-1 {(mixed.argmax(1) == labels).mean():.4f}")
    with_linear = mix_probabilities(mixed, [(softmax(scores / tau, axis=1), w)])
    print(f"+ linear w={w} tau={tau}: nll {best[0]:.4f} top-1 {(with_linear.argmax(1) == labels).mean():.4f}")
    for label, first in (("without", mixed), ("with linear", with_linear)):
        reranker = fit_reranker(scorer.codes, first, parts, labels, k=20)
        p = reranker.rerank(scorer.codes, first, parts)
        ok = p.argmax(1) == labels
        ece = expected_calibration_error(p.max(1), ok)
        print(f"reranked {label}: val in sample top-1 {ok.mean():.4f} ece {ece:.4f}")
        # dev: the shipped model's first stage, with the linear signal mixed in the same way
        out = {}
        for name, dev in load_devsets().items():
            texts = dev.texts()
            emb = scorer.embed(texts)
            h = softmax(scorer.head_logits(emb) / scorer.temperature, axis=1)
            m, dev_parts = scorer.signals.first_stage(texts, emb, h)
            if label != "without":
                m = mix_probabilities(m, [(softmax(np.load(X / f"linear_{name}.npy") / tau, axis=1), w)])
            for stage, probs in (("first", m), ("reranked", reranker.rerank(scorer.codes, m, dev_parts))):
                accepted = accepted_codes(dev)
                order = np.argsort(-probs, axis=1)[:, :3]
                hit = np.array(
                    [[scorer.codes[j] in ok_ for j in r] for r, ok_ in zip(order, accepted, strict=True)]
                )
                out[f"{name} {stage}"] = (
                    round(float(hit[:, 0].mean()), 4),
                    round(float(hit.any(1).mean()), 4),
                    round(expected_calibration_error(probs.max(1), hit[:, 0]), 4),
                )
        print(label, out)


if __name__ == "__main__":
    if sys.argv[1] == "fit":
        fit()
    else:
        mix(Path(sys.argv[2]))
