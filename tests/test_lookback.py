"""Lookback ratios from the generation loop, sentence features, the detector and the factual rate."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import corpus_and_tokenizer

from smoothkd.config import TinyModelConfig, TrainConfig
from smoothkd.data.prompts import build_prompt, eval_prompt
from smoothkd.data.tokenize import encode_instruction_rows
from smoothkd.distill.trainer import finetune
from smoothkd.errors import DetectorError
from smoothkd.evaluation.detector import (
    detector_examples,
    factual_rate,
    fit_detector,
    grouped_split,
    load_detector,
)
from smoothkd.evaluation.facts import sentence_spans
from smoothkd.evaluation.generation import Generation, generate, generate_with_lookback
from smoothkd.evaluation.lookback import span_tokens, token_offsets
from smoothkd.io import read_json, read_jsonl
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm

SHAPE = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lookback")
    _, tokenizer = corpus_and_tokenizer(root, seed=4, n_instruction=120, vocab_size=400, n_eval=6)
    model_dir = build_tiny_llama(tokenizer, SHAPE, root / "model", seed=3)
    docs = [r["document"] for r in read_jsonl(root / "corpus/xsum.jsonl")]
    # Different prompt lengths, so the batch is left-padded.
    prompts = [eval_prompt("xsum", doc[: 30 + 40 * i]) for i, doc in enumerate(docs)]
    return {"root": root, "tokenizer": tokenizer, "model_dir": model_dir, "prompts": prompts}


def hand_ratios(model, prompt_ids: list[int], new_ids: list[int]) -> np.ndarray:
    """Lookback ratios of generated tokens 1.. from one unpadded full forward with returned attentions."""
    ids = torch.tensor([prompt_ids + new_ids])
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(input_ids=ids, output_attentions=True).attentions
    n = len(prompt_ids)
    out = []
    for t in range(1, len(new_ids)):
        query = n + t - 1  # the step producing token t reads token t - 1
        per_layer = []
        for layer in attentions:
            row = layer[0, :, query, :].double()
            context, new = row[:, :n].mean(-1), row[:, n:n + t].mean(-1)
            per_layer.append((context / (context + new)).numpy())
        out.append(per_layer)
    return np.array(out)


def test_lookback_ratios_equal_a_hand_computation_from_full_attentions(world):
    from smoothkd.data.tokenize import encode_prompt

    tokenizer, prompts = world["tokenizer"], world["prompts"]
    model = load_causal_lm(world["model_dir"])
    original = model.config._attn_implementation
    generations = generate_with_lookback(model, tokenizer, prompts, batch_size=8, max_new_tokens=10,
                                         progress=False)
    assert model.config._attn_implementation == original != "eager"  # restored after the eager loop
    assert len({len(encode_prompt(tokenizer, p, 512)) for p in prompts}) == len(prompts)
    for prompt, gen in zip(prompts, generations, strict=True):
        layers, heads = SHAPE.num_hidden_layers, SHAPE.num_attention_heads
        assert gen.lookback.shape == (len(gen.token_ids), layers, heads)
        assert np.all(gen.lookback[0] == 1.0)  # nothing generated yet: all attention is on the context
        expected = hand_ratios(load_causal_lm(world["model_dir"]), encode_prompt(tokenizer, prompt, 512),
                               gen.token_ids)
        np.testing.assert_allclose(gen.lookback[1:], expected, atol=1e-5)
        assert 0 < gen.lookback.min() and gen.lookback.max() <= 1


def test_token_probabilities_equal_a_softmax_of_one_full_forward(world):
    """Each generated token's recorded probability, from the batched, left-padded, KV-cached loop, is the
    softmax (over the tokenizer's tokens) of one unpadded full forward over prompt + generated ids."""
    from smoothkd.data.tokenize import encode_prompt

    tokenizer, prompts = world["tokenizer"], world["prompts"]
    model = load_causal_lm(world["model_dir"])
    generations = generate_with_lookback(model, tokenizer, prompts, batch_size=4, max_new_tokens=10,
                                         progress=False)
    assert len({len(encode_prompt(tokenizer, p, 512)) for p in prompts}) == len(prompts) > 4
    for prompt, gen in zip(prompts, generations, strict=True):
        prompt_ids = encode_prompt(tokenizer, prompt, 512)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + gen.token_ids])).logits[0].double()
        steps = logits[len(prompt_ids) - 1:-1, :len(tokenizer)].softmax(-1)  # row t chose token t
        expected = steps[torch.arange(len(gen.token_ids)), gen.token_ids].numpy()
        assert gen.probs.shape == (len(gen.token_ids),)
        np.testing.assert_allclose(gen.probs, expected, atol=1e-5)
        # Greedy: each chosen token is its step's most probable one.
        np.testing.assert_allclose(gen.probs, steps.max(-1).values.numpy(), atol=1e-5)


