"""The model core (shared/model): one scorer for every backend, with the kNN and lexical signals, on BERT
(WordPiece) and RoBERTa (byte-level BPE) encoders trained here from tiny random bases.

Stated tolerances, against torch fp32 on the same model: ONNX fp32 within 1e-4 per probability; int8 (torch
and ONNX) within 0.05 per probability and the same top-1 on the training titles (a trained model's margins).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from services.trainer.config import FinetuneConfig
from services.trainer.finetune import finetune
from shared.corpus import label_codes
from shared.model.directory import ModelDir
from shared.model.knn import KnnConfig, KnnIndex, vote
from shared.model.lexical import LexicalConfig, LexicalIndex
from shared.model.onnx_export import cache_dir
from shared.model.scorer import UnitScorer
from shared.model.signals import Signals, mix_probabilities, search_weights
from shared.predictor import Predictor, PredictorConfig
from tests.test_finetune import TITLES, _records
from tests.tiny_model import tiny_bert_base, tiny_roberta_base

BACKENDS = {
    "torch-fp32": {"backend": "torch", "quantize": "none"},
    "torch-int8": {"backend": "torch", "quantize": "int8"},
    "onnx-fp32": {"backend": "onnx", "quantize": "none"},
    "onnx-int8": {"backend": "onnx", "quantize": "int8"},
}
QUERIES = [
    "nurse",
    "staff nurse",
    "line cook",
    "web developer",
    "taxi driver",
    "site electrician",
    "registered nurse : works as a registered nurse every day",
    "x " * 80,  # longer than max_length: truncated alike by every backend
]


def tiny_base(root: Path, architecture: str) -> Path:
    return (tiny_roberta_base if architecture == "roberta" else tiny_bert_base)(root / "base")


def train_tiny(root: Path, architecture: str, config: FinetuneConfig | None = None) -> Path:
    texts, codes = _records()
    config = config or FinetuneConfig(
        base_model=str(tiny_base(root, architecture)),
        epochs=2,
        max_length=32,
        learning_rate=1e-3,
        device="cpu",
        disable_tqdm=True,
        knn_k=3,
        lexical_k=3,
        knn_weight=0.3,  # fixed, as the profiles do: the tiny model must use both signals
        lexical_weight=0.1,
        rerank=True,  # and the second stage, so every backend is compared through it
        rerank_k=5,
        duties_weight=0.3,  # and the duties view of records with duties
    )
    finetune(
        texts,
        codes,
        [f"senior {t}" for t in texts[::4]],  # validation texts the training split does not hold
        codes[::4],
        codes=label_codes(),
        config=config,
        output_dir=root / "model",
        version=f"tiny-{architecture}",
    )
    return root / "model"


@pytest.fixture(scope="module", params=["bert", "roberta"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp(request.param), request.param)


def test_model_json_records_architecture_tokenizer_and_signals(trained: Path) -> None:
    meta = json.loads((trained / "model.json").read_text())
    encoder = meta["encoder"]
    if encoder["architecture"] == "roberta":
        assert (encoder["tokenizer_kind"], encoder["pad_token_id"], encoder["token_type_ids"]) == (
            "bpe",
            1,
            False,
        )
    else:
        assert encoder["architecture"] == "bert"
        assert (encoder["tokenizer_kind"], encoder["pad_token_id"], encoder["token_type_ids"]) == (
            "wordpiece",
            0,
            True,
        )
    assert meta["knn"]["weight"] > 0 or meta["lexical"]["weight"] > 0
    texts = json.loads((trained / "knn_texts.json").read_text())
    n_train = 2 * sum(len(t) for t in TITLES.values())
    # training records, then the validation records once everything was chosen on them
    assert len(texts) == n_train + len(range(0, n_train, 4))
    assert all(t.startswith("senior ") for t in texts[n_train:])


def test_every_backend_gives_the_same_answers_with_signals(trained: Path) -> None:
    scorers = {name: UnitScorer.load(trained, device="cpu", **kw) for name, kw in BACKENDS.items()}
    reference = scorers["torch-fp32"]
    # the model has both signals and the reranker, and every backend uses them
    assert set(reference.signals.describe()) == {"knn", "lexical", "rerank"}
    signals = Signals(reference.codes, reference.signals.knn, KnnConfig(weight=0.4, k=3))
    head_only = reference.probabilities_from_embeddings(QUERIES, reference.embed(QUERIES))
    assert not np.allclose(head_only, signals.mix(QUERIES, reference.embed(QUERIES), head_only))
    expected = reference.unit_probabilities(QUERIES)
    np.testing.assert_allclose(expected.sum(1), 1.0, rtol=1e-5)
    for name, scorer in scorers.items():
        assert scorer.backend == name
        probs = scorer.unit_probabilities(QUERIES)
        tolerance = 1e-4 if name.endswith("fp32") else 0.05
        np.testing.assert_allclose(probs, expected, atol=tolerance, err_msg=name)
        assert (probs[:-1].argmax(1) == expected[:-1].argmax(1)).all(), name
    # trained: the titles land on their groups
    codes = reference.codes
    assert [codes[i] for i in expected[:6].argmax(1)] == ["2221", "2221", "5120", "2512", "8322", "7411"]


def test_a_record_with_duties_is_fused_with_its_duties_view(trained: Path) -> None:
    scorer = UnitScorer.load(trained, device="cpu", backend="torch", quantize="none")
    assert scorer.duties_weight == 0.3  # model.json "duties_view", as training fixed it
    duties = "works as a registered nurse every day"
    record = f"cook : {duties}"  # a title and duties that disagree
    cut_off = "x " * 80 + ": welds pipes"  # duties past max_length: no view, the record as one text
    fused = scorer.unit_probabilities([record, "nurse", cut_off])
    scorer.duties_weight = 0.0
    whole = scorer.unit_probabilities([record, "nurse", cut_off])
    view = scorer.probabilities_from_embeddings([duties], scorer.embed_views([record])[1])
    log_whole, log_view = (np.log(np.clip(p, 1e-12, None)) for p in (whole[0], view[0]))
    assert not np.allclose(np.log(fused[0]), log_whole, atol=0.1)  # (the tiny model is sure of both views)
    expected = np.exp(0.7 * log_whole + 0.3 * log_view)
    np.testing.assert_allclose(fused[0], expected / expected.sum(), rtol=1e-4)
    np.testing.assert_allclose(fused[1:], whole[1:], atol=1e-6)  # a title alone has one view


def test_a_weight_fitted_to_a_second_pass_over_the_duties_reads_zero(trained: Path, tmp_path: Path) -> None:
    """Models of 2026-12-02 encoded the duties again, alone, and stored their weight without "view": the
    services no longer compute that view, so such a model scores each record as one text."""
    from shared.model.directory import ModelDir

    older = Path(shutil.copytree(trained, tmp_path / "older"))
    meta = json.loads((older / "model.json").read_text())
    meta["duties_view"] = {"weight": 0.3}
    (older / "model.json").write_text(json.dumps(meta))
    assert ModelDir.read(trained).duties_weight == 0.3
    assert ModelDir.read(older).duties_weight == 0.0


@pytest.mark.parametrize("architecture", ["bert", "roberta"])
def test_the_duties_view_pools_the_duties_tokens_of_the_records_own_pass(
    tmp_path: Path, architecture: str
) -> None:
    """The duties view costs no second pass: the record's token states, mean-pooled over its duties tokens
    only (WordPiece and byte-level BPE alike: the tokens are found by character offset)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from shared.model.classifier import IscoClassifier, encode_views

    base = {"bert": tiny_bert_base, "roberta": tiny_roberta_base}[architecture](tmp_path / architecture)
    encoder, tokenizer = AutoModel.from_pretrained(base).eval(), AutoTokenizer.from_pretrained(base)
    model = IscoClassifier(encoder, num_labels=3).eval()  # (encode_views restores the mode it found)
    record, title_alone = "cook : works as a registered nurse every day", "registered nurse"
    whole, duties = encode_views(model, tokenizer, [record, title_alone], max_length=64)
    encoded = tokenizer(record, return_tensors="pt")
    title_tokens = len(tokenizer("cook :")["input_ids"]) - 1  # with the leading special token, not the last
    with torch.inference_mode():
        states = encoder(**encoded).last_hidden_state[0]
    np.testing.assert_allclose(duties[0], F.normalize(states[title_tokens:-1].mean(0), dim=0), atol=1e-5)
    np.testing.assert_allclose(whole[0], F.normalize(states.mean(0), dim=0), atol=1e-5)
    assert not duties[1].any()  # a title alone has no duties view


