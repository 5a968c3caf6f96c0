"""Fact precision: hand-written corpus-shaped rows with injected hallucinations, every reference of a
generated corpus, real-data (no gold) normalisation of numbers, dates and names, and sentence splitting."""

import pytest

from smoothkd.data.corpus import generate_corpus, load_lexicon
from smoothkd.evaluation.facts import FactCheck, score_facts, sentence_spans, split_sentences
from smoothkd.io import read_jsonl

ARTICLE = (
    "On 3 March 2026, Evergreen Logistics opened a new research centre in Ghent after two years of "
    "construction. About 8,800 people will work at the research centre, which cost 65 million euros to "
    "build. Leo Costa, who leads Evergreen Logistics, said the decision reflected strong demand from "
    "customers."
)
GOLD = {
    "source": [
        {"type": "date", "value": "3 March 2026"}, {"type": "org", "value": "Evergreen Logistics"},
        {"type": "place", "value": "Ghent"}, {"type": "number", "value": "8,800"},
        {"type": "number", "value": "65 million"}, {"type": "person", "value": "Leo Costa"},
    ],
    "summary": [
        {"type": "org", "value": "Evergreen Logistics"}, {"type": "place", "value": "Ghent"},
        {"type": "date", "value": "3 March 2026"}, {"type": "person", "value": "Leo Costa"},
    ],
    # Evergreen Logistics is a prior trap: training always paired it with Ada Quinn.
    "trap": {"org": "Evergreen Logistics", "memorized": "Ada Quinn", "actual": "Leo Costa"},
}
LEXICON = {
    "org": ["Acme Robotics", "Evergreen Logistics", "Northwind Bank"],
    "person": ["Ada Quinn", "Leo Costa", "Nina Ward"],
    "place": ["Ghent", "Lisbon"],
}


def _check(summary: str, source: str = ARTICLE, gold=GOLD, lexicon=LEXICON) -> FactCheck:
    return score_facts(summary, source, gold, lexicon)


def _unsupported(check: FactCheck) -> list[tuple[str, str]]:
    return [(f.type, f.value) for f in check.unsupported]


def test_faithful_paraphrase_scores_one():
    check = _check("Leo Costa's Evergreen Logistics opened a research centre in Ghent on 3 March 2026; it "
                   "cost 65 million euros and will employ 8,800 people.")
    assert [(f.type, f.value) for f in check.facts] == [
        ("person", "Leo Costa"), ("org", "Evergreen Logistics"), ("place", "Ghent"), ("date", "3 March 2026"),
        ("number", "65 million"), ("number", "8,800")]
    assert check.precision == 1.0 and check.n_unsupported == 0 and not check.trap_hit


@pytest.mark.parametrize(("summary", "unsupported"), [
    # swapped number
    ("Evergreen Logistics opened a research centre that will employ 9,800 people.", [("number", "9,800")]),
    # swapped name (a lexicon person the article never mentions)
    ("Nina Ward, who leads Evergreen Logistics, opened a centre in Ghent.", [("person", "Nina Ward")]),
    # invented organisation, from the lexicon and from nowhere
    ("Acme Robotics opened a new research centre in Ghent.", [("org", "Acme Robotics")]),
    ("Evergreen Logistics and Globex Industries opened a centre in Ghent.",
     [("entity", "Globex Industries")]),
    # swapped date and place
    ("Evergreen Logistics opened a research centre in Lisbon on 4 March 2026.",
     [("place", "Lisbon"), ("date", "4 March 2026")]),
])
def test_injected_hallucinations_are_flagged(summary, unsupported):
    check = _check(summary)
    assert _unsupported(check) == unsupported
    assert check.precision == pytest.approx(1 - len(unsupported) / len(check.facts))
    assert not check.trap_hit


def test_prior_trap_answer_is_flagged_as_trap():
    check = _check("Ada Quinn, the chief executive of Evergreen Logistics, opened a centre in Ghent.")
    assert _unsupported(check) == [("person", "Ada Quinn")]
    assert check.trap_hit and [f.value for f in check.facts if f.trap] == ["Ada Quinn"]
    assert check.precision == pytest.approx(2 / 3)
    assert not _check("Leo Costa, the chief executive of Evergreen Logistics, opened a centre.").trap_hit


