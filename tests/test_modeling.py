"""Tokenizer, tiny-model factory, HF loading, prompt masking, SFT trainer and batched generation."""

import json

import pytest
import torch

from smoothkd.config import ModelConfig, TinyModelConfig, TrainConfig
from smoothkd.data.corpus import generate_corpus
from smoothkd.data.prompts import build_prompt, eval_prompt, response_text
from smoothkd.data.tokenize import IGNORE_INDEX, encode_instruction_rows, encode_pair, encode_prompt
from smoothkd.distill.trainer import finetune as train_sft
from smoothkd.evaluation.generation import generate
from smoothkd.io import read_jsonl
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm
from smoothkd.modeling.tokenizer import load_tokenizer, train_bpe_tokenizer

SHAPE = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(out, seed=3, n_instruction=150, n_cnndm=8, n_xsum=8)
    return out


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    rows = read_jsonl(corpus / "instruction.jsonl")
    texts = [build_prompt(r["instruction"], r["context"], r["category"]) + response_text(r["response"])
             for r in rows]
    path = train_bpe_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=400)
    return load_tokenizer(str(path))


@pytest.fixture(scope="module")
def tiny_model_dir(tokenizer, tmp_path_factory):
    return build_tiny_llama(tokenizer, SHAPE, tmp_path_factory.mktemp("m") / "tiny", seed=1)


def test_tokenizer_round_trips_news_text(tokenizer):
    text = "Ada Quinn, 41, said revenue rose 3.5 million euros on 27 November 2025.\nNext: 12 percent!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token} == {"<pad>", "<s>", "</s>"}
    assert len(tokenizer) == 400


def test_tiny_model_travels_the_hub_loading_path(tiny_model_dir, tokenizer):
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    model = load_causal_lm(tiny_model_dir, ModelConfig())
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size == SHAPE.hidden_size


def test_remote_code_is_not_run_unless_configured(tiny_model_dir, tmp_path):
    import shutil

    evil = tmp_path / "evil"
    shutil.copytree(tiny_model_dir, evil)
    marker = tmp_path / "ran.txt"
    (evil / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (evil / "config.json").write_text(json.dumps(config))
    try:
        load_causal_lm(evil, ModelConfig())
    except (ValueError, OSError):
        pass  # refusing is fine; running the file is not
    assert not marker.exists()


def test_prompt_tokens_are_masked_out_of_the_loss(tokenizer):
    prompt, response = eval_prompt("xsum", "Acme opened a plant in Riga."), "Acme opened a plant."
    pair = encode_pair(tokenizer, prompt, response, max_length=200, max_prompt_length=100)
    n_prompt = len(encode_prompt(tokenizer, prompt, 100))
    assert pair["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    target = pair["labels"][n_prompt:]
    assert target == pair["input_ids"][n_prompt:] and target[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(target[:-1]) == " " + response


def test_long_prompts_keep_their_head_and_instruction(tokenizer):
    prompt = eval_prompt("cnndm", "Acme opened a plant in Riga. " * 60)
    ids = encode_prompt(tokenizer, prompt, max_prompt_length=64)
    assert len(ids) == 64
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text.startswith("Article: Acme") and text.endswith("Summarize the article. Summary:")


def _train(tokenizer, tiny_model_dir, corpus, out, seed=10):
    rows = read_jsonl(corpus / "instruction.jsonl")[:64]
    examples = encode_instruction_rows(tokenizer, rows, max_length=160, max_prompt_length=128)
    cfg = TrainConfig(max_steps=8, learning_rate=5e-3, batch_size=8, log_every=1, seed=seed)
    return train_sft(load_causal_lm(tiny_model_dir), tokenizer, examples, cfg, out, device="cpu")


def test_sft_is_deterministic_and_learns(tokenizer, tiny_model_dir, corpus, tmp_path):
    from safetensors.torch import load_file

    first = _train(tokenizer, tiny_model_dir, corpus, tmp_path / "a")
    second = _train(tokenizer, tiny_model_dir, corpus, tmp_path / "b")
    wa, wb = load_file(tmp_path / "a/model.safetensors"), load_file(tmp_path / "b/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    losses = [loss for _, loss in first.loss_history]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert first.loss_history == second.loss_history
    assert not list(tmp_path.glob(".a.*"))  # no temp dirs left behind


def test_batched_generation_matches_one_at_a_time(tokenizer, tiny_model_dir, corpus):
    model = load_causal_lm(tiny_model_dir)
    rows = read_jsonl(corpus / "xsum.jsonl")
    prompts = [eval_prompt("xsum", r["document"][: 40 + 25 * i]) for i, r in enumerate(rows)]
    batched = generate(model, tokenizer, prompts, batch_size=8, max_new_tokens=12, progress=False)
    single = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=12, progress=False)[0]
              for p in prompts]
    assert batched == single
    assert all("\n" not in text for text in batched)


def test_generation_draws_its_bar_on_a_terminal_only(tokenizer, tiny_model_dir, corpus, capsys, monkeypatch):
    """Captured stderr is not a terminal: a log file gets no carriage-return frames, even with progress on;
    a terminal gets the bar."""
    import io

    import tqdm

    model = load_causal_lm(tiny_model_dir)
    prompts = [eval_prompt("xsum", r["document"][:60]) for r in read_jsonl(corpus / "xsum.jsonl")]
    capsys.readouterr()  # transformers' own loading bar
    generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=4, progress=True, desc="bar")
    assert "bar" not in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, original = Terminal(), tqdm.std.tqdm.__init__
    monkeypatch.setattr(tqdm.std.tqdm, "__init__",
                        lambda self, *args, **kwargs: original(self, *args, **{**kwargs, "file": terminal}))
    generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=4, progress=True, desc="bar")
    assert "bar: 100%" in terminal.getvalue()
