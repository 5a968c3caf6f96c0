"""The hand-written news cases of tests/fixtures/fact_cases.yaml, judged as `bench/fact_cases.py` does."""

import pytest

from bench.fact_cases import judge, load_cases

CASES = load_cases()


def test_the_case_file_is_large_and_covers_every_category():
    assert len(CASES) >= 30 and len({c["id"] for c in CASES}) == len(CASES)
    categories = {c["category"] for c in CASES}
    assert {"title", "number_word", "separator", "year"} <= categories
    # Both kinds: cases with unsupported facts to find and faithful ones to leave alone.
    assert sum(bool(c["unsupported"]) for c in CASES) >= 10 and sum(not c["unsupported"] for c in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case):
    result = judge(case)
    assert result.flagged == result.expected
