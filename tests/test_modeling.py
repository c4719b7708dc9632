import numpy as np

from shared.modeling import UnitScorer
from tests.tiny_model import build_tiny_model_dir


def test_tiny_model_round_trip(tmp_path):
    model_dir = build_tiny_model_dir(tmp_path / "m")
    scorer = UnitScorer.load(model_dir, device="cpu")
    texts = ["nurse", "software developer : writes code for web applications", "x"]
    p = scorer.unit_probabilities(texts, batch_size=2)
    assert p.shape == (3, 436)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    # Batching and length-sorting must not change results.
    single = np.vstack([scorer.unit_probabilities([t]) for t in texts])
    np.testing.assert_allclose(p, single, atol=1e-5)
    assert scorer.version == "tiny-1"
    assert scorer.codes[0] == "0110"


def test_lexical_index_round_trip_and_mixing(tmp_path):
    from shared.modeling import AuxiliarySignals, KnnConfig, KnnIndex, LexicalConfig, LexicalIndex

    texts = ["nurse", "staff nurse", "cook", "line cook", "welder", "pipe welder"]
    labels = [0, 0, 1, 1, 2, 2]
    config = LexicalConfig(k=3, tau=0.05, weight=0.3, min_df=1)
    index = LexicalIndex.build(texts, labels, config)
    index.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path, config)
    queries = ["night nurse", "pastry cook", "zzzz"]
    p = loaded.probabilities(queries, config, num_labels=3)
    np.testing.assert_allclose(p, index.probabilities(queries, config, num_labels=3), atol=1e-6)
    assert p[0].argmax() == 0 and p[1].argmax() == 1
    np.testing.assert_allclose(p[2], 1 / 3)  # no shared n-gram: uninformative
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    signals = AuxiliarySignals(3, KnnIndex(emb, np.array(labels)), KnnConfig(k=2, weight=0.2), loaded, config)
    head = np.full((3, 3), 1 / 3)
    mixed = signals.combine(queries, emb[:3], head)
    np.testing.assert_allclose(mixed.sum(1), 1.0, rtol=1e-5)
    assert mixed[0].argmax() == 0