def test_one_loop_matches_model_generate_batched_and_alone(world):
    from smoothkd.data.tokenize import encode_prompt
    from smoothkd.evaluation.generation import _left_pad

    tokenizer, prompts = world["tokenizer"], world["prompts"]
    model = load_causal_lm(world["model_dir"])
    batched = generate(model, tokenizer, prompts, batch_size=8, max_new_tokens=12, progress=False)
    single = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=12, progress=False)[0]
              for p in prompts]
    with_lookback = generate_with_lookback(model, tokenizer, prompts, batch_size=3, max_new_tokens=12,
                                           progress=False)
    assert batched == single == [g.text for g in with_lookback]
    # The same greedy text as transformers' own generate (which cannot stop at our newline ids here).
    input_ids, mask = _left_pad([encode_prompt(tokenizer, p, 512) for p in prompts], tokenizer.pad_token_id)
    reference = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    for row, gen in zip(reference[:, input_ids.shape[1]:].tolist(), with_lookback, strict=True):
        assert row[:len(gen.token_ids)] == gen.token_ids


def test_token_offsets_map_sentences_to_their_tokens(world):
    tokenizer = world["tokenizer"]
    raw = " Acme opened a plant in Riga. Its chief, Ada Quinn, said so.\nNext line"
    ids = tokenizer(raw, add_special_tokens=False)["input_ids"]
    text, offsets = token_offsets(tokenizer, ids)
    assert text == "Acme opened a plant in Riga. Its chief, Ada Quinn, said so."
    assert "".join(text[s:e] for s, e in offsets) == text
    second = text.index("Its")
    first, last = span_tokens(offsets, second, len(text))
    assert tokenizer.decode(ids[first:last]).strip() == text[second:]
    assert all(e <= second for s, e in offsets[:first])


