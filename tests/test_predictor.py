"""The inference core: decision logic, hierarchy sums, alternatives, titles, cache, fast paths, reload."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from shared.decision import Hierarchy, build_predictions, choose_level, level_probabilities, record_text
from shared.holder import PredictorHolder
from shared.predictor import Predictor, PredictorConfig, ProbabilityCache
from shared.schemas import MAX_TEXT_CHARS, JobRecord, PredictOptions, Thresholds
from shared.taxonomy import get_taxonomy
from shared.text import INDUSTRY_MAX_CHARS, model_input
from tests.tiny_model import build_tiny_model_dir

TAX = get_taxonomy()
CODES = TAX.unit_groups
HIER = Hierarchy.from_codes(CODES)


def probs_with(assign: dict[str, float]) -> np.ndarray:
    """One row: the given unit probabilities, the rest spread evenly over all other unit groups."""
    row = np.zeros(len(CODES), dtype=np.float64)
    rest = 1.0 - sum(assign.values())
    others = [i for i, c in enumerate(CODES) if c not in assign]
    row[others] = rest / len(others)
    for code, p in assign.items():
        row[CODES.index(code)] = p
    return row[None, :]


def predict_row(assign: dict[str, float], thresholds: Thresholds, top_k: int = 5):
    return build_predictions(probs_with(assign), HIER, thresholds, top_k, "v-test")[0]


# ---------------------------------------------------------------------------------------------------------
# hierarchy
# ---------------------------------------------------------------------------------------------------------


def test_hierarchy_shapes_and_membership() -> None:
    assert [len(HIER.group_codes[level]) for level in (1, 2, 3, 4)] == [10, 43, 130, 436]
    for level in (1, 2, 3):
        assert np.all(HIER.indicators[level].sum(axis=1) == 1)  # every unit group in exactly one group
    col = HIER.index[3]["221"]
    members = {CODES[i] for i in np.nonzero(HIER.indicators[3][:, col])[0]}
    assert members == {"2211", "2212"}


def test_level_probabilities_sum_up_the_hierarchy() -> None:
    rng = np.random.default_rng(0)
    unit = rng.dirichlet(np.ones(len(CODES)), size=3).astype(np.float32)
    levels = level_probabilities(unit, HIER)
    for level in (1, 2, 3):
        np.testing.assert_allclose(levels[level].sum(axis=1), 1.0, atol=1e-5)
    nursing = [CODES.index(c) for c in ("2221", "2222")]
    np.testing.assert_allclose(levels[3][:, HIER.index[3]["222"]], unit[:, nursing].sum(axis=1), rtol=1e-6)
    health = [i for i, c in enumerate(CODES) if c.startswith("22")]
    np.testing.assert_allclose(levels[2][:, HIER.index[2]["22"]], unit[:, health].sum(axis=1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# decisions at and around thresholds
# ---------------------------------------------------------------------------------------------------------


def test_choose_level_boundaries() -> None:
    best = {4: ("2211", 0.5), 3: ("221", 0.7), 2: ("22", 0.8), 1: ("2", 0.9)}
    assert choose_level(best, Thresholds(unit=0.5)).level == 4  # exactly at the threshold clears it
    assert choose_level(best, Thresholds(unit=0.5000001)).level == 3  # just above: fall back to minor
    assert choose_level(best, Thresholds(unit=0.6, minor=0.7000001, sub_major=0.8)).code == "22"
    assert choose_level(best, Thresholds(unit=0.6, minor=0.71, sub_major=0.81, major=0.9)).code == "2"
    assert choose_level(best, Thresholds(unit=0.6, minor=0.71, sub_major=0.81, major=0.91)) is None
    # the deepest clearing level wins even when a coarser threshold is stricter
    assert choose_level(best, Thresholds(unit=0.4, minor=0.99, sub_major=0.99, major=0.99)).level == 4


def test_unit_answer_at_threshold() -> None:
    p = predict_row({"2211": 0.5, "2212": 0.3}, Thresholds(unit=0.5))
    assert (p.coded, p.isco_code, p.level, p.is_fallback) == (True, "2211", 4, False)
    assert p.title == "Generalist Medical Practitioners" == p.unit_title
    assert p.confidence == pytest.approx(0.5)


def test_fallback_to_minor_just_above_unit_threshold() -> None:
    p = predict_row({"2211": 0.5, "2212": 0.3}, Thresholds(unit=0.51))
    assert (p.coded, p.isco_code, p.level, p.is_fallback) == (True, "221", 3, True)
    assert p.title == "Medical Doctors"
    assert p.confidence == pytest.approx(0.8, abs=1e-3)  # plus the tiny spread on no other unit (221 has 2)
    assert p.unit_code == "2211" and p.unit_confidence == pytest.approx(0.5)


def test_fallback_to_sub_major_and_major() -> None:
    assign = {"2211": 0.3, "2221": 0.3, "2310": 0.25}  # 22 health = 0.6, 2 professionals = 0.85
    p = predict_row(assign, Thresholds(unit=0.5, minor=0.5, sub_major=0.55))
    assert (p.isco_code, p.level, p.title) == ("22", 2, "Health Professionals")
    p = predict_row(assign, Thresholds(unit=0.5, minor=0.5, sub_major=0.7, major=0.8))
    assert (p.isco_code, p.level, p.title) == ("2", 1, "Professionals")


def test_below_every_threshold_not_coded_but_alternatives_given() -> None:
    p = predict_row({"2211": 0.3, "7212": 0.3}, Thresholds(unit=0.9, minor=0.9, sub_major=0.9, major=0.9), 3)
    assert p.coded is False
    assert p.isco_code is None and p.level is None and p.title is None and p.confidence is None
    assert p.is_fallback is True
    assert [a.code for a in p.alternatives][:2] == ["2211", "7212"]
    assert len(p.alternatives) == 3


def test_minor_choice_is_the_most_likely_minor_group() -> None:
    # best unit 2211 (0.4) but minor 222 (0.25 + 0.25) beats 221 (0.4): the fallback answers 222
    p = predict_row({"2211": 0.4, "2221": 0.25, "2222": 0.25}, Thresholds(unit=0.45))
    assert (p.isco_code, p.level) == ("222", 3)
    assert p.unit_code == "2211"


def test_alternatives_path_and_titles() -> None:
    p = predict_row({"2211": 0.4, "2221": 0.3, "3221": 0.1}, Thresholds(), top_k=4)
    assert [a.code for a in p.alternatives][:3] == ["2211", "2221", "3221"]
    assert len(p.alternatives) == 4
    confs = [a.confidence for a in p.alternatives]
    assert confs == sorted(confs, reverse=True)
    assert all(a.title == TAX.title(a.code) for a in p.alternatives)
    assert [(g.code, g.level) for g in p.path] == [("2", 1), ("22", 2), ("221", 3), ("2211", 4)]
    assert [g.title for g in p.path] == [TAX.title(g.code) for g in p.path]
    path_conf = [g.confidence for g in p.path]
    assert path_conf == sorted(path_conf, reverse=True)  # a group is at least as likely as its member
    assert p.model_version == "v-test"


def test_top_k_bounds() -> None:
    assert len(predict_row({"2211": 0.4}, Thresholds(), top_k=1).alternatives) == 1
    assert len(predict_row({"2211": 0.4}, Thresholds(), top_k=20).alternatives) == 20


def test_record_text_truncation_flag() -> None:
    text, cut = record_text(JobRecord(job_title="Nurse", duties_description="x" * (MAX_TEXT_CHARS + 1)))
    assert cut and text.startswith("nurse : ") and len(text) == len("nurse : ") + MAX_TEXT_CHARS
    assert record_text(JobRecord(job_title="a" * MAX_TEXT_CHARS))[1] is False


def test_record_text_reads_the_industry() -> None:
    plain = record_text(JobRecord(job_title="Inspector", duties_description="checks rolls"))
    assert plain == ("inspector : checks rolls", False)
    text, cut = record_text(
        JobRecord(job_title="Inspector", duties_description="checks rolls", industry="Paper mfr")
    )
    assert (text, cut) == ("inspector (industry: paper manufacturing) : checks rolls", False)
    assert text == model_input("Inspector", "checks rolls", "Paper mfr")  # the one text contract
    for absent in ("", "   ", "\t\n"):  # empty or white space: as if not given
        assert record_text(JobRecord(job_title="Inspector", industry=absent)) == ("inspector", False)
    # longer than its limit (cleaned, as the model reads it): cut to the limit and flagged
    long, cut = record_text(JobRecord(job_title="Inspector", industry="p" * (INDUSTRY_MAX_CHARS + 1)))
    assert cut and long == f"inspector (industry: {'p' * INDUSTRY_MAX_CHARS})"
    assert record_text(JobRecord(job_title="Inspector", industry="p" * INDUSTRY_MAX_CHARS))[1] is False
    spaced = "  paper   " + " " * (
        INDUSTRY_MAX_CHARS * 2
    )  # long only in white space that cleaning folds away
    assert record_text(JobRecord(job_title="Inspector", industry=spaced)) == (
        "inspector (industry: paper)",
        False,
    )
    huge, cut = record_text(JobRecord(job_title="Inspector", industry="q" * (MAX_TEXT_CHARS * 10)))
    assert cut and huge == f"inspector (industry: {'q' * INDUSTRY_MAX_CHARS})"


def test_industry_does_not_make_a_record() -> None:
    with pytest.raises(ValidationError, match="both empty"):
        JobRecord(industry="paper manufacturing")
    with pytest.raises(ValidationError) as info:
        JobRecord.model_validate({"job_title": "inspector", "industry": 5})
    assert info.value.errors()[0]["loc"] == ("industry",)


def test_int8_keeps_the_first_ffn_output_projections_fp32() -> None:
    from shared.model.int8 import FFN_OUT_ONNX_NODE, keeps_fp32

    assert keeps_fp32("encoder.encoder.layer.0.output.dense", 2)
    assert keeps_fp32("encoder.encoder.layer.1.output.dense", 2)
    assert not keeps_fp32("encoder.encoder.layer.2.output.dense", 2)
    assert not keeps_fp32("encoder.encoder.layer.0.attention.output.dense", 2)
    assert not keeps_fp32("encoder.encoder.layer.0.intermediate.dense", 2)
    assert not keeps_fp32("encoder.encoder.layer.0.output.dense", 0)
    assert keeps_fp32("/encoder/encoder/layer.1/output/dense/MatMul", 2, FFN_OUT_ONNX_NODE)
    assert not keeps_fp32("/encoder/encoder/layer.1/attention/output/dense/MatMul", 2, FFN_OUT_ONNX_NODE)


def test_probability_cache_is_lru() -> None:
    cache = ProbabilityCache(2)
    cache.put_many({"a": (np.zeros(2), (0, 0.5)), "b": (np.ones(2), (1, 0.9))})
    assert set(cache.get_many(["a"])) == {"a"}  # a is now the most recent
    cache.put_many({"c": (np.ones(2), (-1, 0.0))})
    found = cache.get_many(["a", "b", "c"])
    assert set(found) == {"a", "c"} and found["a"][1] == (0, 0.5)
    assert not found["a"][0].flags.writeable  # shared rows are read-only
    assert (cache.hits, cache.misses) == (3, 1)


# ---------------------------------------------------------------------------------------------------------
# with a (tiny) model
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return build_tiny_model_dir(root / "a", "tiny-a", seed=0), build_tiny_model_dir(
        root / "b", "tiny-b", seed=1
    )


class CountingScorer:
    def __init__(self, inner):  # type: ignore[no-untyped-def]
        self.inner, self.codes, self.version, self.calls = inner, inner.codes, inner.version, []

    def unit_scores(self, texts, batch_size=64):  # type: ignore[no-untyped-def]
        self.calls.append(list(texts))
        return self.inner.unit_scores(texts, batch_size)


def test_predictor_end_to_end_and_cache(tiny_dirs: tuple[Path, Path]) -> None:
    loaded = Predictor.load(tiny_dirs[0])
    scorer = CountingScorer(loaded.scorer)
    predictor = Predictor(scorer, loaded.config, tiny_dirs[0])
    assert predictor.version == "tiny-a" and predictor.codes == CODES
    records = [
        JobRecord(id="1", job_title="Nurse"),
        JobRecord(id="2", job_title=" nurse "),  # same model input after cleaning
        JobRecord(id="3", job_title="welder", duties_description="w" * (MAX_TEXT_CHARS + 5)),
    ]
    out = predictor.predict(records, PredictOptions(top_k=3))
    assert [p.id for p in out] == ["1", "2", "3"]
    assert [p.truncated for p in out] == [False, False, True]
    assert out[0].model_dump() == {**out[1].model_dump(), "id": "1"}
    assert scorer.calls == [["nurse", "welder : " + "w" * MAX_TEXT_CHARS]]  # duplicates scored once
    predictor.predict(records[:1], PredictOptions())
    assert len(scorer.calls) == 1  # cached
    # the industry is part of the model input, so of the cache key: a new text, scored once
    with_industry = [JobRecord(id="4", job_title="Nurse", industry="Hospital"), JobRecord(job_title="nurse")]
    coded = predictor.predict(with_industry, PredictOptions())
    assert scorer.calls[-1] == ["nurse (industry: hospital)"] and len(scorer.calls) == 2
    assert coded[0].id == "4" and coded[0].truncated is False
    assert "nurse (industry: hospital)" in predictor.cache.get_many(["nurse (industry: hospital)"])
    predictor.predict(with_industry[:1], PredictOptions())
    assert len(scorer.calls) == 2  # cached under its own text
    probs = predictor.probabilities(["nurse", "teacher"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert all(len(p.path) == 4 and p.alternatives[0].code == p.unit_code for p in out)


def same_predictions(xs: list, ys: list) -> bool:  # type: ignore[type-arg]
    def key(p):  # type: ignore[no-untyped-def]
        return (p.id, p.isco_code, p.level, p.unit_code, [a.code for a in p.alternatives], p.truncated)

    return [key(x) for x in xs] == [key(y) for y in ys] and all(
        x.unit_confidence == pytest.approx(y.unit_confidence, abs=1e-5) for x, y in zip(xs, ys, strict=True)
    )


def test_predict_groups_matches_separate_calls(tiny_dirs: tuple[Path, Path]) -> None:
    predictor = Predictor.load(tiny_dirs[0], PredictorConfig(cache_size=0))
    a = [JobRecord(job_title="cook")]
    b = [JobRecord(job_title="driver"), JobRecord(job_title="cook", id="x")]
    opts_b = PredictOptions(top_k=2, thresholds=Thresholds(unit=0.0))
    together = predictor.predict_groups([(a, PredictOptions()), (b, opts_b), ([], None)])
    # same answers; confidences equal up to float error (batch shape changes the BLAS kernels)
    assert same_predictions(together[0], predictor.predict(a))
    assert same_predictions(together[1], predictor.predict(b, opts_b))
    assert together[2] == []
    assert together[1][0].level == 4 and len(together[1][0].alternatives) == 2


def test_token_length_batches_give_the_scorers_answers(tiny_dirs: tuple[Path, Path]) -> None:
    predictor = Predictor.load(tiny_dirs[0], PredictorConfig(cache_size=0, batch_size=8))
    texts = [("word " * (i % 23 + 1)).strip() + f" {i}" for i in range(70)]
    direct = predictor.scorer.unit_probabilities(texts, batch_size=70)
    np.testing.assert_allclose(predictor.probabilities(texts), direct, atol=1e-5)


def test_config_from_settings_object() -> None:
    class S:
        backend, quantize, cache_size, unrelated, torch_threads = "onnx", "int8", 7, 1, None

    config = PredictorConfig.from_settings(S())
    assert (config.backend, config.quantize, config.cache_size, config.torch_threads) == (
        "onnx",
        "int8",
        7,
        None,
    )


# ---------------------------------------------------------------------------------------------------------
# hot reload
# ---------------------------------------------------------------------------------------------------------


def test_holder_swaps_atomically_and_survives_errors(tiny_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    target = {"dir": tiny_dirs[0]}
    holder = PredictorHolder(None, locate=lambda _s: target["dir"])
    assert holder.current is None and holder.check() is True
    first = holder.current
    assert first is not None and first.version == "tiny-a"
    assert holder.check() is False  # unchanged: no reload

    in_flight = first  # a request took this reference before the swap
    target["dir"] = tiny_dirs[1]
    assert holder.check() is True
    assert holder.current is not None and holder.current.version == "tiny-b"
    assert in_flight.predict([JobRecord(job_title="nurse")])[0].model_version == "tiny-a"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text('{"version": "broken"}')
    target["dir"] = broken
    assert holder.check() is False
    assert holder.current.version == "tiny-b" and holder.last_error


def test_holder_follows_registry_best_model(tiny_dirs: tuple[Path, Path], common_settings) -> None:  # type: ignore[no-untyped-def]
    from shared import registry
    from shared.db.session import session_scope

    def register(version: str, path: Path, best: bool) -> None:
        with session_scope(common_settings.db_url) as session:
            registry.create_pending(session, version=version, path=path, base_model="tiny")
            registry.mark_ready(session, version, metrics={}, eval_score=0.1, eval_data_hash="h")
            if best:
                registry.set_best(session, version)

    holder = PredictorHolder(common_settings)
    assert holder.check() is False and holder.current is None  # nothing promoted yet
    register("tiny-a", tiny_dirs[0], best=True)
    register("tiny-b", tiny_dirs[1], best=False)
    assert holder.check() is True and holder.current.version == "tiny-a"

    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:  # requests keep flowing during the swap and none fails
        while not stop.is_set():
            predictor = holder.current
            seen.append(predictor.predict([JobRecord(job_title="cook")])[0].model_version)

    worker = threading.Thread(target=serve)
    worker.start()
    with session_scope(common_settings.db_url) as session:
        registry.set_best(session, "tiny-b")
    holder.start_polling(0.05)
    try:
        for _ in range(200):
            if holder.current.version == "tiny-b":
                break
            threading.Event().wait(0.05)
    finally:
        holder.stop()
        stop.set()
        worker.join()
    assert holder.current.version == "tiny-b"
    assert set(seen) <= {"tiny-a", "tiny-b"} and seen


# ---------------------------------------------------------------------------------------------------------
# the model store is written by training only
# ---------------------------------------------------------------------------------------------------------


def test_serving_leaves_a_read_only_model_directory_unchanged(tmp_path: Path) -> None:
    """A model directory without ONNX graphs (trained before they were an artefact), read-only as a model
    store mounted :ro, is served on ONNX Runtime: the graphs go to a cache outside it, and the directory is
    left as it was. With the graphs training writes, serving reads those."""
    import shutil

    from shared.model.directory import ModelDir
    from shared.model.int8 import INT8_FP32_LAYERS
    from shared.model.onnx_export import ONNX_DIR, cache_dir, export_onnx_graphs, graph_name, onnx_graph

    model_dir = build_tiny_model_dir(tmp_path / "store" / "tiny-ro", "tiny-ro", seed=2)

    def snapshot() -> dict[Path, tuple[int, int, int]]:
        return {
            p.relative_to(model_dir): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns)
            for p in [model_dir, *model_dir.rglob("*")]
        }

    modes = {p: p.stat().st_mode for p in [model_dir, *model_dir.rglob("*")]}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    cache = cache_dir(ModelDir.read(model_dir))
    try:
        before = snapshot()
        predictor = Predictor.load(model_dir, PredictorConfig(backend="onnx", quantize="int8", cache_size=0))
        assert predictor.scorer.backend == "onnx-int8"
        assert predictor.predict([JobRecord(job_title="nurse")])[0].unit_code in CODES
        assert snapshot() == before and not (model_dir / ONNX_DIR).exists()
        assert (cache / graph_name("int8", INT8_FP32_LAYERS)).is_file()
        assert not cache.is_relative_to(tmp_path / "store")
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
        shutil.rmtree(cache, ignore_errors=True)

    written = export_onnx_graphs(model_dir)  # what the trainer's pipeline does after fine-tuning
    assert [p.parent for p in written] == [model_dir / ONNX_DIR] * 2
    directory = ModelDir.read(model_dir)
    tokenizer = directory.tokenizer()
    stored = onnx_graph(directory, tokenizer, directory.encoder_spec(tokenizer), "int8", INT8_FP32_LAYERS)
    assert stored == model_dir / ONNX_DIR / graph_name("int8", INT8_FP32_LAYERS)
    assert not cache.exists()
