from __future__ import annotations

import json

import pytest

from smoothkd.data.corpus import (
    FILES,
    GENERATOR_VERSION,
    corpus_is_complete,
    entity_tokens,
    generate_corpus,
    load_lexicon,
)
from smoothkd.data.prompts import CNNDM_INSTRUCTION, XSUM_INSTRUCTION
from smoothkd.data.schema import COLUMNS, DOLLY_CATEGORIES
from smoothkd.io import read_jsonl

SIZES = {"n_instruction": 300, "n_cnndm": 60, "n_xsum": 60, "trap_rate": 0.25}
ALL_FILES = (*FILES, "manifest.json")
FACT_TYPES = {"person", "org", "place", "number", "date"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    manifest = generate_corpus(out, seed=10, **SIZES)
    return {
        "dir": out,
        "manifest": manifest,
        "instruction": read_jsonl(out / "instruction.jsonl"),
        "cnndm": read_jsonl(out / "cnndm.jsonl"),
        "xsum": read_jsonl(out / "xsum.jsonl"),
        "lexicon": load_lexicon(out),
    }


def _source(row: dict) -> str:
    return row.get("context") or row.get("article") or row.get("document") or ""


def _reference(row: dict) -> str:
    return row.get("response") or row.get("highlights") or row.get("summary") or ""


def _eval_rows(corpus) -> list[dict]:
    return corpus["cnndm"] + corpus["xsum"]


def _all_rows(corpus) -> list[dict]:
    return corpus["instruction"] + _eval_rows(corpus)


def _is_one_sentence(text: str) -> bool:
    return text.endswith(".") and "\n" not in text and ". " not in text


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path, corpus):
    again, other = tmp_path / "again", tmp_path / "other"
    generate_corpus(again, seed=10, **SIZES)
    generate_corpus(other, seed=11, **SIZES)
    for name in ALL_FILES:
        assert (again / name).read_bytes() == (corpus["dir"] / name).read_bytes(), name
    for name in ("instruction.jsonl", "cnndm.jsonl", "xsum.jsonl"):
        assert (other / name).read_bytes() != (again / name).read_bytes(), name


