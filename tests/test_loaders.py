"""Tests for smoothkd.data.loaders: local files, column mapping, hub errors offline, embedded corpus."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest

from smoothkd.config import SplitSource
from smoothkd.data.loaders import DataLoadError, load_split
from smoothkd.data.schema import COLUMNS

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(autouse=True)
def offline_hf(tmp_path_factory, monkeypatch):
    """Keep `datasets` off the network and out of ~/.cache.

    `datasets` and `huggingface_hub` read these variables once at import, so the module-level copies are
    patched too; setting only the environment would not take effect in an already-running session.
    """
    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "datasets"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted")
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", home / "modules")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))


def local(path: Path | str, **kwargs) -> SplitSource:
    return SplitSource(source="local", path=str(path), **kwargs)


def assert_schema(kind, rows):
    for row in rows:
        for column in COLUMNS[kind]:
            assert isinstance(row[column], str), (column, row)


def test_jsonl_dolly():
    rows = load_split("instruction", local(FIXTURES / "dolly.jsonl"))
    assert len(rows) == 6
    assert_schema("instruction", rows)
    assert {"summarization", "closed_qa"} <= {r["category"] for r in rows}
    assert any(r["context"] == "" for r in rows)
    # Dolly has no id column; rows get one so later validation can name them.
    assert [r["id"] for r in rows[:2]] == ["instruction-000000", "instruction-000001"]


def test_directory_of_shards_loads_in_order():
    rows = load_split("instruction", local(FIXTURES / "dolly_dir"))
    single = load_split("instruction", local(FIXTURES / "dolly.jsonl"))
    assert rows == single


def test_parquet_cnndm():
    rows = load_split("cnndm", local(FIXTURES / "cnn_dailymail.parquet"))
    assert len(rows) == 5
    assert_schema("cnndm", rows)
    assert set(rows[0]) == {"id", "article", "highlights"}
    assert all("\n" in r["highlights"] for r in rows)


def test_csv_xsum_ids_are_strings():
    rows = load_split("xsum", local(FIXTURES / "xsum.csv"))
    assert len(rows) == 5
    assert_schema("xsum", rows)
    assert rows[0]["id"] == "38264402"


def test_max_examples_takes_first_rows():
    full = load_split("xsum", local(FIXTURES / "xsum.csv"))
    rows = load_split("xsum", local(FIXTURES / "xsum.csv", max_examples=2))
    assert rows == full[:2]
    assert len(load_split("xsum", local(FIXTURES / "xsum.csv", max_examples=50))) == 5


def test_column_mapping_renames_to_schema():
    mapping = {"document": "text", "summary": "one_line", "id": "doc_id"}
    rows = load_split("xsum", local(FIXTURES / "xsum_renamed.jsonl", columns=mapping))
    assert rows == load_split("xsum", local(FIXTURES / "xsum.csv"))


def test_missing_column_names_column_and_config_key():
    source = local(FIXTURES / "xsum_renamed.jsonl", columns={"document": "text", "id": "doc_id"})
    with pytest.raises(DataLoadError) as info:
        load_split("xsum", source)
    message = str(info.value)
    assert "'summary'" in message
    assert "data.xsum.columns" in message
    assert "one_line" in message  # the columns that were found are listed
    assert "\n" not in message


def test_missing_local_file_names_path():
    missing = FIXTURES / "nope.jsonl"
    with pytest.raises(DataLoadError) as info:
        load_split("cnndm", local(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "data.cnndm.path" in message
    assert "\n" not in message


def test_hub_offline_fails_fast_with_local_copy_hint():
    start = time.monotonic()
    with pytest.raises(DataLoadError) as info:
        load_split("cnndm", SplitSource(source="hub", split="test"))
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "'abisee/cnn_dailymail'" in message
    assert "3.0.0" in message
    assert "source: local" in message
    assert "data.cnndm" in message
    assert "\n" not in message


def test_hub_code_path_on_local_dataset_repo(tmp_path):
    repo = tmp_path / "xsum_copy"
    (repo / "data").mkdir(parents=True)
    records = [{"id": str(i), "document": f"Document {i}.", "summary": f"Summary {i}."} for i in range(4)]
    datasets.Dataset.from_list(records).to_parquet(str(repo / "data" / "test-00000-of-00001.parquet"))
    rows = load_split("xsum", SplitSource(source="hub", path=str(repo), split="test", max_examples=3))
    assert rows == records[:3]


def test_embedded_reads_jsonl_and_keeps_extra_columns(tmp_path):
    corpus = [
        {"id": f"cnndm-{i}", "article": f"Article {i}.", "highlights": f"Point {i} .", "facts": [f"fact {i}"]}
        for i in range(3)
    ]
    (tmp_path / "cnndm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    rows = load_split("cnndm", SplitSource(source="embedded", max_examples=2), embedded_dir=tmp_path)
    assert rows == corpus[:2]


def test_embedded_missing_file_names_it(tmp_path):
    with pytest.raises(DataLoadError) as info:
        load_split("xsum", SplitSource(source="embedded"), embedded_dir=tmp_path)
    assert str(tmp_path / "xsum.jsonl") in str(info.value)


def test_csv_empty_cell_is_empty_string_not_nan(tmp_path):
    file = tmp_path / "xsum.csv"
    file.write_text("id,document,summary\n7,,A summary.\n")
    assert load_split("xsum", local(file)) == [{"id": "7", "document": "", "summary": "A summary."}]


def test_unparseable_file_gives_one_line_error(tmp_path):
    file = tmp_path / "broken.jsonl"
    file.write_text('{"id": "1", "document": "d", "summary": "s"}\nnot json\n')
    with pytest.raises(DataLoadError) as info:
        load_split("xsum", local(file))
    message = str(info.value)
    assert str(file) in message and "data.xsum.path" in message
    assert "\n" not in message
