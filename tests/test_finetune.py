import json

import numpy as np
import pytest

from services.trainer.calibrate import fit_temperature
from services.trainer.config import FinetuneConfig
from services.trainer.duties_view import DUTIES_WEIGHT_GRID
from services.trainer.finetune import finetune
from services.trainer.hf_loop import choose_batching
from shared.corpus import label_codes
from shared.decision import level_probabilities
from shared.model.scorer import UnitScorer
from shared.predictor import Predictor
from shared.routing import RecordInputs, RoutingModel
from shared.schemas import JobRecord
from tests.tiny_model import build_tiny_model_dir

TITLES = {
    "2221": ["nurse", "staff nurse", "registered nurse", "ward nurse", "theatre nurse"],
    "5120": ["cook", "line cook", "kitchen cook", "restaurant cook", "grill cook"],
    "2512": ["software developer", "programmer", "web developer", "app developer", "backend developer"],
    "8322": ["taxi driver", "car driver", "chauffeur", "delivery car driver", "cab driver"],
    "7411": [
        "electrician",
        "building electrician",
        "house electrician",
        "wiring electrician",
        "site electrician",
    ],
}


def _records():
    texts, codes = [], []
    for code, titles in TITLES.items():
        for t in titles:
            texts += [t, f"{t} : works as a {t} every day"]
            codes += [code, code]
    return texts, codes


def test_tiny_finetune_writes_loadable_model(tmp_path):
    base = build_tiny_model_dir(tmp_path / "tiny")
    texts, codes = _records()
    val_texts, val_codes = texts[::5], codes[::5]
    config = FinetuneConfig(
        base_model=str(base / "encoder"),
        epochs=1,
        max_length=32,
        device="cpu",
        prototype_max_per_class=5,
        disable_tqdm=True,
        knn_k=3,
    )
    result = finetune(
        texts,
        codes,
        val_texts,
        val_codes,
        codes=label_codes(),
        config=config,
        output_dir=tmp_path / "model",
        version="t-1",
    )
    assert result.temperature > 0
    assert len(result.epochs) == 1 and 0.0 <= result.val_accuracy <= 1.0
    assert result.seconds > 0
    assert result.stages == [
        "init", "head", "trainer", "calibrate", "signals", "rerank", "duties_view",
        "routing", "index_validation", "save",
    ]  # fmt: skip
    assert set(result.stage_seconds) == set(result.stages) and result.architecture == "bert"
    assert result.mixed_precision == "no"  # fp32 on CPU unless the profile asks for bf16
    scorer = UnitScorer.load(tmp_path / "model", backend="torch", quantize="none", device="cpu")
    assert scorer.version == "t-1" and len(scorer.codes) == 436
    p = scorer.unit_probabilities(["nurse", "cook : prepares meals"])
    assert p.shape == (2, 436)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-4)
    # int8 still works with the kNN signal.
    q = UnitScorer.load(
        tmp_path / "model", backend="torch", device="cpu", quantize="int8"
    ).unit_probabilities(["nurse"])
    assert q.shape == (1, 436)
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["knn"]["k"] == 3 and meta["lexical"]["weight"] >= 0
    assert (tmp_path / "model" / "lexical.npz").exists()
    # The duties view's weight: chosen on validation's records with duties, stored with the model.
    assert result.duties_view is not None and result.duties_view["weight"] in DUTIES_WEIGHT_GRID
    assert result.duties_view["val_records"] == sum(" : " in t for t in val_texts)
    assert meta["duties_view"]["weight"] == result.duties_view["weight"] == scorer.duties_weight
    # Routing: routers and thresholds fitted on validation, stored with the model, used by the Predictor.
    routing = RoutingModel.load(tmp_path / "model")
    assert routing is not None and set(routing.levels) == {1, 2, 3, 4} and routing.target_precision == 0.95
    assert result.routing is not None and set(result.routing) == {"1", "2", "3", "4", "match"}
    assert result.routing["match"]["similarity"] == routing.match_similarity
    predictor = Predictor.load(tmp_path / "model")
    assert predictor.routing is not None and predictor.routing.levels == routing.levels
    student, nurse, german = predictor.predict(
        [JobRecord(job_title="Student"), JobRecord(job_title="nurse"), JobRecord(job_title="Busfahrerin")]
    )
    assert student.needs_review and "not_an_occupation" in student.review_reasons
    assert german.needs_review and "unsupported_language" in german.review_reasons
    assert nurse.needs_review == bool(nurse.review_reasons)
    # the routing's probability that the 4-digit answer is right; auto-coded only at or above the router's
    # threshold or by the match rule
    probs, nearest = predictor.scores(["nurse"])
    confidence, auto = routing.unit_routing(
        level_probabilities(probs, predictor.hierarchy), RecordInputs.from_texts(["nurse"]), nearest
    )
    assert nurse.routing_confidence == pytest.approx(float(confidence[0]), abs=1e-5)
    assert nurse.needs_review == (not auto[0] or nurse.level != 4)

    # Corrections: start from the model just written (in bf16 autocast on CPU, as a profile may ask).
    again = finetune(
        texts[:10],
        codes[:10],
        [],
        [],
        codes=label_codes(),
        config=config.model_copy(update={"cpu_bf16": True}),
        output_dir=tmp_path / "model2",
        version="t-2",
        init_model_dir=tmp_path / "model",
    )
    assert again.temperature == 1.0 and again.mixed_precision == "bf16"
    corrected = UnitScorer.load(tmp_path / "model2", device="cpu")
    assert corrected.version == "t-2"
    assert corrected.duties_weight == scorer.duties_weight  # no validation: the parent's weight
    # The parent's kNN and lexical entries are kept and the new texts added, not replaced by them.
    assert corrected.signals.knn is not None and corrected.signals.lexical is not None
    # (the parent's index holds its training and validation records; here every validation text is also a
    # training text, so indexing validation added no duplicate entries)
    parent_entries = texts
    assert len(corrected.signals.knn) == len(parent_entries) + 10
    assert corrected.signals.knn.texts == parent_entries + texts[:10]
    assert len(corrected.signals.lexical) == len(parent_entries) + 10


def test_choose_batching_and_temperature():
    config = FinetuneConfig(base_model="x")
    assert choose_batching(100, "cpu", config) == (8, 1)
    assert choose_batching(50000, "cpu", config) == (32, 1)
    assert choose_batching(50000, "cuda", config)[0] == 32
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    logits = rng.normal(size=(400, 5))
    logits[np.arange(400), labels] += 2.0
    t = fit_temperature(logits * 4, labels)  # over-confident logits need T > 1
    assert t > 2.0


def test_knn_index_keeps_every_title_before_records_with_duties() -> None:
    from services.trainer.signals_fit import index_entries

    texts = [f"title {i}" for i in range(6)] + [f"title {i} : duties {i}" for i in range(6)]
    kept = index_entries(texts, 8, seed=0)
    assert list(kept) == sorted(kept) and len(kept) == 8
    assert set(range(6)) <= set(kept)  # all six titles, then two of the six records with duties
    assert len(index_entries(texts, 4, seed=0)) == 4 and max(index_entries(texts, 4, seed=0)) < 6
    assert list(index_entries(texts, 100, seed=0)) == list(range(12))