def test_batching_does_not_change_answers(trained: Path) -> None:
    for kw in BACKENDS.values():
        scorer = UnitScorer.load(trained, device="cpu", **kw)
        together = scorer.unit_probabilities(QUERIES, batch_size=3)
        alone = np.vstack([scorer.unit_probabilities([q]) for q in QUERIES])
        np.testing.assert_allclose(together, alone, atol=1e-5, err_msg=str(kw))


def test_onnx_int8_is_batched_and_each_row_ignores_its_batch_mates(trained: Path) -> None:
    """The default CPU path (ONNX static int8: activation scales fixed at export) scores whole batches, and a
    record scored alone or among 31 others, longer and shorter, gets the same probabilities."""
    scorer = UnitScorer.load(trained, device="cpu", backend="onnx", quantize="int8")
    assert not scorer.encoder.per_record
    # a model fine-tuned outside the trainer's pipeline has no graphs: the static export is cached outside it
    assert list(cache_dir(ModelDir.read(trained)).glob("*.int8static-*.onnx"))
    assert not (trained / "onnx").exists()
    mates = [f"{q} {word}" for q in QUERIES for word in ("assistant", "senior supervisor of the night shift")]
    batch = (QUERIES + mates * 4)[:32]
    calls: list[int] = []
    embed = scorer.encoder.embed
    scorer.encoder.embed = lambda inputs: calls.append(len(inputs["input_ids"])) or embed(inputs)  # type: ignore[method-assign]
    together = scorer.unit_probabilities(batch, batch_size=32)
    assert calls == [32]  # one call for the whole batch, the duties view included
    alone = np.vstack([scorer.unit_probabilities([q]) for q in QUERIES])
    # float32 rounding of the numpy head and signals over other batch shapes only (dynamic activation scales
    # would move probabilities by ~1e-2)
    np.testing.assert_allclose(together[: len(QUERIES)], alone, atol=1e-5, rtol=0)