def byte_level_tokenizer(pieces: list[bytes]):
    """A byte-level BPE tokenizer whose vocabulary is every single byte plus `pieces` and `<eos>`: ids
    picked by hand decode as their bytes, whatever a trained vocabulary would merge."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbol = bytes_to_unicode()

    def name(piece: bytes) -> str:
        return "".join(symbol[b] for b in piece)

    names = [name(bytes([b])) for b in range(256)] + [name(piece) for piece in pieces]
    core = Tokenizer(models.BPE(vocab={n: i for i, n in enumerate(names)} | {"<eos>": len(names)}, merges=[]))
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")
    return tokenizer, lambda piece: tokenizer.convert_tokens_to_ids(name(piece))


def test_token_offsets_give_a_token_that_starts_mid_character_that_characters_start():
    """" Zoë met €5.\nMore" with "ë" (2 bytes) split between two tokens, the second also holding " met",
    and "€" (3 bytes) split into three: a token starts at the character holding its first byte and ends
    after the one holding its last; the leading space is stripped and the text cut at the newline."""
    raw = [b" Zo", b"\xc3", b"\xab met", b" ", b"\xe2", b"\x82", b"\xac", b"5.", b"\n", b"More"]
    tokenizer, token_id = byte_level_tokenizer([b" Zo", b"\xab met", b"5.", b"More"])
    ids = [token_id(piece) for piece in raw] + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == " Zoë met €5.\nMore"
    text, offsets = token_offsets(tokenizer, ids)
    assert text == "Zoë met €5."
    # Zo, the first byte of ë, its second byte with " met", " ", € byte by byte, "5.", then nothing.
    assert offsets == [(0, 2), (2, 3), (2, 7), (7, 8), (8, 9), (8, 9), (8, 9), (9, 11), (11, 11), (11, 11),
                       (11, 11)]
    # The first token covering ë is the one that began it; "m" is the straddling token's.
    assert span_tokens(offsets, 2, 3) == (1, 3) and span_tokens(offsets, 4, 5) == (2, 3)
    # Cut by the token limit inside "€": its first token covers the placeholder, the next none.
    text, offsets = token_offsets(tokenizer, ids[:6])
    assert text == "Zoë met \ufffd" and offsets[4:] == [(8, 9), (9, 9)]


def test_detector_auroc_is_held_out_and_the_detector_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.uniform(0.2, 0.8, size=(200, 2, 3))
    labels = (features[:, 1, 2] + rng.normal(0, 0.05, 200) > 0.5).astype(int)  # one head carries the signal
    groups = np.arange(200) // 2  # two sentences per source row
    detector = fit_detector(features, labels, groups, seed=1)
    assert detector.auroc > 0.9 and detector.n_train + detector.n_test == 200
    assert abs(detector.n_train - detector.n_test) <= 20 and detector.n_test_groups == detector.n_test // 2
    assert detector.auroc_ci_low < detector.auroc <= detector.auroc_ci_high <= 1.0
    assert detector.unreliable_reason(0.7) is None
    assert (detector.layers, detector.heads) == (2, 3)
    assert detector.n_factual + detector.n_hallucinated == 200
    # Labels unrelated to the features: an in-sample AUROC would look good, the held-out one is chance.
    shuffled = [fit_detector(features, rng.permutation(labels), groups, seed=s) for s in range(5)]
    assert 0.3 < np.mean([d.auroc for d in shuffled]) < 0.7
    assert all(d.unreliable_reason(0.7) for d in shuffled)

    path = detector.save(tmp_path / "detector.json")
    loaded = load_detector(path)
    assert json.loads(path.read_text())["format"] == "smoothkd-lookback-detector/3"
    np.testing.assert_allclose(loaded.predict_proba(features), detector.predict_proba(features), rtol=1e-12)
    assert loaded.auroc == detector.auroc and not list(tmp_path.glob(".detector.json.*"))
    with pytest.raises(DetectorError, match="2 layers × 3 heads"):
        loaded.predict_proba(features[:, :1])


def test_the_split_keeps_every_source_row_on_one_side():
    rng = np.random.default_rng(3)
    # 3 pooled students × 1-3 sentences on each of 40 rows: one row's sentences share a group.
    groups = np.repeat(np.arange(40), rng.integers(3, 10, 40))
    labels = (rng.uniform(size=len(groups)) < 0.3).astype(int)
    for seed in range(5):
        train, test = grouped_split(labels, groups, seed)
        assert not set(groups[train]) & set(groups[test])
        assert sorted([*train, *test]) == list(range(len(groups)))
        assert set(labels[train]) == set(labels[test]) == {0, 1}
    with pytest.raises(DetectorError, match="at least 2 source rows; got 1"):
        grouped_split(labels, np.zeros(len(labels)), 0)
    # All factual sentences on one row: one side cannot have any.
    one_row = np.where(groups == 0, 1, 0)
    with pytest.raises(DetectorError, match="hold one class only .* in 1 rows"):
        grouped_split(one_row, groups, 0)


def test_a_per_sentence_split_leaks_row_identity_and_the_grouped_one_does_not():
    """Labels fixed per row and unrelated to attention, features near a per-row centre: a split that puts
    sentences of one row on both sides scores memorised rows, the grouped split sees chance."""
    rng = np.random.default_rng(0)
    n_rows, per_row = 60, 6
    centres = rng.normal(size=(n_rows, 8, 8))
    groups = np.repeat(np.arange(n_rows), per_row)
    features = centres[groups] + rng.normal(scale=0.1, size=(len(groups), 8, 8))
    labels = rng.permutation(np.arange(n_rows) % 2)[groups]
    leaky = [fit_detector(features, labels, np.arange(len(groups)), seed=s).auroc for s in range(3)]
    grouped = [fit_detector(features, labels, groups, seed=s) for s in range(3)]
    assert np.mean(leaky) > 0.9, leaky
    assert np.mean([d.auroc for d in grouped]) < 0.7
    # Rows, not sentences, are the independent units: the CI is wide and reaches chance.
    assert all(d.unreliable_reason(0.7) for d in grouped)


def test_detector_needs_both_classes():
    features = np.random.default_rng(0).uniform(size=(20, 2, 2))
    with pytest.raises(DetectorError, match="got 20 factual, 0 hallucinated") as err:
        fit_detector(features, np.ones(20), np.arange(20), seed=0)
    assert "\n" not in str(err.value)


def test_factual_rate_handles_an_empty_generation():
    empty = Generation(text="", token_ids=[2], lookback=np.ones((1, 2, 3)), offsets=[(0, 0)],
                       probs=np.ones(1))
    detector = fit_detector(np.random.default_rng(0).uniform(size=(8, 2, 3)), np.array([0, 1] * 4),
                            np.arange(8), seed=0)
    rate = factual_rate(detector, [empty])
    assert rate.per_example == [None] and rate.n_sentences == [0]
    assert rate.rate is None and rate.mean_lookback_ratio is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Llama trained for ~20 s (uncontended) on 1,200 rows, and 300 unseen rows of the same world."""
    root = tmp_path_factory.mktemp("trained")
    rows, tokenizer = corpus_and_tokenizer(root, seed=7, n_instruction=1500, vocab_size=512, n_eval=1,
                                           train_rows=1200)
    train, held_out = rows[:1200], rows[1200:]
    shape = TinyModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    init = build_tiny_llama(tokenizer, shape, root / "init", seed=1)
    examples = encode_instruction_rows(tokenizer, train, max_length=192, max_prompt_length=160)
    cfg = TrainConfig(max_steps=300, learning_rate=5e-3, batch_size=16, warmup_ratio=0.05, log_every=100,
                      seed=1)
    finetune(load_causal_lm(init), tokenizer, examples, cfg, root / "model", device="cpu")
    return {"model": load_causal_lm(root / "model"), "tokenizer": tokenizer, "rows": held_out,
            "lexicon": read_json(root / "corpus/lexicon.json")}


