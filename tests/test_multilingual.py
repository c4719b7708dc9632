"""Issue 28's corpus side: ESCO's labels in 25 languages (shared/corpus_multilingual.py), how they join the
default corpus and the trainer's records and splits, and the per-language benchmark's peer
(bench/multilingual.py)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from bench.multilingual import CharNgramPeer, DevRecord, dev_records, peer_results, summarise
from services.trainer.config import PreprocessConfig, TrainerSettings
from services.trainer.pipeline import MIN_LANGUAGE_EXAMPLES, trained_languages
from services.trainer.preprocess import prepare, validate
from services.trainer.records import Example, RawRow, read_coded_csv, rows_from_corpus
from services.trainer.splits import split
from shared.corpus import SOURCES, build_default_corpus, corpus_counts, corpus_languages
from shared.corpus_multilingual import (
    ESCO_LANGUAGES,
    LanguageLabel,
    check_languages,
    dev_split,
    held_out_occupation,
    load_labels,
    sample_labels,
    training_labels,
)

URI = "http://data.europa.eu/esco/occupation/"


def _uris(held_out: bool, n: int) -> list[str]:
    """`n` made-up occupation URIs that are (or are not) in the dev split."""
    out = [f"{URI}test-{i}" for i in range(200)]
    return [u for u in out if held_out_occupation(u) == held_out][:n]


def _fixture() -> list[LanguageLabel]:
    """Two trained occupations and one held out, in German and French; the first has 5 German labels."""
    trained, held = _uris(False, 2), _uris(True, 1)
    labels = [
        LanguageLabel(trained[0], "de", "alternative", "Krankenpflegerin", "2221"),
        LanguageLabel(trained[0], "de", "preferred", "Krankenpfleger", "2221"),
        LanguageLabel(trained[0], "de", "alternative", "Pflegefachmann", "2221"),
        LanguageLabel(trained[0], "de", "alternative", "Pflegefachfrau", "2221"),
        LanguageLabel(trained[0], "de", "alternative", "Krankenschwester", "2221"),
        LanguageLabel(trained[0], "fr", "preferred", "infirmier", "2221"),
        LanguageLabel(trained[1], "de", "preferred", "Bäcker", "7512"),
        LanguageLabel(trained[1], "fr", "preferred", "boulanger", "7512"),
        LanguageLabel(trained[1], "fr", "alternative", "boulangère", "7512"),
        LanguageLabel(held[0], "de", "preferred", "Metzger", "7511"),
        LanguageLabel(held[0], "fr", "preferred", "boucher", "7511"),
        LanguageLabel(held[0], "fr", "alternative", "bouchère", "7511"),
    ]
    return labels


def test_sampling_keeps_the_preferred_label_and_at_most_k_per_occupation_and_language() -> None:
    labels = _fixture()
    for k in (1, 2, 3):
        kept = training_labels(["de", "fr"], k, labels=labels)
        per_pair: dict[tuple[str, str], list[LanguageLabel]] = defaultdict(list)
        for x in kept:
            per_pair[(x.concept_uri, x.language)].append(x)
        assert all(len(v) <= k for v in per_pair.values())
        # every (occupation, language) of the trained occupations keeps its preferred label
        assert all(any(x.label_kind == "preferred" for x in v) for v in per_pair.values())
        assert len(per_pair) == 4
        assert training_labels(["de", "fr"], k, labels=labels) == kept  # deterministic
    assert len(training_labels(["de", "fr"], None, labels=labels)) == 9  # all labels of trained occupations
    assert {x.language for x in training_labels(["fr"], None, labels=labels)} == {"fr"}
    with pytest.raises(ValueError, match="max_labels"):
        training_labels(["de"], 0, labels=labels)


def test_the_labels_beyond_the_sample_are_the_rest_of_the_trained_occupations() -> None:
    labels = _fixture()
    kept, rest = sample_labels(["de", "fr"], 2, labels=labels)
    assert kept == training_labels(["de", "fr"], 2, labels=labels)
    # the German nurse's 5 labels: 2 sampled, 3 beyond; held-out occupations are in neither part
    assert sorted(x.label for x in rest) == sorted(
        set(x.label for x in training_labels(["de", "fr"], None, labels=labels)) - {x.label for x in kept}
    )
    assert len(rest) == 3 and {x.concept_uri for x in rest} == {kept[0].concept_uri}
    assert sample_labels(["de", "fr"], None, labels=labels)[1] == []


def test_labels_beyond_the_sample_stay_with_held_out_occupations_and_never_train() -> None:
    examples = []
    for code in ("2221", "7512"):
        for i in range(12):
            uri = f"{URI}{code}-{i}"
            for j, source in enumerate(("esco_title_multilingual", "esco_title_multilingual_eval") * 2):
                text = f"Pfleger {code} {i} {j}"
                examples.append(Example(text, code, source, text, "", "t", "", "de", uri))
    config = PreprocessConfig(val_fraction=0.2, test_fraction=0.2)
    train, val, test = split(examples, config)
    assert not any(e.source == "esco_title_multilingual_eval" for e in train)
    for part in (val, test):
        held = {e.group for e in part}
        # a held-out occupation keeps every label it has, sampled or not
        assert sorted(e.text for e in part) == sorted(e.text for e in examples if e.group in held)
    # the same occupations are held out with or without the labels beyond the sample
    sampled = [e for e in examples if e.source == "esco_title_multilingual"]
    train2, val2, test2 = split(sampled, config)
    assert {e.group for e in val2} == {e.group for e in val}
    assert {e.group for e in test2} == {e.group for e in test}
    assert [e.text for e in train2] == [e.text for e in train]


def test_a_label_that_never_trains_yields_to_one_that_may() -> None:
    from services.trainer.preprocess import deduplicate

    uri = f"{URI}x"
    never = Example("chef", "3434", "esco_title_multilingual_eval", "chef", "", "t:1", "", "fr", uri)
    may = Example("chef", "3434", "esco_title_multilingual", "chef", "", "t:2", "", "de", uri)
    other = Example("chef", "1120", "esco_title_multilingual_eval", "chef", "", "t:3", "", "nl", uri)
    kept, duplicates, conflicts = deduplicate([never, may])
    assert kept == [may] and duplicates == 1
    kept, _, conflicts = deduplicate([other, may])
    assert kept == [may] and conflicts[0]["dropped_source"] == "esco_title_multilingual_eval"


def test_held_out_split_is_deterministic_and_never_trains() -> None:
    labels = _fixture()
    dev = dev_split(["de", "fr"], labels=labels)
    assert [x.label for x in dev] == ["Metzger", "boucher", "bouchère"]
    trained = training_labels(["de", "fr"], None, labels=labels)
    assert not {x.concept_uri for x in dev} & {x.concept_uri for x in trained}
    # up to N per language, the same ones every time
    assert len(dev_split(["fr"], 1, labels=labels)) == 1
    assert dev_split(["fr"], 1, labels=labels) == dev_split(["fr"], 1, labels=labels)


def test_the_real_file_holds_out_one_occupation_in_ten_in_every_language() -> None:
    labels = load_labels()
    dev = dev_split(per_language=50)
    assert {x.language for x in dev} == set(ESCO_LANGUAGES)
    assert all(sum(x.language == lang for x in dev) == 50 for lang in ESCO_LANGUAGES)
    held = {x.concept_uri for x in labels if held_out_occupation(x.concept_uri)}
    assert 0.08 < len(held) / len({x.concept_uri for x in labels}) < 0.12
    assert {x.concept_uri for x in dev} <= held
    assert dev == dev_split(per_language=50)


def test_default_languages_keep_todays_english_corpus() -> None:
    records = build_default_corpus()
    # the English corpus of before this change, record for record (79,339 with the facts tables of 2026-12-07)
    assert len(records) == 79339
    assert corpus_languages(records) == ["en"]
    assert "esco_title_multilingual" not in corpus_counts(records)
    for profile in ("quick", "full"):
        assert TrainerSettings(profile=profile).corpus_languages == ["en"]


def test_multilingual_records_carry_their_language_and_occupation() -> None:
    records = build_default_corpus(
        sources=["esco_title", "esco_title_multilingual"],
        languages=["en", "de", "el"],
        multilingual_max_labels=1,
    )
    multilingual = [r for r in records if r.source == "esco_title_multilingual"]
    assert {r.language for r in multilingual} == {"de", "el"}
    assert all(r.occupation.startswith(URI) and not held_out_occupation(r.occupation) for r in multilingual)
    assert corpus_languages(records) == ["de", "el", "en"]
    # one label per occupation and language at K=1
    assert len({(r.occupation, r.language) for r in multilingual}) == len(multilingual)
    rows = rows_from_corpus(multilingual[:50])
    assert all(row.language in ("de", "el") and row.group.startswith(URI) for row in rows)
    examples, invalid = validate(rows)
    assert not invalid and all(e.language in ("de", "el") and e.group for e in examples)


def test_a_languages_list_is_checked() -> None:
    assert check_languages(["EN", "de", "de"]) == ["en", "de"]
    with pytest.raises(ValueError, match="'xx' is not a corpus language; accepted codes"):
        check_languages(["en", "xx"])
    with pytest.raises(ValueError, match="must include 'en'"):
        build_default_corpus(languages=["de"])
    with pytest.raises(ValueError, match="corpus_languages"):
        TrainerSettings(corpus_languages=["en", "klingon"])
    ml = TrainerSettings(profile="multilingual")
    assert ml.corpus_languages == ["en", *ESCO_LANGUAGES] and ml.multilingual_max_labels == 1
    assert TrainerSettings(profile="multilingual-full").corpus_languages == ["en", *ESCO_LANGUAGES]
    assert "esco_title_multilingual" in SOURCES and "esco_title_multilingual_eval" in SOURCES


def test_split_keeps_every_language_of_an_occupation_together() -> None:
    examples = []
    for code in ("2221", "7512"):
        for i in range(12):
            uri = f"{URI}{code}-{i}"
            for lang, title in (("de", "Pfleger"), ("fr", "infirmier"), ("el", "νοσηλευτής")):
                text = f"{title} {code} {i}"
                examples.append(Example(text, code, "esco_title_multilingual", text, "", "t", "", lang, uri))
    train, val, test = split(examples, PreprocessConfig(val_fraction=0.2, test_fraction=0.2))
    assert test and val
    where: dict[str, set[str]] = defaultdict(set)
    for name, part in (("train", train), ("val", val), ("test", test)):
        for e in part:
            where[e.group].add(name)
    assert all(len(splits) == 1 for splits in where.values())


def test_users_records_may_give_their_language(tmp_path: Path) -> None:
    path = tmp_path / "coded.csv"
    path.write_text(
        "job_title,isco_code,language\nKrankenpfleger,2221,DE\nnurse,2221,\nmedicinsk sekreterare,3344,xx\n",
        encoding="utf-8",
    )
    rows = read_coded_csv(path)
    assert [r.language for r in rows] == ["de", "", "xx"]
    examples, invalid = validate(rows)
    assert [e.language for e in examples] == ["de", ""]
    assert len(invalid) == 1 and invalid[0].reason.startswith("language: 'xx' is not one of en, bg")
    prepared = prepare(rows, PreprocessConfig())
    assert prepared.stats["invalid_rows"] == 1


def test_a_row_without_a_language_is_identified_and_the_model_lists_its_training_languages() -> None:
    rows = [
        RawRow("Krankenpfleger für Intensivpflege", "", "2221", "user", "t:1"),
        RawRow("registered nurse in a hospital", "", "2221", "user", "t:2"),
        RawRow("Manager", "", "1120", "user", "t:3"),  # one word of many languages: not sure, not guessed
        RawRow("шофьор на камион", "", "8332", "user", "t:4", language="bg"),
    ]
    examples, invalid = validate(rows)
    assert not invalid
    assert [e.language for e in examples] == ["de", "en", "", "bg"]
    # a language the model is said to code needs MIN_LANGUAGE_EXAMPLES training examples: a few
    # misidentified rows do not add one
    assert trained_languages(examples * MIN_LANGUAGE_EXAMPLES) == ["en", "bg", "de"]
    assert trained_languages(examples * (MIN_LANGUAGE_EXAMPLES - 1)) is None
    assert trained_languages(examples[2:3] * 100) is None


def test_peer_codes_the_nearest_training_label() -> None:
    texts = ["Krankenpfleger", "infirmier", "Bäcker", "boulanger", "nurse", "baker"]
    codes = ["2221", "2221", "7512", "7512", "2221", "7512"]
    peer = CharNgramPeer().fit(texts, codes)
    assert peer.top_codes(["Krankenpflegerin", "boulangère"], k=2) == [["2221", "7512"], ["7512", "2221"]]
    records = [
        DevRecord("de", "Krankenpflegerin", "2221", {"2221"}),
        DevRecord("de", "Bäckerin", "7512", {"7512"}),
        DevRecord("fr", "boulangère", "7512", {"7512"}),
        DevRecord("fr", "infirmière", "2221", {"2221", "3221"}),
    ]
    result = peer_results(records, texts, codes)
    assert result["train_labels"] == 6
    assert result["languages"]["de"] == {"n": 2, "top1": 1.0, "top3": 1.0}
    assert result["languages"]["average"]["top1"] == 1.0


def test_dev_records_accept_the_current_code_and_summaries_name_the_weakest_language() -> None:
    records = dev_records(["de"], 5, labels=_fixture())
    assert [(r.language, r.label, r.gold) for r in records] == [("de", "Metzger", "7511")]
    rows = [
        {"language": "de", "top1": True, "top3": True, "auto": True, "auto_right": True, "reasons": []},
        {"language": "de", "top1": False, "top3": True, "auto": False, "auto_right": False, "reasons": ["x"]},
        {"language": "fr", "top1": False, "top3": False, "auto": True, "auto_right": False, "reasons": []},
    ]
    for row, confidence in zip(rows, (0.9, 0.3, 0.6), strict=True):
        row["routing_confidence"] = confidence
    summary = summarise(rows)
    # German: one bin right at 0.9 (gap 0.1), one wrong at 0.3 (gap 0.3) -> ECE 0.2; French: 0.6 off
    assert summary["de"]["ece"] == pytest.approx(0.2) and summary["fr"]["ece"] == pytest.approx(0.6)
    assert summary["average"]["ece"] == pytest.approx(0.4) and summary["average"]["max_ece"] == pytest.approx(
        0.6
    )
    assert summary["de"]["auto_coded"] == 0.5 and summary["de"]["auto_coded_precision"] == 1.0
    assert summary["de"]["review_reasons"] == {"x": 1}
    assert summary["average"]["min_language"] == "fr" and summary["average"]["top1"] == 0.25
    assert summary["average"]["auto_coded_precision"] == 0.5