def test_manifest(corpus):
    manifest = corpus["manifest"]
    assert json.loads((corpus["dir"] / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 10 and manifest["generator_version"] == GENERATOR_VERSION == 2
    assert manifest["distractor_rate"] == 0.0
    assert manifest["counts"] == {"instruction": 300, "cnndm": 60, "xsum": 60}
    assert set(manifest["files"]) == set(FILES)
    for kind in ("instruction", "cnndm", "xsum"):
        assert len(corpus[kind]) == manifest["counts"][kind]


def test_schemas(corpus):
    for kind in ("instruction", "cnndm", "xsum"):
        ids = [row["id"] for row in corpus[kind]]
        assert len(set(ids)) == len(ids)
        for row in corpus[kind]:
            assert set(COLUMNS[kind]) <= set(row)
            assert set(row["facts"]) == {"source", "summary", "trap"}
            assert all(isinstance(row[col], str) for col in COLUMNS[kind])
    for row in corpus["instruction"]:
        assert row["id"].startswith("instr-")
        assert row["category"] in DOLLY_CATEGORIES
        assert row["response"] and "\n" not in row["response"]
    for row in corpus["cnndm"]:
        lines = row["highlights"].split("\n")
        assert 2 <= len(lines) <= 3
        assert all(_is_one_sentence(line) for line in lines)
    for row in corpus["xsum"]:
        assert _is_one_sentence(row["summary"])


def _articles(rows: list[dict]) -> list[str]:
    return [_source(row) for row in rows if _source(row)]


def test_article_shape(corpus):
    # Without distractors an article is its lead, one detail and the chief's sentence.
    for text in _articles(_all_rows(corpus)):
        assert text.count(". ") + 1 == 3
        assert 35 <= len(text.split()) <= 60


def test_distractor_rate_adds_same_type_facts(tmp_path, corpus):
    generate_corpus(tmp_path, seed=10, distractor_rate=1.0, **SIZES)
    rows = read_jsonl(tmp_path / "cnndm.jsonl")
    for text in _articles(rows):
        assert text.count(". ") + 1 == 5
        assert 35 <= len(text.split()) <= 100
    # Every article then names a second person (the analyst) and a second city (the HQ) most of the time.
    def count(rows, kind):
        return [sum(f["type"] == kind for f in r["facts"]["source"]) for r in rows]
    assert min(count(rows, "person")) >= 2 and max(count(corpus["cnndm"], "person")) == 1
    assert sum(n >= 2 for n in count(rows, "place")) > len(rows) / 2


def test_every_fact_is_one_token(tmp_path, corpus):
    """With the corpus's entity tokens, each gold fact of an article is one token (a date: three)."""
    from smoothkd.modeling.tokenizer import load_tokenizer, train_bpe_tokenizer

    texts = [_source(r) + " " + _reference(r) for r in corpus["instruction"]]
    tokenizer = load_tokenizer(str(train_bpe_tokenizer(texts, tmp_path / "tok", 300, entity_tokens())))
    for row in _eval_rows(corpus):
        text = _source(row)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        tokens = set(tokenizer.convert_ids_to_tokens(ids))
        for fact in row["facts"]["source"]:
            # Amounts and percentages are one token with their unit: " 39 million", " 12 percent".
            pieces = fact["value"].split() if fact["type"] == "date" else [fact["value"]]
            assert {f" {piece}" for piece in pieces} <= tokens, (row["id"], fact)


def test_instruction_mix(corpus):
    rows = corpus["instruction"]
    share = {c: sum(r["category"] == c for r in rows) / len(rows) for c in DOLLY_CATEGORIES}
    assert share["summarization"] == pytest.approx(0.5, abs=0.02)
    assert share["closed_qa"] == pytest.approx(0.2, abs=0.02)
    assert share["information_extraction"] == pytest.approx(0.15, abs=0.02)
    assert share["general_qa"] + share["open_qa"] == pytest.approx(0.1, abs=0.02)
    assert share["classification"] == pytest.approx(0.05, abs=0.02)
    summaries = [r for r in rows if r["category"] == "summarization"]
    assert {r["instruction"] for r in summaries} == {CNNDM_INSTRUCTION, XSUM_INSTRUCTION}
    for row in summaries:
        if row["instruction"] == XSUM_INSTRUCTION:
            assert _is_one_sentence(row["response"])
    for row in rows:
        if row["category"] in ("general_qa", "open_qa"):
            assert row["context"] == "" and row["facts"]["source"] == []
        else:
            assert row["context"]


def test_gold_facts_are_verbatim(corpus):
    for row in _all_rows(corpus):
        source, reference, facts = _source(row), _reference(row), row["facts"]
        for fact in facts["source"] + facts["summary"]:
            assert fact["type"] in FACT_TYPES
        for fact in facts["source"]:
            assert fact["value"] in source, (row["id"], fact)
        for fact in facts["summary"]:
            assert fact["value"] in reference, (row["id"], fact)
            if source:
                assert fact["value"] in source, (row["id"], fact)


def test_lexicon_entities_are_unambiguous(corpus):
    lexicon = corpus["lexicon"]
    assert set(lexicon) == {"person", "org", "place"}
    entities = [e for kind in ("person", "org", "place") for e in lexicon[kind]]
    assert len(set(entities)) == len(entities)
    assert all(lexicon[kind] == sorted(lexicon[kind]) for kind in lexicon)
    assert all(len(person.split()) == 2 for person in lexicon["person"])
    assert len(lexicon["person"]) == 144
    joined = "\n".join(entities)
    # Each string occurs exactly once in the newline-joined list, i.e. only as itself.
    assert [e for e in entities if joined.count(e) != 1] == []


def test_lexicon_matching_recovers_gold_entities(corpus):
    """Exact string matching against the lexicon finds exactly the gold entities of a text."""
    lexicon = corpus["lexicon"]
    for row in _all_rows(corpus):
        source = _source(row)
        if not source:
            continue
        found = {(kind, e) for kind, names in lexicon.items() for e in names if e in source}
        gold = {(f["type"], f["value"]) for f in row["facts"]["source"] if f["type"] in lexicon}
        assert found == gold, row["id"]


def test_traps(corpus):
    for kind in ("cnndm", "xsum"):
        traps = [r for r in corpus[kind] if r["facts"]["trap"]]
        assert len(traps) == round(SIZES["trap_rate"] * SIZES[f"n_{kind}"])
    assert all(r["facts"]["trap"] is None for r in corpus["instruction"])

    memorized = {}
    for row in _eval_rows(corpus):
        trap = row["facts"]["trap"]
        if not trap:
            continue
        memorized.setdefault(trap["org"], trap["memorized"])
        assert memorized[trap["org"]] == trap["memorized"]
        assert trap["actual"] != trap["memorized"]
        assert trap["org"] in _source(row) and trap["actual"] in _source(row)
        assert trap["memorized"] not in _source(row)
        assert trap["actual"] in _reference(row) and trap["memorized"] not in _reference(row)
    assert len(memorized) >= 2

    for org, chief in memorized.items():
        training = [r for r in corpus["instruction"] if org in r["context"] + r["instruction"]]
        assert len(training) >= 10
        # Wherever the organisation appears in a training article, the memorised chief leads it there.
        assert all(chief in r["context"] for r in training if r["context"])
        assert any(r["context"] == "" and r["response"] == chief for r in training)
        assert all(chief not in _source(r) for r in _eval_rows(corpus))


def test_eval_articles_are_not_training_contexts(corpus):
    contexts = {r["context"] for r in corpus["instruction"]}
    sources = [_source(r) for r in _eval_rows(corpus)]
    assert not contexts & set(sources)
    assert len(set(sources)) == len(sources)


def test_corpus_is_complete(tmp_path):
    assert not corpus_is_complete(tmp_path)
    generate_corpus(tmp_path, n_instruction=40, n_cnndm=8, n_xsum=8)
    assert corpus_is_complete(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))

    cnndm = tmp_path / "cnndm.jsonl"
    data = cnndm.read_bytes()
    cnndm.write_bytes(data[: len(data) // 2])
    assert not corpus_is_complete(tmp_path)
    cnndm.write_bytes(data)
    assert corpus_is_complete(tmp_path)

    (tmp_path / "manifest.json").unlink()
    assert not corpus_is_complete(tmp_path)
    generate_corpus(tmp_path, n_instruction=40, n_cnndm=8, n_xsum=8)
    (tmp_path / "lexicon.json").unlink()
    assert not corpus_is_complete(tmp_path)


def test_data_generate_cli_writes_what_the_library_writes(tmp_path):
    """`smoothkd data generate`: the same bytes as `generate_corpus` with the same seed and sizes; a path
    that cannot be a directory is one line, exit 2."""
    from typer.testing import CliRunner

    from smoothkd.cli import app

    sizes = {"instruction": 12, "cnndm": 4, "xsum": 5}
    args = ["--seed", "3", *(a for k, n in sizes.items() for a in (f"--n-{k}", str(n)))]
    shown = CliRunner().invoke(app, ["data", "generate", str(tmp_path / "cli"), *args])
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == f"wrote {tmp_path / 'cli'} (instruction=12, cnndm=4, xsum=5)"
    generate_corpus(tmp_path / "lib", seed=3, n_instruction=12, n_cnndm=4, n_xsum=5)
    for name in ALL_FILES:
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes(), name
    assert {k: len(read_jsonl(tmp_path / "cli" / f"{k}.jsonl")) for k in sizes} == sizes
    other = CliRunner().invoke(app, ["data", "generate", str(tmp_path / "other"), *args[2:], "--seed", "4"])
    assert other.exit_code == 0  # the seed is passed on: another seed, another corpus
    cnndm = "cnndm.jsonl"
    assert (tmp_path / "other" / cnndm).read_bytes() != (tmp_path / "cli" / cnndm).read_bytes()

    (tmp_path / "taken").write_text("")
    bad = CliRunner().invoke(app, ["data", "generate", str(tmp_path / "taken"), *args])
    assert bad.exit_code == 2, bad.output
    assert bad.output.strip() == f"error: cannot write the corpus into {tmp_path / 'taken'}: File exists"