def test_detector_beats_chance_on_held_out_sentences_of_a_trained_model(trained, tmp_path):
    model, tokenizer, rows = trained["model"], trained["tokenizer"], trained["rows"]
    data = detector_examples(model, tokenizer, rows, trained["lexicon"], batch_size=32, max_new_tokens=40,
                             max_prompt_length=160)
    assert data.features.shape == (len(data.labels), 2, 4) and len(data.sentences) == len(data.labels)
    assert 10 <= data.labels.sum() < len(data.labels) - 10  # both classes, from the fact scorer
    # Repeated grouped hold-out: each detector is scored only on rows it never saw.
    assert len(data.groups) == len(data.labels) and len(set(data.groups)) < len(data.groups)
    aurocs = [fit_detector(data.features, data.labels, data.groups, seed=seed).auroc for seed in range(5)]
    assert np.mean(aurocs) > 0.6, aurocs

    detector = load_detector(fit_detector(data.features, data.labels, data.groups, seed=0)
                             .save(tmp_path / "d.json"))
    with_context = [r for r in rows if r["context"]][:16]
    prompts = [build_prompt(r["instruction"], r["context"], r["category"]) for r in with_context]
    generations = generate_with_lookback(model, tokenizer, prompts, max_new_tokens=40, max_prompt_length=160,
                                         progress=False)
    rate = factual_rate(detector, generations)
    assert rate.n_sentences == [len(sentence_spans(g.text)) for g in generations]
    for share, lookback in zip(rate.per_example, rate.mean_lookback, strict=True):
        assert share is None or (0 <= share <= 1 and 0 < lookback <= 1)
    # The balanced detector calls some sentences factual and some not: the rate separates generations.
    assert 0 < rate.rate < 1


def test_an_evaluation_reports_how_confidently_the_model_states_supported_and_unsupported_facts(trained):
    """The trained model summarises held-out contexts (as an `xsum` split): every summary that states an
    unsupported (supported) fact has a confidence in [0, 1], every other has none, and the split's metric
    is their mean with a bootstrap CI."""
    from smoothkd.config import EvalConfig
    from smoothkd.evaluation.consistency import FactPrecisionScorer
    from smoothkd.evaluation.evaluate import evaluate_split

    rows = [{"id": r["id"], "document": r["context"], "summary": r["response"], "facts": r["facts"]}
            for r in trained["rows"] if r["context"]][:16]
    scorer = FactPrecisionScorer(trained["lexicon"])
    metrics, per_example, localized = evaluate_split(
        EvalConfig(splits=["xsum"], batch_size=16, max_new_tokens=40, bootstrap_samples=200), 160,
        trained["model"], trained["tokenizer"], "xsum", rows, scorer, scorer, progress=False)
    for name, supported in (("unsupported_fact_confidence", False), ("supported_fact_confidence", True)):
        values = per_example[name]
        states = [any(f.supported == supported for f in row.facts.facts) for row in localized]
        assert [v is not None for v in values] == states and sum(states) >= 3, name
        present = [v for v in values if v is not None]
        assert all(0 < v <= 1 for v in present) and len(set(present)) > 1
        low, mean, high = (metrics[f"xsum/{name}{end}"] for end in ("_ci_low", "", "_ci_high"))
        assert mean == pytest.approx(np.mean(present)) and 0 <= low < mean < high <= 1


