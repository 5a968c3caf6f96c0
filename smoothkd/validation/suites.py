"""Great Expectations suites for the instruction split and each evaluation split, built in code from config.

Each expectation carries its name (`split.column.check`, or `split.check` for whole-table checks) and its
check in `meta`, and its severity (`critical` stops the run, `warning` only reports) from
`validation.severity`. Rates are GX's `mostly`: a rate bound r is `mostly = 1 - r` on a per-row flag, so
GX reports the observed rate and the offending rows.
"""

from __future__ import annotations

import great_expectations as gx
from great_expectations.expectations.metadata_types import FailureSeverity

from smoothkd.config import ValidationConfig
from smoothkd.data.schema import COLUMNS, REFERENCE_COLUMN, SOURCE_COLUMN
from smoothkd.validation.features import (
    DUPLICATE,
    REFERENCE_RATIO,
    SOURCE_IN_TRAIN,
    TRAIN_OVERLAP,
    TRUNCATED,
)

_SEVERITY = {"stop": FailureSeverity.CRITICAL, "warn": FailureSeverity.WARNING}
NOT_EMPTY = r"^\s*$"  # matched values are empty or whitespace only


class _SuiteBuilder:
    def __init__(self, split: str, cfg: ValidationConfig):
        self.split, self.cfg = split, cfg
        self.suite = gx.ExpectationSuite(name=split)

    def add(self, check: str, expectation_cls, label: str | None = None, **kwargs) -> None:
        severity = getattr(self.cfg.severity, check)
        name = f"{self.split}.{label}.{check}" if label else f"{self.split}.{check}"
        self.suite.add_expectation(expectation_cls(
            **kwargs, severity=_SEVERITY[severity], meta={"name": name, "check": check, "severity": severity},
        ))

    def text_checks(self, required: tuple[str, ...], non_empty: tuple[str, ...], max_chars: dict[str, int]
                    ) -> None:
        e = gx.expectations
        self.add("columns", e.ExpectTableColumnsToMatchSet, column_set=list(required), exact_match=False)
        for column in required:
            self.add("not_null", e.ExpectColumnValuesToNotBeNull, column, column=column)
        for column in non_empty:
            self.add("not_empty", e.ExpectColumnValuesToNotMatchRegex, column, column=column, regex=NOT_EMPTY)
        for column, bound in max_chars.items():
            self.add("max_chars", e.ExpectColumnValueLengthsToBeBetween, column, column=column,
                     max_value=bound)
        self.add("unique_id", e.ExpectColumnValuesToBeUnique, "id", column="id")
        self.rate("duplicate_rows", DUPLICATE, self.cfg.max_duplicate_rate)
        self.rate("truncation", TRUNCATED, self.cfg.max_truncation_rate)

    def rate(self, check: str, flag_column: str, max_rate: float) -> None:
        """At most `max_rate` of the rows may have `flag_column` set."""
        self.add(check, gx.expectations.ExpectColumnValuesToBeInSet, column=flag_column, value_set=[False],
                 mostly=1.0 - max_rate)


def instruction_suite(cfg: ValidationConfig) -> gx.ExpectationSuite:
    """Dolly-schema training data: schema, text, lengths, categories, ids, duplicates, truncation."""
    b = _SuiteBuilder("instruction", cfg)
    b.text_checks(("id", *COLUMNS["instruction"]), non_empty=("id", "instruction", "response"), max_chars={
        "instruction": cfg.max_instruction_chars, "context": cfg.max_source_chars,
        "response": cfg.max_reference_chars,
    })
    b.add("allowed_values", gx.expectations.ExpectColumnValuesToBeInSet, "category", column="category",
          value_set=list(cfg.categories))
    return b.suite


def eval_suite(kind: str, cfg: ValidationConfig) -> gx.ExpectationSuite:
    """An evaluation split: the text checks, plus reference shorter than source and no training leakage."""
    e = gx.expectations
    source, reference = SOURCE_COLUMN[kind], REFERENCE_COLUMN[kind]
    b = _SuiteBuilder(kind, cfg)
    b.text_checks(COLUMNS[kind], non_empty=COLUMNS[kind],
                  max_chars={source: cfg.max_source_chars, reference: cfg.max_reference_chars})
    b.add("reference_shorter", e.ExpectColumnValuesToBeBetween, reference, column=REFERENCE_RATIO,
          max_value=cfg.max_reference_ratio, strict_max=True)
    b.add("leakage_exact", e.ExpectColumnValuesToBeInSet, source, column=SOURCE_IN_TRAIN, value_set=[False])
    b.add("leakage_near", e.ExpectColumnValuesToBeBetween, source, column=TRAIN_OVERLAP,
          max_value=cfg.max_leakage_overlap)
    return b.suite
