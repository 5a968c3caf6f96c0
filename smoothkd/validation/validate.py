"""Run the suites over a dataset directory with Great Expectations 1.x and build a Data Docs site.

GX runs in an ephemeral (in-memory) context with a pandas data source: one dataframe asset, batch definition
and ValidationDefinition per split; results render into a static Data Docs site under `docs_dir`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import great_expectations as gx
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from smoothkd.config import ModelConfig, TrainConfig, ValidationConfig
from smoothkd.data.dataset import EVAL_KINDS, read_split
from smoothkd.errors import one_line
from smoothkd.modeling.tokenizer import load_run_tokenizer
from smoothkd.validation.features import (
    ROW_ID,
    TokenCounter,
    TrainingContexts,
    approximate_counter,
    eval_frame,
    instruction_frame,
    limits,
    tokenizer_counter,
)
from smoothkd.validation.report import MAX_EXAMPLES, Outcome, ValidationReport
from smoothkd.validation.suites import eval_suite, instruction_suite

SITE = "smoothkd"
# Offending rows are named by ROW_ID; 20 are enough for the error message and the Data Docs.
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20,
                 "unexpected_index_column_names": [ROW_ID]}


def dataset_splits(dataset_dir: str | Path) -> dict[str, list[dict]]:
    """A prepared dataset's rows as validated: train + validation form the instruction split."""
    splits = {"instruction": read_split(dataset_dir, "train") + read_split(dataset_dir, "validation")}
    splits.update({kind: read_split(dataset_dir, kind) for kind in EVAL_KINDS})
    return splits


def token_counter(tokenizer_ref: str | Path, model_cfg: ModelConfig) -> TokenCounter:
    """Count with the run's tokenizer; approximate from characters when it cannot be loaded (offline hub)."""
    try:
        tokenizer = load_run_tokenizer(tokenizer_ref, model_cfg)
    except (OSError, ValueError) as exc:
        return approximate_counter(f"tokenizer {tokenizer_ref} unavailable: {type(exc).__name__}")
    return tokenizer_counter(tokenizer, str(tokenizer_ref))


def validate_splits(validation: ValidationConfig, trains: Iterable[TrainConfig],
                    splits: dict[str, list[dict]], tokens: TokenCounter, docs_dir: str | Path
                    ) -> ValidationReport:
    """Validate `instruction` and each evaluation split given as rows; write Data Docs into `docs_dir`.

    `trains` are the training sections of the models that train on the data (teacher and student): rows
    are truncated beyond the strictest of their limits.
    """
    start = time.perf_counter()
    context = _context(Path(docs_dir))  # first: GX suites need an active context to add expectations
    max_length, max_prompt = limits(trains)
    train = TrainingContexts((str(r.get("context") or "") for r in splits["instruction"]),
                             validation.leakage_ngram)
    frames = {"instruction": instruction_frame(splits["instruction"], max_length, max_prompt, tokens)}
    suites = {"instruction": instruction_suite(validation)}
    for kind in EVAL_KINDS:
        frames[kind] = eval_frame(splits[kind], kind, max_prompt, tokens, train)
        suites[kind] = eval_suite(kind, validation)

    source = context.data_sources.add_pandas("smoothkd")
    outcomes: list[Outcome] = []
    for split, frame in frames.items():
        batch = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe(split)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=split, data=batch, suite=context.suites.add(suites[split])))
        result = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT)
        outcomes += [_outcome(split, r) for r in result.results]
    urls = context.build_data_docs(site_names=[SITE])
    index = urls[SITE].removeprefix("file://")
    return ValidationReport(outcomes=outcomes, docs_index=index, tokens=tokens.description,
                            rows={split: len(frame) for split, frame in frames.items()},
                            seconds=time.perf_counter() - start)


def _context(docs_dir: Path):
    docs_dir.mkdir(parents=True, exist_ok=True)
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,  # no usage statistics leave the machine
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites={SITE: {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }},
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _outcome(split: str, result) -> Outcome:
    config = result.expectation_config
    meta = config.meta
    return Outcome(name=meta["name"], split=split, check=meta["check"], expectation=config.type,
                   severity=meta["severity"], success=bool(result.success), observed=_observed(result),
                   row_ids=_row_ids(result.result))


def _observed(result) -> str:
    """What GX saw, in a few words: a row count and rate, an observed value, or the error raised."""
    info = result.exception_info or {}
    errors = [info] if "raised_exception" in info else list(info.values())
    for error in errors:
        if isinstance(error, dict) and error.get("raised_exception"):
            return "error: " + one_line(str(error.get("exception_message", "")), limit=200)
    res, kwargs = result.result, result.expectation_config.kwargs
    if "unexpected_count" in res:
        rate = res["unexpected_percent"] or 0.0
        text = f"{res['unexpected_count']} of {res['element_count']} rows, {rate:.1f}%"
        mostly = kwargs.get("mostly", 1.0)
        return text + (f", allowed {100 * (1 - mostly):.1f}%" if mostly < 1 else "")
    if result.expectation_config.type == "expect_table_columns_to_match_set":
        missing = sorted(set(kwargs["column_set"]) - set(res.get("observed_value") or []))
        return f"missing {', '.join(missing)}" if missing else "all present"
    return str(res.get("observed_value"))[:200]


def _row_ids(result: dict) -> list[str]:
    ids = (str(row[ROW_ID]) for row in result.get("partial_unexpected_index_list") or [] if ROW_ID in row)
    return list(dict.fromkeys(ids))[:MAX_EXAMPLES]