def test_nearest_examples_are_training_texts(trained: Path) -> None:
    predictor = Predictor.load(trained, PredictorConfig(cache_size=0))
    nearest = predictor.nearest_examples(["staff nurse", "grill cook"], k=4)
    assert len(nearest) == 2 and all(len(row) == 4 for row in nearest)
    text, code, similarity = nearest[0][0]
    assert (text, code) == ("staff nurse", "2221") and similarity == pytest.approx(1.0, abs=1e-2)
    assert all(row[i][2] >= row[i + 1][2] for row in nearest for i in range(3))
    assert nearest[1][0][1] == "5120"


def test_the_match_rule_auto_codes_answers_a_coded_training_text_agrees_with(trained: Path) -> None:
    from shared.routing import LevelRouter, RoutingModel
    from shared.schemas import JobRecord

    predictor = Predictor.load(trained)
    titles = ["staff nurse", "line cook", "web developer", "grill cook"]
    probs, nearest = predictor.scores(titles)
    # the nearest training text comes from the scoring pass's own kNN search: nearest_examples agrees
    examples = predictor.nearest_examples(titles, k=1)
    assert [predictor.codes[j] for j in nearest.labels] == [row[0][1] for row in examples]
    np.testing.assert_allclose(nearest.similarity, [row[0][2] for row in examples], atol=1e-5)
    assert nearest.similarity[0] == pytest.approx(1.0, abs=1e-2)
    cached_probs, cached = predictor.scores(titles)  # from the cache: the same scores
    np.testing.assert_array_equal(cached_probs, probs)
    np.testing.assert_array_equal(cached.labels, nearest.labels)
    # a router that never clears its threshold: only the match rule can auto-code
    fitted = RoutingModel.load(trained)
    assert fitted is not None
    never = fitted.levels[4].model_copy(update={"threshold": 2.0})
    sure = LevelRouter(mean=[0.0], std=[1.0], coef=[0.0], intercept=3.5)  # 0.971 whatever the similarity
    predictor.routing = fitted.model_copy(
        update={"levels": {**fitted.levels, 4: never}, "match_similarity": 0.99, "match_router": sure}
    )
    out = predictor.predict([JobRecord(job_title=t) for t in titles])
    agrees = probs.argmax(1) == nearest.labels
    assert agrees[:3].all()  # training titles: the model answers the code of their own text
    for p, agree, similarity in zip(out, agrees, nearest.similarity, strict=True):
        auto = bool(agree and similarity >= 0.99)
        assert p.needs_review is not auto
        assert (p.routing_confidence is not None and p.routing_confidence >= 0.97) is auto
    assert not out[0].needs_review


