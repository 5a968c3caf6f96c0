"""Share of the hand-written news cases on which the lexicon-free fact extractor is right.

Usage: python bench/fact_cases.py — prints each miss, then `fact_cases_right=…` last.
Cases: tests/fixtures/fact_cases.yaml (source, summary, the summary's unsupported facts). A case is right
when `score_facts(summary, source)`, with no gold facts and no lexicon, flags exactly the expected facts
(compared case-folded, whitespace collapsed). `tests/test_fact_cases.py` runs the same judgement.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CASES = ROOT / "tests" / "fixtures" / "fact_cases.yaml"


@dataclass(frozen=True)
class CaseResult:
    """One case: what it expects unsupported and what the extractor flagged."""

    id: str
    category: str
    expected: frozenset[str]
    flagged: frozenset[str]

    @property
    def right(self) -> bool:
        return self.expected == self.flagged


def _key(value: str) -> str:
    return " ".join(value.casefold().split())


def load_cases(path: Path = CASES) -> list[dict]:
    """The cases as written in the YAML file."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def judge(case: dict) -> CaseResult:
    """Run the extractor on one case without gold facts or lexicon."""
    from smoothkd.evaluation.facts import score_facts

    check = score_facts(case["summary"], case["source"])
    return CaseResult(case["id"], case["category"], frozenset(map(_key, case["unsupported"])),
                      frozenset(_key(f.value) for f in check.unsupported))


def main() -> None:
    results = [judge(case) for case in load_cases()]
    for r in results:
        if not r.right:
            print(f"miss {r.id} ({r.category}): expected {sorted(r.expected)}, flagged {sorted(r.flagged)}")
    right = sum(r.right for r in results)
    print(f"{right} of {len(results)} cases right")
    print(f"fact_cases_right={right / len(results):.3f}")


if __name__ == "__main__":
    main()
