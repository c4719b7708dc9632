import pytest

from shared.taxonomy import InvalidCode, get_taxonomy
from shared.text import INDUSTRY_MAX_CHARS, clean_text, duties_part, industry_phrase, model_input


def test_counts_per_level():
    tax = get_taxonomy()
    levels = [g.level for g in tax.groups.values()]
    assert len(tax.groups) == 619
    assert [levels.count(i) for i in (1, 2, 3, 4)] == [10, 43, 130, 436]
    assert len(tax.unit_groups) == 436


def test_hierarchy_and_titles():
    tax = get_taxonomy()
    path = tax.ancestors("2512")
    assert [g.code for g in path] == ["2", "25", "251", "2512"]
    assert path[-1].title == "Software Developers"
    assert "2512" in tax.group("251").children
    assert tax.group("0110").parent == "011"


@pytest.mark.parametrize(
    "raw, expected",
    [
        (" 2512 ", "2512"),
        ("2512.0", "2512"),
        (2512, "2512"),
        ("110", "0110"),
        ("210", "0210"),
        ("0310", "0310"),
        ("8331.00", "8331"),
        (8331.0, "8331"),
        ("7412.12", "7412"),
        ("2654.1.7", "2654"),
        ("110.0", "0110"),
    ],
)
def test_normalise_accepts(raw, expected):
    assert get_taxonomy().normalise(raw) == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("", "empty"),
        ("abc", "contains .a., .b., .c."),
        ("9999", "not an ISCO-08 code"),
        ("251", "minor group"),
        (None, "empty"),
    ],
)
def test_normalise_rejects_with_reason(raw, reason):
    with pytest.raises(InvalidCode, match=reason):
        get_taxonomy().normalise(raw)


def test_every_repair_is_reported():
    t = get_taxonomy()
    assert t.normalise_code(" 2512 ").repair is None
    assert t.normalise_code("110").repair == "'110' read as 0110 (leading zero restored)"
    assert "decimals" in (t.normalise_code("8331.00").repair or "")
    assert "ESCO occupation code" in (t.normalise_code("7412.12").repair or "")
    with pytest.raises(InvalidCode, match="ESCO occupation code but 9999 is not"):
        t.normalise_code("9999.1")


def test_normalise_other_levels_when_allowed():
    assert get_taxonomy().normalise("251", unit_only=False) == "251"


def test_clean_text():
    assert clean_text("  <b>Senior&nbsp;Nurse</b>\u2014ICU!!!  ") == "Senior Nurse -ICU!"
    assert clean_text(None) == ""


def test_model_input_combines_title_and_duties():
    assert model_input("Nurse", "Cares for  patients") == "nurse : cares for patients"
    assert model_input("", "Cares for patients") == "cares for patients"
    assert model_input("Nurse", None) == "nurse"


def test_model_input_reads_the_industry_beside_the_title():
    # the industry qualifies the title, as a coding index prints it, and stays out of the duties
    assert model_input("Inspector", "", "Paper mfr") == "inspector (industry: paper manufacturing)"
    text = model_input("Inspector", "checks reels", "paper mfr")
    assert text == "inspector (industry: paper manufacturing) : checks reels"
    assert duties_part(text) == "checks reels"
    # empty or white space: the record reads as without it
    assert model_input("Nurse", "Cares", "   ") == model_input("Nurse", "Cares") == "nurse : cares"
    # a colon in the industry cannot move the title/duties boundary; a long industry is cut
    assert duties_part(model_input("Clerk", "", "banking : retail")) == ""
    assert len(industry_phrase("x" * 500)) == INDUSTRY_MAX_CHARS
    assert industry_phrase("Local GOVT dept") == "local government department"
