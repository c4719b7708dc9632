"""Baseline: TF-IDF (word 1-2 grams + character 2-5 grams) and a linear SVM, trained on the default corpus
(ESCO, ISCO-08 and the ONS coding index, every record as the model reads it, industry included).

The reference the fine-tuned model has to beat (bench/accuracy.py prints both side by side). Usage:
    python -m bench.baseline_svm            # train on the default corpus, print dev-set top-1
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from bench.devsets import load_devsets, topk_accuracy
from shared.corpus import CodedRecord, build_default_corpus, label_codes
from shared.text import model_input


class SvmBaseline:
    """TF-IDF features and a one-vs-rest linear SVM over all unit groups seen in training."""

    def __init__(self, c: float = 0.5, seed: int = 0):
        self.word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
        self.svm = LinearSVC(C=c, random_state=seed)
        self.codes: list[str] = []

    def _features(self, texts: Sequence[str], fit: bool = False):  # noqa: ANN202 - sparse matrix
        if fit:
            return hstack([self.word.fit_transform(texts), self.char.fit_transform(texts)]).tocsr()
        return hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()

    def fit(self, texts: Sequence[str], codes: Sequence[str]) -> SvmBaseline:
        self.svm.fit(self._features(texts, fit=True), list(codes))
        self.codes = [str(c) for c in self.svm.classes_]
        return self

    def scores(self, texts: Sequence[str], label_order: Sequence[str] | None = None) -> np.ndarray:
        """Decision scores (len(texts), len(label_order)); unseen labels get -inf-like scores."""
        raw = self.svm.decision_function(self._features(texts))
        if label_order is None:
            return raw
        out = np.full((len(texts), len(label_order)), -1e4, dtype=np.float32)
        pos = {c: i for i, c in enumerate(label_order)}
        for j, code in enumerate(self.codes):
            out[:, pos[code]] = raw[:, j]
        return out

    @staticmethod
    def train_default(records: list[CodedRecord] | None = None) -> SvmBaseline:
        records = records if records is not None else build_default_corpus()
        texts = [model_input(r.job_title, r.duties_description, r.industry) for r in records]
        return SvmBaseline().fit(texts, [r.isco_code for r in records])


def main() -> None:
    t = time.time()
    model = SvmBaseline.train_default()
    print(f"trained in {time.time() - t:.0f}s")
    codes = label_codes()
    for name, dev in load_devsets().items():
        scores = model.scores(dev.texts(), codes)
        print(name, {k: round(topk_accuracy(scores, dev.accept, codes, k), 3) for k in (1, 3, 5)})


if __name__ == "__main__":
    main()
