from shared.corpus import SOURCES, build_default_corpus, corpus_counts, label_codes, strip_labels
from shared.settings import CommonSettings
from shared.taxonomy import get_taxonomy


def test_default_corpus_counts_and_codes(tmp_path):
    # Without the optional ILO file the package alone must supply every source.
    settings = CommonSettings(data_dir=tmp_path, isco_structure_csv=tmp_path / "missing.csv")
    records = build_default_corpus(settings)
    counts = corpus_counts(records)
    # English by default: multilingual labels come only with other `languages` (tests/test_multilingual.py)
    assert set(counts) == set(SOURCES) - {"esco_title_multilingual", "esco_title_multilingual_eval"}
    assert all(n > 0 for n in counts.values())
    assert counts["esco_title"] > 30000
    taxonomy = get_taxonomy()
    assert all(r.isco_code in taxonomy and taxonomy.group(r.isco_code).level == 4 for r in records)
    assert all(r.job_title or r.duties_description for r in records)
    # Descriptions must not start with the labels the package prepends to them.
    described = [r for r in records if r.source == "esco_description"]
    assert not any(
        r.duties_description.lower().startswith(r.job_title.lower() + " ")
        for r in described[:500]
        if r.job_title.lower() not in r.duties_description.lower()[: len(r.job_title) + 1]
    )
    # Titles come alone and with duties.
    assert any(r.duties_description == "" for r in records)
    assert any(r.source == "isco_task" and r.job_title for r in records)
    assert len({r.isco_code for r in records}) == 436


def test_label_map_has_all_unit_groups():
    codes = label_codes()
    assert len(codes) == 436 and codes == sorted(codes) and codes[0] == "0110"


def test_strip_labels():
    text = "cook  chef de partie Cooks prepare meals."
    assert strip_labels(text, ["cook", "chef de partie"]) == "Cooks prepare meals."
    assert strip_labels("chef de partie cook Cooks prepare.", ["cook", "chef de partie"]) == "Cooks prepare."


def test_ons_coding_index_records_keep_qualifier_and_industry():
    records = build_default_corpus(sources=["ons_title", "ons_industry"])
    counts = corpus_counts(records)
    # 29,838 index entries; repeats of the same title, qualifier, industry and code are one record
    assert counts["ons_title"] > 15000 and counts["ons_industry"] > 9000
    assert all(r.industry for r in records if r.source == "ons_industry")
    assert not any(r.industry for r in records if r.source == "ons_title")
    assert all(not r.duties_description for r in records)
    # the qualifier stays in the title as the index prints it
    assert any(r.job_title.endswith("(rubber)") for r in records)
    # one title coded differently in different industries: the industry is what tells them apart
    coded = {(r.job_title.lower(), r.industry.lower()): r.isco_code for r in records}
    assert coded[("breaker", "paper mfr")] != coded[("breaker", "textile spinning")]
