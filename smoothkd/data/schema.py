"""Column schemas of the three split kinds, named after the real datasets they mirror."""

from __future__ import annotations

from typing import Literal

SplitKind = Literal["instruction", "cnndm", "xsum"]

# Mirrors Dolly (databricks/databricks-dolly-15k), CNN/DailyMail 3.0.0 (abisee/cnn_dailymail)
# and XSum (EdinburghNLP/xsum).
COLUMNS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "context", "response", "category"),
    "cnndm": ("id", "article", "highlights"),
    "xsum": ("id", "document", "summary"),
}

# Which column is the source text and which the reference, per evaluation split.
SOURCE_COLUMN = {"cnndm": "article", "xsum": "document"}
REFERENCE_COLUMN = {"cnndm": "highlights", "xsum": "summary"}

# Hub ids (and config names) used when a split's source is `hub` and no path is given.
HUB_DEFAULTS: dict[str, tuple[str, str | None]] = {
    "instruction": ("databricks/databricks-dolly-15k", None),
    "cnndm": ("abisee/cnn_dailymail", "3.0.0"),
    "xsum": ("EdinburghNLP/xsum", None),
}

# Dolly's eight categories.
DOLLY_CATEGORIES = (
    "open_qa",
    "general_qa",
    "classification",
    "closed_qa",
    "brainstorming",
    "information_extraction",
    "summarization",
    "creative_writing",
)
