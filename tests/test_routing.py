"""Routing (issue 10): non-occupation answers, languages the model does not cover (issue 28), abbreviations
spelled out, and the calibrated routers with their thresholds round-tripping through a model directory. No
model needed."""

from __future__ import annotations

import numpy as np
import pytest

from services.trainer.metrics import coverage_at_precision, expected_calibration_error
from services.trainer.routing_fit import fit_routing, language_thresholds, threshold_for_precision
from shared.routing import POOLED_LANGUAGES, RecordInputs, RoutingModel, match_features
from shared.screening import (
    UNSURE_LANGUAGE,
    flagged,
    not_an_occupation,
    read_language,
    read_languages,
    review_reasons,
    routing_languages,
)
from shared.text import model_input
from shared.titles import expand_abbreviations


@pytest.mark.parametrize(
    "title",
    ["Student", "Pensioner", "retired", "Retired teacher", "Unemployed", "homemaker", "Housewife",
     "stay-at-home mum", "unknown", "none", "N/A", "-", "", "Full-time student"],
)  # fmt: skip
def test_answers_that_are_not_occupations(title):
    assert not_an_occupation(title, "")
    assert "not_an_occupation" in review_reasons(title, "", level=4)


@pytest.mark.parametrize(
    "title", ["Student nurse", "Student adviser", "GP", "Retail assistant", "Housekeeper", "Nurse"]
)
def test_occupations_are_not_flagged(title):
    assert not not_an_occupation(title, "")


@pytest.mark.parametrize("title", ["Busfahrer", "Krankenschwester", "Verkäufer"])
def test_german_titles_go_to_a_coder_with_an_english_model(title):
    reading = read_language(title, "", "", None, ("en",))
    assert reading.unsupported
    assert "unsupported_language" in review_reasons(title, "", 4, reading)


def test_records_read_with_one_hint_as_a_benchmark_sends_them():
    titles = ["Manager", "Krankenpfleger auf der Intensivstation", "nurse working on the children's ward"]
    model = ("en", "de")
    unhinted = read_languages(titles, [""] * 3, None, model)
    assert routing_languages(unhinted, model) == [UNSURE_LANGUAGE, "de", "en"]
    hinted = read_languages(titles, [""] * 3, None, model, hint="en")
    # the hint decides where the text is unsure; a text surely in another language contradicts it
    assert routing_languages(hinted, model) == ["en", "en", "en"]
    assert [r.mismatch for r in hinted] == [False, True, False]
    assert flagged(titles, [""] * 3, hinted).tolist() == [False, True, False]
    assert not flagged(titles, [""] * 3, unhinted).any()


def test_foreign_duties_are_flagged():
    assert read_language("Lehrer", "Unterricht an der Grundschule und Betreuung der Kinder").unsupported
    assert read_language("Vendedor", "Atención al cliente en la tienda y control de las ventas").unsupported


@pytest.mark.parametrize(
    "title",
    ["HGV1 driver", "FLT driver", "RGN", "Snr software dev", "GP", "Waitress", "Chairwoman", "Sous chef",
     "Café manager", "Paediatrician", "Bassoonist", "Crystallographer", "Au pair"],
)  # fmt: skip
def test_english_titles_and_abbreviations_are_not_flagged(title):
    assert not read_language(title, "").unsupported