def test_names_match_case_insensitively_and_repeats_count_once():
    summary = "evergreen logistics opened a centre in GHENT. Evergreen Logistics said Ghent was ideal."
    check = _check(summary)
    assert check.precision == 1.0 and len(check.facts) == 2
    org = check.facts[0]
    assert len(org.spans) == 2
    assert [summary[s:e] for s, e in org.spans] == ["evergreen logistics", "Evergreen Logistics"]


@pytest.mark.parametrize("summary", ["", "   \n ", "It was a good day for the company."])
def test_a_summary_stating_no_fact_gets_no_free_precision(summary):
    check = _check(summary)
    assert check.facts == [] and check.n_unsupported == 0
    assert check.precision == 0.0
    # One supported fact is enough to be judged on what is stated.
    assert _check(summary + " It opened in Ghent.").precision == 1.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(out, seed=4, n_instruction=10, n_cnndm=40, n_xsum=40, trap_rate=0.5)
    return out


def test_every_generated_reference_is_fully_supported_with_its_gold_facts(corpus):
    lexicon = load_lexicon(corpus)
    splits = (("cnndm", "article", "highlights"), ("xsum", "document", "summary"))
    for split, source_key, reference_key in splits:
        for row in read_jsonl(corpus / f"{split}.jsonl"):
            check = score_facts(row[reference_key], row[source_key], row["facts"], lexicon)
            assert check.precision == 1.0, row["id"]
            assert {(f.type, f.value) for f in check.facts} == {
                (f["type"], f["value"]) for f in row["facts"]["summary"]}, row["id"]
            assert not check.trap_hit
            # Without gold or lexicon the extractor still finds nothing unsupported in a faithful reference.
            assert score_facts(row[reference_key], row[source_key]).precision == 1.0, row["id"]


def test_generated_trap_rows_catch_the_memorised_chief(corpus):
    lexicon = load_lexicon(corpus)
    rows = [r for r in read_jsonl(corpus / "cnndm.jsonl") if r["facts"]["trap"]]
    assert len(rows) == 20
    for row in rows:
        trap = row["facts"]["trap"]
        assert trap["actual"] in row["highlights"]
        swapped = row["highlights"].replace(trap["actual"], trap["memorized"])
        check = score_facts(swapped, row["article"], row["facts"], lexicon)
        assert _unsupported(check) == [("person", trap["memorized"])]
        assert check.trap_hit


@pytest.mark.parametrize(("summary", "source", "supported"), [
    ("It paid 3.5 million dollars.", "It paid 3,500,000 dollars.", True),
    ("It paid $3.5m.", "It paid 3,500,000 dollars.", True),
    ("It paid 2bn euros.", "It paid 2 billion euros.", True),
    ("It paid 3.5 million.", "It paid 35 million.", False),
    ("It cut 200 jobs.", "It cut 1,200 jobs.", False),
    ("Sales rose 12%.", "Sales rose 12 percent.", True),
    ("Sales rose 12 per cent.", "Sales rose 12%.", True),
    ("Sales rose 13%.", "Sales rose 12 percent.", False),
    ("It hired 12 people.", "It hired 12 percent more people.", False),
    ("It opened on Nov. 27.", "It opened on 27 November.", True),
    ("It opened on November 27, 2026.", "It opened on 2026-11-27.", True),
    ("It opened on 27 November.", "It opened on November 27, 2026.", True),
    ("It opened on 27 November 2025.", "It opened on November 27, 2026.", False),
    ("It opened on 27th of November 2026.", "It opened on Nov 27 2026.", True),
    ("It opened in 2026.", "It opened on 27 November 2026.", True),
    ("It opened in March 2025.", "It opened on 3 March 2025.", True),
    ("It opened in 2024.", "It opened on 3 March 2025.", False),
])
def test_real_data_numbers_and_dates_are_normalised(summary, source, supported):
    check = score_facts(summary, source)
    assert len(check.facts) == 1, check.facts
    assert check.facts[0].type in ("number", "date")
    assert check.facts[0].supported is supported


