"""Consistency scorers end to end on tiny random-initialised classifiers saved locally: label lookup,
chunking against a per-chunk hand computation, HHEM's checkpoint layout, factory and loading errors."""

import json

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForTokenClassification,
)

from smoothkd.config import EvalConfig
from smoothkd.errors import EvaluationModelError
from smoothkd.evaluation.consistency import (
    HHEM_PROMPT,
    FactPrecisionScorer,
    HHEMScorer,
    NLIScorer,
    build_scorer,
    load_hhem,
    positive_label_index,
)

WORDS = ("the a of in on and said company bank revenue rose fell percent million euros city jobs plant new "
         "opened named chief executive analyst determine if hypothesis is true given premise ada quinn leo "
         "lisbon oslo northwind acme robotics").split()
SENTENCES = [
    "Northwind Bank opened a new plant in Lisbon.",
    "The company said revenue rose in Oslo.",
    "Ada Quinn is the chief executive of Acme Robotics.",
    "The analyst said jobs fell in the city.",
    "Leo Quinn said the bank named a new chief executive.",
    "Revenue fell in Lisbon and rose in Oslo.",
]
SOURCE = " ".join(SENTENCES * 2)
SUMMARY = "Northwind Bank opened a plant in Lisbon."


def _word_tokenizer(specials: dict[str, str], single: str, pair: str | None) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate([*specials.values(), *WORDS, ".", ",", ":", "?"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    special_ids = [(t, vocab[t]) for t in specials.values() if t in single + (pair or "")]
    core.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_ids)
    return PreTrainedTokenizerFast(tokenizer_object=core, **specials)


def _save_random(tmp_path_factory, name: str, model_class, config, tok, seed: int):
    """A randomly initialised `model_class` and its tokenizer saved to a fresh directory."""
    torch.manual_seed(seed)
    out = tmp_path_factory.mktemp(name) / "model"
    model_class(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory):
    tok = _word_tokenizer({"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                           "sep_token": "[SEP]"}, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1")
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=256,
                        id2label={0: "neutral", 1: "entailment", 2: "contradiction"},
                        label2id={"neutral": 0, "entailment": 1, "contradiction": 2})
    return _save_random(tmp_path_factory, "nli", BertForSequenceClassification, config, tok, seed=0)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    tok = _word_tokenizer({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, "$A </s>", None)
    config = T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      num_labels=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return _save_random(tmp_path_factory, "t5", T5ForTokenClassification, config, tok, seed=1)


@pytest.fixture(scope="module")
def hhem_dir(t5_dir, tmp_path_factory):
    """HHEM-2.1-open's layout: an HHEMv2 config without T5 shape, weights under `t5.`, tied key left out."""
    out = tmp_path_factory.mktemp("hhem")
    state = T5ForTokenClassification.from_pretrained(t5_dir).state_dict()
    save_file({f"t5.{k}": v.contiguous() for k, v in state.items()
               if k != "transformer.encoder.embed_tokens.weight"}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({
        "model_type": "HHEMv2Config", "architectures": ["HHEMv2ForSequenceClassification"],
        "foundation": str(t5_dir)}))
    return out


def test_positive_label_is_found_by_name():
    assert positive_label_index({0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}) == 2
    assert positive_label_index({"0": "not_entailment", "1": "entailment"}) == 1
    assert positive_label_index({0: "inconsistent", 1: "consistent"}) == 1
    with pytest.raises(EvaluationModelError, match=r"eval\.consistency_model.*LABEL_0, LABEL_1"):
        positive_label_index({0: "LABEL_0", 1: "LABEL_1"})


def _nli_prob(scorer: NLIScorer, premise: str, hypothesis: str) -> float:
    enc = scorer.tokenizer(premise, hypothesis, return_tensors="pt")
    with torch.no_grad():
        return scorer.model(**enc).logits.softmax(-1)[0, 1].item()


def test_nli_chunks_a_long_source_and_keeps_the_best_chunk(nli_dir):
    scorer = NLIScorer(str(nli_dir), max_length=40, batch_size=3, device="cpu")
    assert scorer.positive == 1
    chunks = scorer.chunks(SOURCE, SUMMARY)
    assert len(chunks) > 2
    # Chunks cover the source in order, end at sentence ends and fit the model input with the summary.
    assert " ".join(chunks).split() == SOURCE.split()
    assert all(c.endswith(".") for c in chunks)
    assert all(len(scorer.tokenizer(c, SUMMARY)["input_ids"]) <= 40 for c in chunks)
    per_chunk = [_nli_prob(scorer, c, SUMMARY) for c in chunks]
    assert len(set(per_chunk)) > 1  # the max is a real choice

    short = SENTENCES[0]
    scores = scorer.score([SOURCE, short], [SUMMARY, SUMMARY])
    assert scores[0] == pytest.approx(max(per_chunk), abs=1e-5)
    assert scores[1] == pytest.approx(_nli_prob(scorer, short, SUMMARY), abs=1e-5)
    assert scorer.chunks(short, SUMMARY) == [short]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_each_summary_sentence_is_judged_on_its_own_best_chunk(nli_dir):
    """A faithful two-sentence summary of a long article's first and last sentences: no chunk holds both,
    so a whole-summary score could only find half its support in any one chunk; each sentence finds all."""
    scorer = NLIScorer(str(nli_dir), max_length=40, batch_size=4, device="cpu")
    first, last = SENTENCES[0], SENTENCES[5]
    article = " ".join([first, *SENTENCES[1:5] * 2, last])
    summary = f"{first} {last}"
    chunks = {s: scorer.chunks(article, s) for s in (first, last)}
    assert [first in c for c in chunks[first]] == [True] + [False] * (len(chunks[first]) - 1)
    assert [last in c for c in chunks[last]] == [False] * (len(chunks[last]) - 1) + [True]
    # The budget is what one sentence leaves, not what the whole summary would.
    assert len(scorer.chunks(article, summary)) > len(chunks[first])

    best = [max(_nli_prob(scorer, c, s) for c in chunks[s]) for s in (first, last)]
    result = scorer.score_sentences([article], [summary])[0]
    assert result.sentences == pytest.approx(best, abs=1e-5)
    assert result.mean == pytest.approx(sum(best) / 2, abs=1e-5)
    assert result.min == pytest.approx(min(best), abs=1e-5)
    assert scorer.score([article], [summary]) == pytest.approx([result.mean], abs=1e-6)


def test_an_empty_summary_scores_zero(nli_dir):
    scorer = NLIScorer(str(nli_dir), max_length=40, device="cpu")
    scores = scorer.score_sentences([SOURCE] * 3, ["", " \n ", SUMMARY])
    assert [s.sentences for s in scores[:2]] == [(), ()] and [s.mean for s in scores[:2]] == [0.0, 0.0]
    assert scores[2].mean > 0.0


def test_a_sentence_longer_than_the_budget_is_cut_by_tokens(nli_dir):
    scorer = NLIScorer(str(nli_dir), max_length=24, device="cpu")
    run_on = " ".join(["the bank said revenue rose"] * 12)  # 60 tokens, no sentence end
    chunks = scorer.chunks(run_on, "revenue rose")
    assert len(chunks) == 4 and " ".join(chunks).split() == run_on.split()
    assert all(len(scorer.tokenizer(c, "revenue rose")["input_ids"]) <= 24 for c in chunks)


def test_hhem_layout_loads_into_stock_t5_and_scores_like_upstream(t5_dir, hhem_dir):
    reference = T5ForTokenClassification.from_pretrained(t5_dir).eval()
    model, tok, prompt = load_hhem(str(hhem_dir))
    assert type(model) is T5ForTokenClassification and prompt == HHEM_PROMPT
    ids = tok(prompt.format(text1=SENTENCES[0], text2=SUMMARY), return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == tok.pad_token_id  # the prompt's literal <pad> opens the input
    with torch.no_grad():
        expected = reference(**ids).logits
        assert torch.allclose(model.eval()(**ids).logits, expected, atol=1e-6)

    scorer = HHEMScorer(str(hhem_dir), max_length=48, batch_size=2, device="cpu")
    chunks = scorer.chunks(SOURCE, SUMMARY)
    assert len(chunks) > 1

    def upstream(premise: str) -> float:  # HHEMv2ForSequenceClassification.predict, one pair
        enc = tok([prompt.format(text1=premise, text2=SUMMARY)], return_tensors="pt", padding=True)
        with torch.no_grad():
            return torch.softmax(reference(**enc).logits[:, 0, :], dim=-1)[0, 1].item()

    scores = scorer.score([SOURCE, SENTENCES[1]], [SUMMARY, SUMMARY])
    assert scores[0] == pytest.approx(max(upstream(c) for c in chunks), abs=1e-5)
    assert scores[1] == pytest.approx(upstream(SENTENCES[1]), abs=1e-5)


def test_stock_t5_directory_loads_as_hhem(t5_dir, hhem_dir):
    """A stock T5ForTokenClassification directory loads as is and scores exactly as the HHEM layout of the
    same weights (checked against the upstream computation above), premise by premise."""
    premises = [SENTENCES[0], SENTENCES[3], SOURCE]
    expected = HHEMScorer(str(hhem_dir), max_length=48, device="cpu").score(premises, [SUMMARY] * 3)
    assert len({round(s, 6) for s in expected}) == 3  # the premises matter: equal scores would be no check
    scores = HHEMScorer(str(t5_dir), max_length=48, device="cpu").score(premises, [SUMMARY] * 3)
    assert scores == pytest.approx(expected, abs=1e-6)


def test_build_scorer_picks_each_scorer(nli_dir, hhem_dir, tmp_path):
    nli = build_scorer(EvalConfig(consistency="nli", consistency_model=str(nli_dir),
                                  consistency_max_length=40), device="cpu")
    assert isinstance(nli, NLIScorer) and nli.max_length == 40
    hhem = build_scorer(EvalConfig(consistency="hhem", consistency_model=str(hhem_dir)), device="cpu")
    assert isinstance(hhem, HHEMScorer) and hhem.max_length == 512

    lexicon = {"org": ["Northwind Bank", "Acme Robotics"], "person": [], "place": ["Lisbon"]}
    (tmp_path / "lexicon.json").write_text(json.dumps(lexicon))
    facts = build_scorer(EvalConfig(), lexicon=tmp_path / "lexicon.json")
    assert isinstance(facts, FactPrecisionScorer) and facts.lexicon == lexicon
    summaries = ["Acme Robotics opened a plant in Lisbon.", "Northwind Bank opened a plant in Lisbon."]
    assert facts.score([SENTENCES[0]] * 2, summaries) == [0.5, 1.0]


def test_loading_problems_are_one_line_errors_naming_the_key(tmp_path, hhem_dir):
    missing = tmp_path / "no-such-model"
    with pytest.raises(EvaluationModelError, match=r"^eval\.consistency_model: cannot load NLI model") as err:
        NLIScorer(str(missing))
    assert "\n" not in str(err.value)
    # Offline (tests run with HF_HUB_OFFLINE=1) and not cached: a hub id fails the same way.
    hhem_error = r"^eval\.consistency_model: cannot load HHEM model"
    with pytest.raises(EvaluationModelError, match=hhem_error) as err:
        HHEMScorer("vectara/hallucination_evaluation_model")
    assert "\n" not in str(err.value)
    # An HHEM checkpoint whose config names no foundation needs google/flan-t5-base's config from the hub.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "HHEMv2Config"}))
    (bare / "model.safetensors").write_bytes((hhem_dir / "model.safetensors").read_bytes())
    with pytest.raises(EvaluationModelError, match=hhem_error):
        load_hhem(str(bare))
    with pytest.raises(EvaluationModelError, match=r"^eval\.consistency_tokenizer: cannot load HHEM tok"):
        load_hhem(str(hhem_dir), tokenizer=str(missing))