def test_english_duties_outweigh_an_unknown_title():
    assert not read_language(
        "Polysomnographer", "Monitors patients during sleep studies and records the results"
    ).unsupported


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("HGV1 driver", "heavy goods vehicle driver"),
        ("FLT driver", "forklift truck driver"),
        ("RGN", "registered general nurse"),
        ("Snr software dev", "senior software developer"),
        ("GP", "general practitioner"),
        ("Sr. Accountant", "senior accountant"),
        ("Admin assistant", "administrative assistant"),
        ("Dev manager", "development manager"),
    ],
)
def test_abbreviations_are_spelled_out_for_the_model(written, read):
    assert model_input(written, "") == read
    # duties are left alone: "it" or "rep" there are ordinary words
    assert model_input(written, "rep visits") == f"{read} : rep visits"


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("machine Operator - wood grinding (pulpmaking)", "wood grinding (pulpmaking) machine operator"),
        ("Mistress - secondary education", "secondary education mistress"),
        ("Snr software dev \u2013 London", "london senior software developer"),  # an en dash, abbreviations
        # left alone: hyphens inside words, two dashes, a dangling dash, a qualifier that reads as a sentence
        ("Setter-operator", "setter-operator"),
        ("a - b - c", "a - b - c"),
        ("welder -", "welder -"),
        (
            "welder - works on big ships in the harbour every day",
            "welder - works on big ships in the harbour every day",
        ),
        # an abbreviation given beside its long form: the long form alone
        ("Support Tech (Support Technician)", "support technician"),
        ("BHA (Behavioral Health Aide)", "behavioral health aide"),
        ("Oncology RN (Oncology Registered Nurse)", "oncology registered nurse"),
        ("Sheet Metal Assembler and Riveter (SMAR)", "sheet metal assembler and riveter"),
        ("Painter (construction)", "painter (construction)"),  # a qualifier, not an alias
        ("nurse (nurse practitioner)", "nurse (nurse practitioner)"),
        ("and " * 40 + "(" + "a" * 20 + ")", "and " * 40 + "(" + "a" * 20 + ")"),  # no title: left, at once
    ],
)
def test_titles_are_normalised_as_indexes_and_job_boards_write_them(written, read):
    assert model_input(written, "") == read


def test_unknown_words_are_left_alone():
    assert expand_abbreviations("dental hygienist") == "dental hygienist"


def test_review_reasons_order_and_auto_code():
    assert review_reasons("Nurse", "", level=4) == []
    assert review_reasons("Nurse", "", level=3) == ["below_threshold"]
    assert review_reasons("Student", "", level=None) == ["not_coded", "not_an_occupation"]


def test_threshold_reaches_precision():
    conf = np.linspace(0, 1, 200)
    correct = conf > 0.3  # everything above 0.3 is right
    t = threshold_for_precision(conf, correct, 0.95)
    accepted = conf >= t
    assert correct[accepted].mean() >= 0.95
    assert accepted.mean() > 0.6
    assert coverage_at_precision(conf, correct, 0.95)["coverage"] == pytest.approx(accepted.mean(), abs=0.01)
    # no threshold can reach the target: nothing accepted
    assert (conf >= threshold_for_precision(conf, np.zeros(200, bool), 0.95)).sum() == 0


def test_threshold_bound_counts_occupations_not_labels():
    """200 labels of 20 occupations, all right, then 400 labels of which 1 in 40 is wrong: on records the
    lower bound passes well down the list; counted by occupation (10 labels each), 20 to 60 occupations are
    too few for a 95% bound at z=1.28, so the threshold stays above every confidence. One occupation per
    record is the same as no clusters."""
    conf = np.linspace(1, 0, 600)
    correct = np.ones(600, dtype=bool)
    correct[200::40] = False
    occupations = np.repeat(np.arange(60), 10)
    by_record = threshold_for_precision(conf, correct, 0.95, z=1.28)
    by_occupation = threshold_for_precision(conf, correct, 0.95, z=1.28, clusters=occupations)
    assert (conf >= by_record).sum() >= 500
    assert (conf >= by_occupation).sum() == 0
    assert threshold_for_precision(conf, correct, 0.95, z=1.28, clusters=np.arange(600)) == by_record
    # without a bound (z=0) the point estimate is the same however the records are grouped
    assert threshold_for_precision(conf, correct, 0.95, clusters=occupations) == threshold_for_precision(
        conf, correct, 0.95
    )


def _titles(n, words):
    """RecordInputs of `n` titles alone of `words` words."""
    return RecordInputs(
        has_duties=np.zeros(n, bool), n_words=np.full(n, words), has_industry=np.zeros(n, bool)
    )


