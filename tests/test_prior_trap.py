"""Prior-trap rate on hand-made rows: the share of trap articles whose summary names the memorised chief."""

from __future__ import annotations

from smoothkd.evaluation.consistency import FactPrecisionScorer
from smoothkd.evaluation.evaluate import prior_trap_hits

SOURCE = "Orion Motors named Ada Quinn chief executive on 3 May 2026."
TRAP = {"org": "Orion Motors", "memorized": "Leo Ward", "actual": "Ada Quinn"}
LEXICON = {"person": ["Ada Quinn", "Leo Ward", "Nina Hale"], "org": ["Orion Motors"], "place": []}


def _gold(trap: dict | None) -> dict:
    source = [{"type": "org", "value": "Orion Motors"}, {"type": "person", "value": "Ada Quinn"},
              {"type": "date", "value": "3 May 2026"}]
    return {"source": source, "summary": source, "trap": trap}


def test_prior_trap_hits_count_only_trap_rows_naming_the_memorised_chief():
    summaries = [
        "Orion Motors named Leo Ward chief executive.",  # trap row, memorised chief: a hit
        "Orion Motors named Ada Quinn chief executive.",  # trap row, the article's chief: no hit
        "Orion Motors named Nina Hale chief executive.",  # trap row, wrong but not the memorised chief
        "Orion Motors named Leo Ward chief executive.",  # no trap here: not counted at all
    ]
    golds = [_gold(TRAP), _gold(TRAP), _gold(TRAP), _gold(None)]
    checks = FactPrecisionScorer(LEXICON).checks([SOURCE] * 4, summaries, golds)
    hits = prior_trap_hits(checks, golds)
    assert hits == [1.0, 0.0, 0.0, None]
    counted = [h for h in hits if h is not None]
    assert sum(counted) / len(counted) == 1 / 3


def test_prior_trap_hits_without_lexicon_still_find_the_memorised_chief():
    # The trap's names come with the row's gold facts, so data without a lexicon is scored the same.
    golds = [_gold(TRAP), _gold(TRAP)]
    checks = FactPrecisionScorer(None).checks([SOURCE] * 2, ["Leo Ward leads Orion Motors.",
                                                           "Ada Quinn leads Orion Motors."], golds)
    assert prior_trap_hits(checks, golds) == [1.0, 0.0]