def test_below_the_auroc_floor_the_rate_is_reported_apart_and_gates_nothing(world):
    from rich.console import Console

    from smoothkd.artifacts import DetectorFit, Gates, ModelResult
    from smoothkd.config import PromotionConfig, RunConfig
    from smoothkd.evaluation.consistency import FactPrecisionScorer
    from smoothkd.evaluation.evaluate import evaluate_split
    from smoothkd.registry.gate import Candidate, judge
    from smoothkd.report import gate_lines, results_grid

    rng = np.random.default_rng(0)
    features = rng.uniform(0.2, 0.8, size=(200, SHAPE.num_hidden_layers, SHAPE.num_attention_heads))
    labels = (features[:, 1, 2] + rng.normal(0, 0.05, 200) > 0.5).astype(int)
    detector = fit_detector(features, labels, np.arange(200) // 2, seed=0)
    assert 0.9 < detector.auroc < 0.99
    model, tokenizer = load_causal_lm(world["model_dir"]), world["tokenizer"]
    rows = read_jsonl(world["root"] / "corpus/xsum.jsonl")[:4]
    scorer = FactPrecisionScorer()
    evaluated = {}
    for floor in (0.7, 0.99):  # the same detector, judged against two floors
        cfg = RunConfig.model_validate({"eval": {"splits": ["xsum"], "batch_size": 4, "max_new_tokens": 12,
                                                 "bootstrap_samples": 50, "detector_min_auroc": floor}})
        metrics, per_example, _ = evaluate_split(cfg.eval, cfg.student.train.max_prompt_length, model,
                                                 tokenizer, "xsum", rows, scorer, scorer, detector,
                                                 progress=False)
        evaluated[floor] = Candidate("kd", 0.5, metrics, {"xsum": per_example}, version="2")
    reliable, unreliable = evaluated[0.7].metrics, evaluated[0.99].metrics
    assert "xsum/factual_rate" in reliable and "xsum/factual_rate_unreliable" not in reliable
    assert "xsum/factual_rate" not in unreliable
    assert unreliable["xsum/factual_rate_unreliable"] == reliable["xsum/factual_rate"]
    assert "factual_rate" not in evaluated[0.99].per_example["xsum"]
    assert "detector_min_auroc 0.99" in detector.unreliable_reason(0.99)

    # The champion regression check reads a reliable rate and skips an unreliable one (either side).
    promotion = PromotionConfig(regression_metrics=["factual_rate"])
    def criteria(candidate, champion):  # the comparisons with the champion (the floors aside)
        return [c.name for c in judge(candidate, promotion, cfg.eval, champion=replace(champion, version="1")
                                      ).criteria if "vs champion" in c.name]

    assert criteria(evaluated[0.7], evaluated[0.7]) == ["xsum/factual_rate vs champion v1"]
    assert criteria(evaluated[0.99], evaluated[0.7]) == []
    assert criteria(evaluated[0.7], evaluated[0.99]) == []

    # The summary marks the number and says why.
    console = Console(record=True, width=240)
    console.print(results_grid([ModelResult("student_kd", 0.5, "", 0, unreliable)], ["xsum"]).rich())
    assert "unreliable" in console.export_text()
    fit = DetectorFit("student_kd", auroc=detector.auroc, auroc_ci_low=detector.auroc_ci_low,
                      auroc_ci_high=detector.auroc_ci_high, n_test=detector.n_test,
                      n_test_groups=detector.n_test_groups, n_factual=detector.n_factual,
                      n_hallucinated=detector.n_hallucinated, unreliable=detector.unreliable_reason(0.99))
    (line,) = gate_lines(Gates(student_detector=fit))
    assert "UNRELIABLE, left out of the gate" in line and "detector_min_auroc 0.99" in line