def _synthetic(n=2000, groups=20, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, groups)) * rng.uniform(0.5, 4, size=(n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # the top group is right with its probability: calibrated by construction
    correct = rng.uniform(size=n) < probs.max(1)
    return probs, correct


def test_routing_is_calibrated_and_round_trips(tmp_path):
    probs, correct = _synthetic()
    per_level = {level: probs for level in (4, 3, 2, 1)}
    right = {level: correct for level in (4, 3, 2, 1)}
    inputs = _titles(len(probs), words=3)
    routing = fit_routing(per_level, right, inputs, target_precision=0.9, fitted_on="synthetic")
    p4 = routing.probabilities(per_level, inputs)[4]
    assert expected_calibration_error(p4, correct) < 0.05
    accepted = p4 >= routing.levels[4].threshold
    assert correct[accepted].mean() >= 0.9
    routing.save(tmp_path)
    loaded = RoutingModel.load(tmp_path)
    assert loaded is not None
    assert loaded.levels == routing.levels
    np.testing.assert_allclose(loaded.probabilities(per_level, inputs)[4], p4)
    assert RoutingModel.load(tmp_path / "missing") is None


def test_the_match_rule_is_fitted_for_the_target_and_round_trips(tmp_path):
    from shared.model.signals import NearestMatch

    rng = np.random.default_rng(1)
    n = 3000
    probs = rng.dirichlet(np.ones(10) * 0.5, size=n)  # routers alone: unsure
    answers = probs.argmax(1)
    agrees = rng.uniform(size=n) < 0.5
    similarity = rng.uniform(0.6, 1.0, size=n).astype(np.float32)
    # an agreeing nearer text is right more often: ~0.3 at similarity 0.6, ~0.85 at 0.9, ~0.95 at 0.95
    p_agree = 1 / (1 + np.exp(-1.87 * (match_features(similarity)[:, 0] - 1.365)))
    correct = rng.uniform(size=n) < np.where(agrees, p_agree, 0.4)
    nearest = NearestMatch(np.where(agrees, answers, (answers + 1) % 10), similarity)
    per_level = {level: probs for level in (4, 3, 2, 1)}
    right = {level: correct for level in (4, 3, 2, 1)}
    inputs = _titles(n, words=3)
    routing = fit_routing(per_level, right, inputs, target_precision=0.95, nearest=nearest)
    assert routing.match_similarity is not None and 0.9 <= routing.match_similarity <= 0.99
    assert routing.match_precision is not None and routing.match_precision >= 0.95
    confidence, auto = routing.unit_routing(per_level, inputs, nearest)
    matched = agrees & (similarity >= routing.match_similarity)
    assert auto[matched].all() and correct[auto].mean() >= 0.94
    # matched answers read the match router's probability, which climbs with the similarity
    assert routing.match_router is not None
    assert confidence[matched].mean() == pytest.approx(correct[matched].mean(), abs=0.03)
    p_match = routing.match_router.probability(match_features([0.9, 0.95, 0.99]))
    assert p_match[0] < p_match[1] < p_match[2]
    # a near text of another group does not match
    other = NearestMatch((answers + 1) % 10, np.ones(n, np.float32))
    assert not routing.matched(answers, other, inputs.shapes()).any()
    routing.save(tmp_path)
    loaded = RoutingModel.load(tmp_path)
    assert loaded is not None and loaded.match_similarity == routing.match_similarity
    np.testing.assert_array_equal(loaded.unit_routing(per_level, inputs, nearest)[1], auto)
    # without `nearest`, or where similarity never reaches the target: no rule
    assert fit_routing(per_level, right, inputs).match_similarity is None
    far = NearestMatch(nearest.labels, np.full(n, 0.5, np.float32))
    unsure = {level: rng.uniform(size=n) < 0.3 for level in (4, 3, 2, 1)}
    assert fit_routing(per_level, unsure, inputs, nearest=far).match_similarity is None


def test_evaluate_reports_routing_and_draws_the_curve(tmp_path):
    from services.trainer.metrics import compute_metrics, unit_answers
    from services.trainer.report import plot_coverage_precision

    probs, _ = _synthetic(n=300, groups=4)
    codes = ["1111", "2211", "5120", "9112"]
    gold = [codes[j] if i % 4 else codes[(j + 1) % 4] for i, j in enumerate(probs.argmax(1))]
    conf, correct = unit_answers(probs, codes, gold)
    assert correct.mean() == pytest.approx(0.75, abs=0.01)
    metrics = compute_metrics(probs, codes, gold, routed_confidence=conf * 0.9, auto_coded=conf > 0.5)
    assert set(metrics["routing"]["coverage"]) == {"0.90", "0.95", "0.99"}
    assert metrics["routing"]["auto_coded"] == pytest.approx((conf > 0.5).mean())
    pytest.importorskip("matplotlib")
    png = plot_coverage_precision({"test": {"confidence": conf, "correct": correct}}, tmp_path / "curve.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def _constant_routing(probability: float, threshold: float = 0.5) -> RoutingModel:
    from shared.routing import FEATURES, LevelRouter

    n = len(FEATURES)
    logit = float(np.log(probability / (1 - probability)))
    router = LevelRouter(mean=[0.0] * n, std=[1.0] * n, coef=[0.0] * n, intercept=logit, threshold=threshold)
    return RoutingModel(levels={level: router for level in (4, 3, 2, 1)})


def test_predictions_auto_code_only_what_the_router_clears():
    from shared.decision import Hierarchy, build_predictions
    from shared.schemas import JobRecord, Thresholds

    codes = ["2211", "2221", "5131", "8332"]
    hierarchy = Hierarchy.from_codes(codes)
    probs = np.array([[0.9, 0.05, 0.03, 0.02]] * 3)
    records = [JobRecord(job_title="GP"), JobRecord(job_title="Student"), JobRecord(job_title="Busfahrer")]
    texts = [model_input(r.job_title, "") for r in records]

    def predict(routing):
        return build_predictions(
            probs, hierarchy, Thresholds(), 3, "v", records=records, routing=routing, texts=texts
        )

    sure = predict(_constant_routing(0.99))
    assert [p.needs_review for p in sure] == [False, True, True]
    assert sure[0].routing_confidence == pytest.approx(0.99) and sure[0].isco_code == "2211"
    assert sure[1].review_reasons == ["not_an_occupation"]
    assert sure[2].review_reasons == ["unsupported_language"]
    unsure = predict(_constant_routing(0.6, threshold=0.9))
    # still answered at 4 digits (the level thresholds), but reviewed: the router is below its threshold
    assert unsure[0].isco_code == "2211" and unsure[0].review_reasons == ["below_threshold"]
    no_routing = predict(None)
    assert no_routing[0].routing_confidence is None and not no_routing[0].needs_review


def test_routing_reports_the_threshold_each_kind_of_record_needs():
    from services.trainer.routing_fit import kind_thresholds

    rng = np.random.default_rng(2)
    conf = rng.uniform(size=4000)
    kinds = np.where(np.arange(4000) < 3000, "esco_title", "ons_title")
    # the easy kind is right with its confidence + 0.15, the hard one with its confidence + 0.02
    p_right = np.clip(conf + np.where(kinds == "esco_title", 0.15, 0.02), 0, 1)
    correct = rng.uniform(size=4000) < p_right
    pooled = threshold_for_precision(conf, correct, 0.95)
    hard = kinds == "ons_title"
    assert correct[hard & (conf >= pooled)].mean() < 0.95  # the mix carries the hard kind over the target
    per_kind = kind_thresholds(conf, correct, 0.95, kinds.tolist())
    assert set(per_kind) == {"esco_title", "ons_title"}
    assert per_kind["esco_title"] < pooled < per_kind["ons_title"]
    for kind, threshold in per_kind.items():
        assert correct[(kinds == kind) & (conf >= threshold)].mean() >= 0.95
    # a kind with too few records to set a threshold of its own is not reported; no kinds, no report
    few = np.where(np.arange(4000) < 3950, "esco_title", "ons_title")
    assert set(kind_thresholds(conf, correct, 0.95, few.tolist())) == {"esco_title"}
    assert kind_thresholds(conf, correct, 0.95) == {}
    # fit_routing reports them; records of one shape (titles alone) get the threshold of the whole split
    # the top-1 probability rises with conf
    per_level = {level: np.c_[0.5 + conf / 2, 0.5 - conf / 2] for level in (4, 3, 2, 1)}
    right = {level: correct for level in (4, 3, 2, 1)}
    inputs = _titles(4000, words=2)
    routing = fit_routing(per_level, right, inputs, target_precision=0.95, kinds=kinds.tolist())
    router = routing.levels[4]
    assert set(router.kind_thresholds) == {"esco_title", "ons_title"}
    assert router.shape_thresholds == {"title": router.threshold}
    p4 = routing.probabilities(per_level, inputs)[4]
    assert router.threshold == threshold_for_precision(p4, correct, 0.95)
    assert router.kind_thresholds["ons_title"] > router.threshold


def test_each_record_shape_is_held_to_the_target_on_its_own(tmp_path):
    """Titles with their industry (survey-style index entries) are harder than titles alone: one threshold
    over the mix lets them through below the target; each shape's own threshold holds it."""
    rng = np.random.default_rng(3)
    n = 6000
    conf = rng.uniform(size=n)
    has_industry = np.arange(n) >= 4500
    p_right = np.clip(conf + np.where(has_industry, 0.0, 0.15), 0, 1)
    correct = rng.uniform(size=n) < p_right
    per_level = {level: np.c_[0.5 + conf / 2, 0.5 - conf / 2] for level in (4, 3, 2, 1)}
    right = {level: correct for level in (4, 3, 2, 1)}
    inputs = RecordInputs(has_duties=np.zeros(n, bool), n_words=np.full(n, 2), has_industry=has_industry)
    assert (inputs.shapes() == np.where(has_industry, "industry", "title")).all()
    routing = fit_routing(per_level, right, inputs, target_precision=0.95)
    router = routing.levels[4]
    assert set(router.shape_thresholds) == {"title", "industry"}
    p4, auto = routing.unit_routing(per_level, inputs)
    pooled = p4 >= router.threshold
    assert correct[pooled & has_industry].mean() < 0.95  # the mix's threshold carries the harder shape
    for shape in (has_industry, ~has_industry):
        assert auto[shape].any() and correct[auto & shape].mean() >= 0.95
    # a record with duties (no shape threshold fitted: too few such records) falls back to the mix's
    duties = RecordInputs(has_duties=np.ones(n, bool), n_words=np.full(n, 2), has_industry=has_industry)
    assert (router.thresholds_for(duties.shapes()) == router.threshold).all()
    routing.save(tmp_path)
    loaded = RoutingModel.load(tmp_path)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.unit_routing(per_level, inputs)[1], auto)


def test_each_language_other_than_english_is_held_to_the_target_on_its_own(tmp_path):
    """A multilingual model codes German less surely than English: a threshold fitted on the mix lets German
    answers through below the target; German's own threshold holds it. A language with too few fitting
    records (Irish here) gets the pooled threshold of all non-English records; English keeps its shape's."""
    rng = np.random.default_rng(5)
    languages = np.array(["en"] * 4000 + ["de"] * 1500 + ["ga"] * 60, dtype=object)
    n = len(languages)
    conf = rng.uniform(size=n)
    p_right = np.clip(conf + np.where(languages == "en", 0.2, -0.05), 0, 1)
    correct = rng.uniform(size=n) < p_right
    per_level = {level: np.c_[0.5 + conf / 2, 0.5 - conf / 2] for level in (4, 3, 2, 1)}
    right = {level: correct for level in (4, 3, 2, 1)}
    inputs = RecordInputs.from_texts(["bus driver"] * n, languages.tolist())
    routing = fit_routing(per_level, right, inputs, target_precision=0.95)
    router = routing.levels[4]
    assert set(router.language_thresholds) == {"de", POOLED_LANGUAGES}  # ga: 60 < MIN_LANGUAGE_RECORDS
    assert router.language_thresholds["de"] > router.shape_thresholds["title"]
    p4, auto = routing.unit_routing(per_level, inputs)
    german, english, irish = languages == "de", languages == "en", languages == "ga"
    assert correct[(p4 >= router.shape_thresholds["title"]) & german].mean() < 0.95  # the mix's carries it
    assert auto[german].any() and correct[auto & german].mean() >= 0.95
    shapes = inputs.shapes()
    thresholds = router.thresholds_for(shapes, inputs.language_codes())
    assert (thresholds[english] == router.shape_thresholds["title"]).all()
    assert (
        thresholds[irish]
        == max(router.language_thresholds[POOLED_LANGUAGES], router.shape_thresholds["title"])
    ).all()
    # the router reads the language too: the same scores are less sure in German than in English
    assert p4[german].mean() < p4[english].mean() - 0.05
    routing.save(tmp_path)
    loaded = RoutingModel.load(tmp_path)
    assert loaded is not None and loaded.levels[4].language_thresholds == router.language_thresholds
    np.testing.assert_array_equal(loaded.unit_routing(per_level, inputs)[1], auto)
    # records read as English alone (an English-only model's) get no language threshold
    english_only = fit_routing(per_level, right, RecordInputs.from_texts(["bus driver"] * n), 0.95)
    assert english_only.levels[4].language_thresholds == {}


def test_a_record_whose_language_is_only_guessed_is_held_to_the_unsure_threshold():
    """A short title the identifier cannot place is guessed to be in the model's likeliest language (often
    English); routing holds it to the threshold fitted on such records ("?"), else the pooled non-English
    one, never to English's. A one-language model reads every record in its language, as it was fitted."""
    multilingual = ("en", "de", "nl")
    guessed = read_language("Manager", "", "", None, multilingual)
    assert guessed.detected is None and guessed.routing_key() == UNSURE_LANGUAGE
    assert read_language("Manager", "", "", "de", multilingual).routing_key() == "de"  # a hint is sure
    sure = read_language(
        "Lehrer", "Unterricht an der Grundschule und Betreuung der Kinder", "", None, multilingual
    )
    assert sure.routing_key() == "de"
    assert routing_languages([guessed, sure], multilingual) == [UNSURE_LANGUAGE, "de"]
    assert routing_languages([guessed, sure], ("en",)) is None
    router = RoutingModel.model_validate(
        {"levels": {4: {"mean": [0.0], "std": [1.0], "coef": [0.0], "intercept": 0.0, "threshold": 0.8}}}
    ).levels[4]
    shapes = np.array(["title"] * 3)
    keys = np.array(["en", UNSURE_LANGUAGE, "de"], dtype=object)
    router.language_thresholds = {POOLED_LANGUAGES: 0.9}
    assert router.thresholds_for(shapes, keys).tolist() == [0.8, 0.9, 0.9]
    router.language_thresholds = {POOLED_LANGUAGES: 0.9, UNSURE_LANGUAGE: 0.95, "de": 0.85}
    assert router.thresholds_for(shapes, keys).tolist() == [0.8, 0.95, 0.85]


def test_unsure_records_get_no_threshold_of_their_own_and_stay_out_of_the_pool():
    """Validation's unsure records are mostly easy short English titles: fitted on them, a threshold would let
    foreign titles through; they are held to the pool of surely foreign records instead."""
    rng = np.random.default_rng(7)
    languages = np.array(["de"] * 600 + [UNSURE_LANGUAGE] * 600, dtype=object)
    conf = rng.uniform(size=len(languages))
    correct = rng.uniform(size=len(languages)) < np.clip(conf + np.where(languages == "de", -0.05, 0.3), 0, 1)
    fitted = language_thresholds(conf, correct, 0.95, languages)
    assert set(fitted) == {"de", POOLED_LANGUAGES}
    german = languages == "de"
    assert fitted[POOLED_LANGUAGES] == threshold_for_precision(conf[german], correct[german], 0.95)
    assert language_thresholds(conf, correct, 0.95, np.full(len(conf), UNSURE_LANGUAGE, dtype=object)) == {}


def test_a_routing_file_from_before_the_industry_feature_still_loads(tmp_path):
    """routing.json names the features it was fitted on; a model fitted without `has_industry` reads the
    same columns it was fitted on."""
    probs, correct = _synthetic()
    per_level = {level: probs for level in (4, 3, 2, 1)}
    right = {level: correct for level in (4, 3, 2, 1)}
    inputs = _titles(len(probs), words=3)
    routing = fit_routing(per_level, right, inputs, target_precision=0.9)
    old = routing.model_dump()
    # as written before "has_industry" and "non_english" were appended
    old["features"] = old["features"][:-2]
    for router in old["levels"].values():
        for key in ("mean", "std", "coef"):
            router[key] = router[key][:-2]
    (tmp_path / "routing.json").write_text(RoutingModel.model_validate(old).model_dump_json())
    loaded = RoutingModel.load(tmp_path)
    assert loaded is not None and "has_industry" not in loaded.features
    # both are constant 0 here, so dropping their columns leaves the probabilities as they were
    np.testing.assert_allclose(
        loaded.probabilities(per_level, inputs)[4], routing.probabilities(per_level, inputs)[4]
    )


def test_a_threshold_on_the_precision_lower_bound_is_stricter_where_records_are_few():
    from services.trainer.routing_fit import precision_lower_bound

    # Wilson: 95 right of 100 has a lower bound well under 0.95; the point estimate is z = 0
    assert precision_lower_bound(np.array([95]), np.array([100]), 0.0)[0] == pytest.approx(0.95)
    assert precision_lower_bound(np.array([95]), np.array([100]), 1.28)[0] == pytest.approx(0.913, abs=0.002)
    assert precision_lower_bound(np.array([950]), np.array([1000]), 1.28)[0] > 0.94  # more records, tighter
    probs, correct = _synthetic(n=3000)
    conf = probs.max(1)
    point, bounded = (threshold_for_precision(conf, correct, 0.9, z) for z in (0.0, 1.28))
    assert bounded > point
    n_above = (conf >= bounded).sum()
    assert precision_lower_bound(correct[conf >= bounded].sum(), n_above, 1.28) >= 0.9