def test_gradient_checkpointing_and_128_token_profile(tmp_path: Path) -> None:
    import yaml
    from transformers import AutoTokenizer

    from services.trainer.config import TrainerSettings

    profile = yaml.safe_load(Path("services/trainer/profiles/quick.yaml").read_text())
    profile["finetune"].update(
        gradient_checkpointing=True, max_length=128, epochs=1, max_train_seconds=60, disable_tqdm=True
    )
    (tmp_path / "roberta128.yaml").write_text(yaml.safe_dump(profile))
    settings = TrainerSettings(
        profile=str(tmp_path / "roberta128.yaml"), env="test", data_dir=tmp_path / "data"
    )
    config = settings.finetune_config(base_model=str(tiny_base(tmp_path, "roberta")))
    assert config.gradient_checkpointing and config.max_length == 128
    model_dir = train_tiny(tmp_path, "roberta", config)
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["max_length"] == 128 and meta["config"]["gradient_checkpointing"] is True
    long_text = "registered nurse " * 100
    assert len(AutoTokenizer.from_pretrained(model_dir / "encoder")(long_text)["input_ids"]) > 128
    onnx = UnitScorer.load(model_dir, backend="onnx", quantize="none", device="cpu")
    fp32 = UnitScorer.load(model_dir, backend="torch", quantize="none", device="cpu")
    np.testing.assert_allclose(
        onnx.unit_probabilities([long_text, "nurse"]),
        fp32.unit_probabilities([long_text, "nurse"]),
        atol=1e-4,
    )


def test_default_backend_is_the_same_everywhere() -> None:
    from services.inference.settings import InferenceSettings
    from services.worker.settings import WorkerSettings

    default = PredictorConfig()
    for settings in (InferenceSettings(env="test"), WorkerSettings(env="test")):
        config = PredictorConfig.from_settings(settings)
        assert (config.backend, config.quantize) == (default.backend, default.quantize) == ("auto", "int8")


def test_vote_mix_and_weight_search() -> None:
    p = vote(np.array([[0, 0, 1], [2, 2, 2]]), np.array([[0.9, 0.8, 0.1], [0.0, -0.1, -0.2]]), 0.1, 3)
    assert p[0].argmax() == 0 and p[0, 1] > 0 and p[0, 2] == 0
    np.testing.assert_allclose(p[1], 1 / 3)  # no positive similarity: uninformative
    head = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])
    knn = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    mixed = mix_probabilities(head, [(knn, 0.5)])
    np.testing.assert_allclose(mixed.sum(1), 1.0)
    with pytest.raises(ValueError):
        mix_probabilities(head, [(knn, 0.6), (knn, 0.5)])
    labels = np.array([1, 1, 0])
    choice = search_weights(head, {"knn": {0.1: knn}}, labels, {"knn": None})
    assert choice.val_accuracy == 1.0 and choice.weights["knn"] > 0.2
    fixed = search_weights(head, {"knn": {0.1: knn}}, labels, {"knn": 0.0})
    assert fixed.weights["knn"] == 0.0 and fixed.val_accuracy == pytest.approx(2 / 3, abs=1e-3)