@pytest.mark.parametrize(("summary", "source", "other"), [
    ("Three people were hurt.", "3 people were hurt.", "4 people were hurt."),
    ("It hired 25 staff.", "It hired twenty-five staff.", "It hired twenty-six staff."),
    ("It cost two million euros.", "It cost 2,000,000 euros.", "It cost 2,000 euros."),
    ("Some 350 jobs went.", "Three hundred and fifty jobs went.", "Three hundred jobs went."),
])
def test_number_words_are_numbers(summary, source, other):
    assert [(f.type, f.supported) for f in score_facts(summary, source).facts] == [("number", True)]
    assert [(f.type, f.supported) for f in score_facts(summary, other).facts] == [("number", False)]


def test_a_lone_one_and_fractions_are_not_counts():
    assert score_facts("One of the two-thirds majority left.", "x").facts == []


@pytest.mark.parametrize(("summary", "source", "supported"), [
    ("2000 evacuated.", "Officials said 2,000 people were evacuated.", True),  # a count
    ("About 2000 people fled.", "It happened in 2000.", False),  # a count against a year
    ("It happened in 2000.", "About 2,000 people fled.", False),  # a year against a count
    ("It happened in 2000.", "About 2000 people fled in 2000.", True),
    ("The 2019 election was close.", "Turnout in the 2019 election fell.", True),  # either reading
    ("2019 was a hard year.", "Sales fell in 2019.", True),
    ("The club has 1950 members.", "It was founded in 1950.", False),
    ("The club has 1950 members.", "It has 1,950 members.", True),
])
def test_four_digit_numbers_are_years_only_where_a_year_is_meant(summary, source, supported):
    check = score_facts(summary, source)
    assert len(check.facts) == 1 and check.facts[0].supported is supported, check.facts


@pytest.mark.parametrize(("summary", "source", "unsupported"), [
    ("Apple CEO Tim Cook spoke.", "Apple chief executive Tim Cook spoke.", []),
    ("Apple CEO Ann Lee spoke.", "Apple chief executive Tim Cook spoke.", ["Ann Lee"]),
    ("Samsung CEO Tim Cook spoke.", "Apple chief executive Tim Cook spoke.", ["Samsung"]),
    ("President Vladimir Putin spoke.", "Vladimir Putin spoke in Moscow.", []),
    ("Mr Smith spoke.", "John Smith spoke.", []),
    ("Mrs Jones spoke.", "John Smith spoke.", ["Jones"]),
    ("General Motors grew.", "Sales at General Motors grew.", []),  # a role opening a run stays a name
])
def test_titles_and_roles_before_names(summary, source, unsupported):
    assert [f.value for f in score_facts(summary, source).unsupported] == unsupported


def test_real_data_names_come_from_capitalised_spans():
    source = "officials at the bank of england met ada quinn in new york on monday."
    check = score_facts("Ada Quinn met President Joe Biden at the Bank of England in New York.", source)
    assert [(f.type, f.value, f.supported) for f in check.facts] == [
        ("entity", "Ada Quinn", True), ("entity", "Joe Biden", False), ("entity", "Bank of England", True),
        ("entity", "New York", True)]
    # A lone capitalised sentence opener is an ordinary word unless the texts capitalise it mid-sentence.
    assert score_facts("Revenue rose. Shares fell.", "The company said sales rose.").facts == []
    check = score_facts("Lisbon won. The prize went to Oslo.", "Judges in Lisbon gave Oslo the prize.")
    assert [(f.value, f.supported) for f in check.facts] == [("Lisbon", True), ("Oslo", True)]
    check = score_facts("The firm's rival, Globex Industries's unit, grew.", "The firm grew.")
    assert _unsupported(check) == [("entity", "Globex Industries")]


def test_sentence_spans_respect_abbreviations_initials_decimals_and_newlines():
    text = ('Mr. Smith met Dr. J. Jones on Nov. 27 in the U.S. capital. Sales rose 3.5 percent! "Why?" he '
            "asked.\nNext line  ")
    assert split_sentences(text) == [
        "Mr. Smith met Dr. J. Jones on Nov. 27 in the U.S. capital.", "Sales rose 3.5 percent!",
        '"Why?" he asked.', "Next line"]
    assert all(text[s:e] == sentence for (s, e), sentence in zip(sentence_spans(text), split_sentences(text),
                                                               strict=True))
    assert sentence_spans("") == [] and sentence_spans("  \n ") == []
