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