def test_indexes_round_trip_without_pickles(tmp_path: Path) -> None:
    texts = ["nurse", "staff nurse", "cook", "line cook", "welder", "pipe welder"]
    labels = np.array([0, 0, 1, 1, 2, 2])
    config = LexicalConfig(k=3, tau=0.05, weight=0.3, min_df=1)
    LexicalIndex.build(texts, labels, config).save(tmp_path)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    KnnIndex(emb, labels, texts).save(tmp_path)
    meta = {"knn": KnnConfig(k=2, weight=0.2).model_dump(), "lexical": config.model_dump()}
    signals = Signals.load(tmp_path, meta, ["1111", "2221", "3111"])
    assert signals.knn is not None and signals.knn.texts == texts
    np.testing.assert_allclose(signals.knn.embeddings, emb, atol=1e-3)  # float16 on disk
    lexical = signals.lexical_config
    assert signals.lexical is not None and lexical is not None
    p = signals.lexical.probabilities(["night nurse", "pastry cook", "zzzz"], lexical, 3)
    assert p[0].argmax() == 0 and p[1].argmax() == 1
    np.testing.assert_allclose(p[2], 1 / 3)
    assert not list(tmp_path.glob("*.pkl"))
    nearest = signals.nearest(emb[:1], ["a", "b", "c"], 2)
    assert nearest[0][0] == ("nurse", "a", pytest.approx(1.0, abs=1e-2))  # int8 similarities


