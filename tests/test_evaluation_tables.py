"""Localisation tables (CSV, JSON, HTML with escaping and highlighted unsupported facts) and the general
capability scores on a tiny Llama (NLL checked by hand)."""

import csv
import importlib.util
import json
import logging

import pytest
import torch
from conftest import corpus_and_tokenizer

from smoothkd.config import TinyModelConfig
from smoothkd.data.prompts import build_prompt, response_text
from smoothkd.data.tokenize import encode_prompt
from smoothkd.evaluation.capability import _metric_name, general_capability, run_lm_eval
from smoothkd.evaluation.facts import score_facts
from smoothkd.evaluation.generation import generate
from smoothkd.evaluation.localization import localization_rows, write_localization
from smoothkd.evaluation.rouge import rouge_per_example
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm

SOURCE = "Northwind Bank opened a plant in Lisbon on 3 March 2026. It cost 65 million euros."
SUMMARIES = [
    "Northwind Bank opened a plant in Oslo <script>alert('x')</script> for 65 million euros.",
    "Northwind Bank opened a plant in Lisbon.",
]


def _rows():
    checks = [score_facts(s, SOURCE) for s in SUMMARIES]
    return localization_rows(
        ids=["cnndm-000000", "cnndm-000001"], summaries=SUMMARIES,
        references=["Northwind Bank opened a plant in Lisbon.\nIt cost 65 million euros."] * 2,
        rouge_lsum=[40.0, 80.0], consistency=[c.precision for c in checks], fact_checks=checks,
        sources=[SOURCE] * 2, scores={"factual_rate": [0.5, 1.0], "lookback_ratio": [0.25, 0.75]})


def test_localization_files_escape_text_and_highlight_unsupported_facts(tmp_path):
    rows = _rows()
    assert rows[0].unsupported == [("entity", "Oslo")] and rows[1].unsupported == []
    paths = write_localization(rows, tmp_path / "loc", "cnndm <student_kd>")
    assert set(paths) == {"csv", "json", "html"}
    assert sorted(p.name for p in (tmp_path / "loc").iterdir()) == [
        "localization.csv", "localization.html", "localization.json"]  # no temp files left behind

    page = paths["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<title>cnndm &lt;student_kd&gt;</title>" in page
    assert '<mark class="unsupported" title="entity">Oslo</mark>' in page
    assert page.count("<mark") == 1  # the faithful summary has nothing highlighted
    assert '<span class="supported" title="number">65 million</span>' in page

    table = list(csv.DictReader(paths["csv"].open()))
    assert [r["id"] for r in table] == ["cnndm-000000", "cnndm-000001"]
    assert table[0]["unsupported"] == "entity: Oslo" and table[0]["n_unsupported"] == "1"
    assert table[0]["summary"] == SUMMARIES[0]
    assert float(table[1]["lookback_ratio"]) == 0.75
    assert float(table[0]["consistency"]) == pytest.approx(2 / 3)

    data = json.loads(paths["json"].read_text())
    assert data["title"] == "cnndm <student_kd>"
    first = data["rows"][0]
    assert first["scores"] == {"factual_rate": 0.5, "lookback_ratio": 0.25}
    oslo = next(f for f in first["facts"] if f["value"] == "Oslo")
    assert not oslo["supported"] and SUMMARIES[0][slice(*oslo["spans"][0])] == "Oslo"


def test_localization_rows_reject_ragged_columns():
    with pytest.raises(ValueError, match="factual_rate has 1 values for 2 ids"):
        localization_rows(["a", "b"], ["x", "y"], ["x", "y"], [1.0, 2.0], [1.0, 1.0],
                          scores={"factual_rate": [0.5]})


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("capability")
    rows, tokenizer = corpus_and_tokenizer(out, seed=2, n_instruction=60, vocab_size=300, n_eval=2)
    shape = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = load_causal_lm(build_tiny_llama(tokenizer, shape, out / "model", seed=3))
    return model, tokenizer, rows[:5]


def test_general_capability_matches_hand_computed_nll_and_direct_rouge(tiny_world):
    model, tokenizer, rows = tiny_world
    result = general_capability(model, tokenizer, rows, max_prompt_length=512, max_length=640, batch_size=3,
                                max_new_tokens=8)
    calibration = result.pop("calibration")
    assert set(result) == {"rougeL", "nll", "generated"} and all(len(v) == 5 for v in result.values())
    # Held-out calibration reads the same teacher-forced tokens as the NLL: every response token (EOS
    # included), so its token-weighted NLL is the rows' NLL weighted by their token counts.
    counts = [len(tokenizer(response_text(r["response"]), add_special_tokens=False)["input_ids"]) + 1
              for r in rows]
    assert calibration.n_tokens == sum(counts)
    weighted = sum(n * c for n, c in zip(result["nll"], counts, strict=True)) / sum(counts)
    assert calibration.nll == pytest.approx(weighted, abs=1e-4)
    assert calibration.overconfidence == pytest.approx(calibration.confidence - calibration.accuracy)

    prompts = [build_prompt(r["instruction"], r["context"], r["category"]) for r in rows]
    assert result["generated"] == generate(model, tokenizer, prompts, batch_size=5, max_new_tokens=8,
                                           max_prompt_length=512, progress=False)
    assert result["rougeL"] == rouge_per_example(result["generated"], [r["response"] for r in rows])["rougeL"]

    # By hand for the shortest row, padded in its batch of 3: response tokens (EOS included) one by one.
    lengths = [len(encode_prompt(tokenizer, p, 512)) for p in prompts]
    i = lengths.index(min(lengths))
    assert max(lengths[3 * (i // 3):3 * (i // 3) + 3]) > lengths[i] and max(lengths) < 512
    prompt_ids = encode_prompt(tokenizer, prompts[i], 512)
    response_ids = tokenizer(response_text(rows[i]["response"]), add_special_tokens=False)["input_ids"]
    ids = prompt_ids + response_ids + [tokenizer.eos_token_id]
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    losses = [-logprobs[t - 1, ids[t]].item() for t in range(len(prompt_ids), len(ids))]
    assert result["nll"][i] == pytest.approx(sum(losses) / len(losses), abs=1e-4)
    assert len(set(result["nll"])) == 5


def test_lm_eval_hook_is_optional(caplog, tmp_path):
    assert run_lm_eval(tmp_path, []) == {}
    assert _metric_name("hellaswag", "acc_norm,none") == "lm_eval/hellaswag/acc_norm"
    assert _metric_name("gsm8k", "exact_match,strict-match") == "lm_eval/gsm8k/exact_match_strict-match"
    if importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm-evaluation-harness is installed; the skip path does not apply")
    with caplog.at_level(logging.WARNING, logger="smoothkd.evaluation.capability"):
        assert run_lm_eval(tmp_path, ["hellaswag"]) == {}
    assert len(caplog.records) == 1 and "not installed" in caplog.records[0].getMessage()
