"""Fact confidence on hand-made summaries, token spans and probabilities: the token that chose each fact."""

import numpy as np
import pytest

from smoothkd.evaluation.confidence import fact_confidence, fact_confidences
from smoothkd.evaluation.facts import Fact, FactCheck

TEXT = "Acme hired Ada Quinn in Oslo; Acme paid 65 million."
TOKENS = ["Ac", "me", " hired", " Ada", " Qu", "inn", " in", " Oslo", ";", " Acme", " paid", " 65",
          " million", "."]
# Each token's [start, end) in TEXT, laid end to end, and a probability of its own.
ENDS = np.cumsum([len(t) for t in TOKENS]).tolist()
OFFSETS = list(zip([0, *ENDS[:-1]], ENDS, strict=True))
PROBS = np.linspace(0.3, 0.95, len(TOKENS))

ACME = Fact("org", "Acme", True, spans=((0, 4), (30, 34)))  # stated twice: its first mention decides
ADA = Fact("person", "Ada Quinn", False, spans=((11, 20),))  # " Ada" holds the space before it too
OSLO = Fact("place", "Oslo", False, spans=((24, 28),))
AMOUNT = Fact("number", "65 million", True, spans=((40, 50),))


def test_the_hand_made_tokens_spell_the_summary_and_the_facts_sit_where_they_say():
    assert "".join(TOKENS) == TEXT
    assert [TEXT[slice(*f.spans[0])] for f in (ACME, ADA, OSLO, AMOUNT)] == ["Acme", "Ada Quinn", "Oslo",
                                                                          "65 million"]


def test_a_facts_confidence_is_the_probability_of_the_token_covering_its_first_character():
    picked = {f.value: fact_confidence(f, OFFSETS, PROBS) for f in (ACME, ADA, OSLO, AMOUNT)}
    # "Acme" from "Ac" (its first mention, not " Acme" later); "Ada Quinn" from " Ada", not " Qu" or "inn";
    # "65 million" from " 65".
    assert picked == {"Acme": PROBS[0], "Ada Quinn": PROBS[3], "Oslo": PROBS[7], "65 million": PROBS[11]}


def test_a_character_shared_by_two_byte_level_tokens_is_chosen_by_the_first():
    # "Émile won": "É" is two bytes, the first alone in token 0, the second in token 1 with "mile"
    # (`lookback.token_offsets` gives both tokens "É").
    offsets, probs = [(0, 1), (0, 5), (5, 9)], np.array([0.4, 0.99, 0.7])
    assert fact_confidence(Fact("person", "Émile", False, spans=((0, 5),)), offsets, probs) == 0.4


def test_a_summary_gives_the_mean_over_its_unsupported_and_over_its_supported_facts():
    unsupported, supported = fact_confidences(FactCheck([ACME, ADA, OSLO, AMOUNT]), OFFSETS, PROBS)
    assert unsupported == pytest.approx((PROBS[3] + PROBS[7]) / 2)
    assert supported == pytest.approx((PROBS[0] + PROBS[11]) / 2)
    # A side with no fact has no value (no free 0 or 1), and neither has a summary that states nothing.
    assert fact_confidences(FactCheck([ACME]), OFFSETS, PROBS) == (None, PROBS[0])
    assert fact_confidences(FactCheck([]), OFFSETS, PROBS) == (None, None)
    # A fact no token covers (spans that miss the text) counts for neither.
    assert fact_confidences(FactCheck([ADA, OSLO]), [(0, 0)] * len(TOKENS), PROBS) == (None, None)