def test_int8_knn_search_matches_float32() -> None:
    """The int8 kNN graph (integer matmul, per-entry scale, TopK) finds float32's nearest entries, nearest
    first, with similarities within 0.01; each query's answer ignores its batch-mates; k above the index size
    returns every entry."""
    rng = np.random.default_rng(1)
    entries = rng.normal(size=(3000, 32)).astype(np.float32)
    entries /= np.linalg.norm(entries, axis=1, keepdims=True)
    queries = entries[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = KnnIndex(entries, np.arange(3000) % 7)
    ids, sims = index.search(queries, 10)
    exact = queries @ entries.T
    exact_ids = np.argsort(-exact, axis=1)[:, :10]
    assert (ids[:, 0] == np.arange(50)).all()  # each query's own noisy source first
    overlap = np.mean([len(set(a) & set(b)) for a, b in zip(ids, exact_ids, strict=True)]) / 10
    assert overlap > 0.9
    np.testing.assert_allclose(sims, np.take_along_axis(exact, ids, axis=1), atol=0.01)
    assert (np.diff(sims, axis=1) <= 0).all()
    alone_ids, alone_sims = index.search(queries[7:8], 10)
    np.testing.assert_array_equal(alone_ids[0], ids[7])
    np.testing.assert_array_equal(alone_sims[0], sims[7])
    small = KnnIndex(entries[:4], np.arange(4))
    assert small.search(queries[:2], 10)[0].shape == (2, 4)


def test_lexical_index_without_common_ngrams() -> None:
    """The lexical index without its most common n-grams still finds the same neighbours here."""
    texts = ["staff nurse", "night nurse", "line cook", "pastry cook", "pipe welder", "welder"]
    config = LexicalConfig(k=2, min_df=1, max_df=0.4)
    lexical = LexicalIndex.build(texts * 40, [0, 0, 1, 1, 2, 2] * 40, config)  # 240 entries: prunable
    full = LexicalIndex.build(texts * 40, [0, 0, 1, 1, 2, 2] * 40, LexicalConfig(k=2, min_df=1, max_df=1.0))
    assert len(lexical.vectorizer.vocabulary_) < len(full.vectorizer.vocabulary_)
    p = lexical.probabilities(["ward nurse", "head cook"], config, 3)
    assert list(p.argmax(1)) == [0, 1]


def test_lexical_query_vectors_are_the_vectorizers() -> None:
    """Queries are vectorised without the vectorizer's per-call overhead, to the same TF-IDF vectors as its
    `transform` (repeated n-grams, unknown n-grams, an empty text)."""
    texts = ["staff nurse", "night nurse", "line cook", "pastry cook", "pipe welder", "welder"]
    lexical = LexicalIndex.build(texts, [0, 0, 1, 1, 2, 2], LexicalConfig(k=2, min_df=1))
    queries = ["nurse nurse nurse", "Pastry COOK of the night", "", "zzzz"]
    expected = lexical.vectorizer.transform(queries).toarray()
    np.testing.assert_allclose(lexical.query_matrix(queries).toarray(), expected, atol=1e-6)


def test_worker_and_inference_service_give_identical_results(trained: Path, tmp_path: Path) -> None:
    """Default settings of both services (no backend or quantize override): the same records, micro-batched
    by the service in one request, chunked by the worker, get the same answers."""
    import httpx

    from services.inference.app import create_app
    from services.inference.settings import InferenceSettings
    from services.worker.settings import WorkerSettings
    from shared.holder import PredictorHolder
    from shared.schemas import JobRecord, PredictOptions
    from tests.serving_helpers import ServerThread

    records = [JobRecord(id=str(i), job_title=q) for i, q in enumerate(QUERIES)]
    records += [JobRecord(id="d", job_title="HGV Class 1 Driver", duties_description="drives lorries")]
    common = {"env": "test", "data_dir": tmp_path / "data", "database_url": f"sqlite:///{tmp_path / 'i.db'}"}
    worker = PredictorHolder(WorkerSettings(model_dir=trained, **common).predictor_settings())  # type: ignore[arg-type]
    by_worker = worker.best().predict(records, PredictOptions(top_k=3))
    assert worker.best().scorer.backend == "onnx-int8"  # the default fast path on CPU
    app = create_app(InferenceSettings(model_dir=trained, reload_interval_s=0, **common))  # type: ignore[arg-type]
    with ServerThread(app) as url, httpx.Client(base_url=url) as client:
        body = {"records": [r.model_dump(exclude_none=True) for r in records], "top_k": 3}
        by_service = client.post("/v1/predict", json=body).json()["results"]
    assert by_service == [p.model_dump(mode="json") for p in by_worker]


def test_isco_predict_on_onnx_agrees_with_torch_fp32(trained: Path, tmp_path: Path) -> None:
    """`ISCO_BACKEND=onnx isco predict --model DIR` on the BERT- and the RoBERTa-based model."""
    import csv

    from typer.testing import CliRunner

    from services.cli import build_app

    source = tmp_path / "in.csv"
    source.write_text("job_title\n" + "\n".join(q.strip() for q in QUERIES[:6]) + "\n", encoding="utf-8")
    env = {"ISCO_ENV": "test", "ISCO_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    env["ISCO_DATABASE_URL"] = f"sqlite:///{tmp_path / 'isco.db'}"
    codes = {}
    for backend, quantize in (("onnx", "int8"), ("onnx", "none"), ("torch", "none")):
        out = tmp_path / f"{backend}-{quantize}.csv"
        result = CliRunner().invoke(
            build_app(),
            ["predict", "-i", str(source), "-o", str(out), "--model", str(trained), "--no-progress"],
            env={**env, "ISCO_BACKEND": backend, "ISCO_QUANTIZE": quantize},
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        codes[backend, quantize] = [row["unit_code"] for row in csv.DictReader(out.open(encoding="utf-8"))]
    assert codes["onnx", "int8"] == codes["onnx", "none"] == codes["torch", "none"]
    assert codes["torch", "none"] == ["2221", "2221", "5120", "2512", "8322", "7411"]
