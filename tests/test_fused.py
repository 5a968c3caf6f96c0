"""Fused LM-head loss: the same loss and gradients as the unfused path, and no [B, T, V] tensor."""

import dataclasses
import logging

import pytest
import torch
from conftest import corpus_and_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (
    AutoModelForCausalLM,
    CohereConfig,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from smoothkd.config import DistillConfig, TinyModelConfig, TrainConfig
from smoothkd.data.tokenize import encode_instruction_rows
from smoothkd.distill.fused import fused_model
from smoothkd.distill.labels import LabelSpec, LabelStore, precompute_labels
from smoothkd.distill.trainer import DistillCollator, DistillTrainer, training_arguments
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm

VOCAB = 300
BATCH = 8
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    rows, tokenizer = corpus_and_tokenizer(root, seed=7, n_instruction=30, vocab_size=VOCAB)
    shape = TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    wider = shape.model_copy(update={"hidden_size": 24})
    teacher = build_tiny_llama(tokenizer, wider, root / "teacher", seed=1)
    student = build_tiny_llama(tokenizer, shape, root / "student", seed=2)
    examples = encode_instruction_rows(tokenizer, rows[:BATCH], max_length=128, max_prompt_length=96)
    store = precompute_labels(load_causal_lm(teacher), examples, root / "labels",
                              LabelSpec(top_k=8, encoding="compact", shard_size=4), {"teacher": "t"},
                              tokenizer.pad_token_id, batch_size=4, progress=False)
    return {"root": root, "tokenizer": tokenizer, "teacher": teacher, "student": student,
            "examples": examples, "store": LabelStore(store.path)}


def step(world, model, fused, alpha=0.0, store=None, teacher=None, distill=None):
    """(loss, parameter grads, trainer) of one batch through DistillTrainer.compute_loss."""
    trainer = DistillTrainer(
        model=model, args=training_arguments(TrainConfig(batch_size=BATCH), world["root"] / "w", "cpu"),
        distill=distill or DistillConfig(chunk_tokens=7), alpha=alpha, teacher=teacher, fused_loss=fused,
        data_collator=DistillCollator(world["tokenizer"].pad_token_id, store))
    batch = trainer.data_collator([{**e, "label_index": i} for i, e in enumerate(world["examples"])])
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, trainer


def assert_same(a, b):
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], **TOL, msg=name)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_fused_equals_unfused_on_stored_topk_labels(world, alpha):
    model = load_causal_lm(world["student"])
    fused = step(world, model, True, alpha, store=world["store"])
    assert fused[2].fused_off is None  # the fused path really ran
    assert_same(fused, step(world, model, False, alpha, store=world["store"]))


@pytest.mark.parametrize("kind,temperature", [("forward_kl", 1.0), ("reverse_kl", 2.0), ("jsd", 1.0)])
def test_fused_equals_unfused_with_an_online_teacher(world, kind, temperature):
    model, teacher = load_causal_lm(world["student"]), load_causal_lm(world["teacher"])
    distill = DistillConfig(chunk_tokens=5, divergence=kind, temperature=temperature, mode="online")
    fused = step(world, model, True, 0.5, teacher=teacher, distill=distill)
    assert fused[2].fused_off is None and fused[2].teacher_fused is not None
    assert_same(fused, step(world, model, False, 0.5, teacher=teacher, distill=distill))


class LargestVocabTensor(TorchDispatchMode):
    """Records the largest element count of any tensor with a vocabulary-sized dimension an op returns."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and self.vocab in t.shape:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_no_batch_by_vocab_tensor_in_forward_or_backward(world, alpha):
    model = load_causal_lm(world["student"])
    batch_positions = BATCH * max(len(e["input_ids"]) for e in world["examples"])
    seen = {}
    for fused in (True, False):
        with LargestVocabTensor(VOCAB) as probe:
            step(world, model, fused, alpha, store=world["store"])
        seen[fused] = probe.largest
    # The probe can see a [B, T, V] tensor: the unfused path makes one.
    assert seen[False] >= batch_positions * VOCAB
    # Fused, the largest is a chunk's logits or the [V, H] head weight (and its gradient).
    hidden = model.config.hidden_size
    assert seen[True] <= max(7, hidden) * VOCAB


def test_untied_head_with_softcapping_is_reproduced(world):
    """Gemma 2: separate lm_head weight and a final logit soft-cap; fused equals unfused."""
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=False,
                          final_logit_softcapping=2.0, pad_token_id=world["tokenizer"].pad_token_id)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    with torch.no_grad():  # a head large enough for the soft-cap to bend the logits
        model.lm_head.weight.mul_(20)
    assert fused_model(model, model)[0].softcap == 2.0
    fused = step(world, model, True, 0.3, store=world["store"])
    assert fused[2].fused_off is None and "lm_head.weight" in fused[1]
    assert_same(fused, step(world, model, False, 0.3, store=world["store"]))


def test_a_head_it_cannot_reproduce_trains_unfused(world, caplog):
    """A config attribute the architecture ignores makes the rebuilt head wrong: caught, unfused."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, pad_token_id=world["tokenizer"].pad_token_id)
    config.final_logit_softcapping = 1.0  # Llama's forward never applies it
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with caplog.at_level(logging.WARNING, logger="smoothkd.distill.trainer"):
        fused = step(world, model, True, 0.3, store=world["store"])
    assert "head differs" in fused[2].fused_off and "trained unfused" in caplog.text
    assert_same(fused, step(world, model, False, 0.3, store=world["store"]))


@pytest.mark.parametrize(("config_class", "scaling", "scale"), [
    (CohereConfig, {"logit_scale": 0.25}, 0.25),  # logits × logit_scale
    (GraniteConfig, {"logits_scaling": 4.0}, 0.25),  # logits ÷ logits_scaling
], ids=["cohere", "granite"])
def test_cohere_and_granite_logit_scaling_is_reproduced(world, tmp_path, config_class, scaling, scale):
    """Tiny Cohere and Granite checkpoints saved and loaded back like hub models: the fused head applies
    their logit scaling (without it the head would not match), and fused equals unfused."""
    tokenizer = world["tokenizer"]
    config = config_class(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **scaling)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    model = load_causal_lm(tmp_path / "model")
    assert type(model).__name__ == config_class.__name__.replace("Config", "ForCausalLM")
    fused = fused_model(model, model)[0]
    assert fused.scale == scale
    ids = torch.tensor([world["examples"][0]["input_ids"]])
    hidden, outputs = fused.forward({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert fused.check(hidden, outputs) is None
    assert "head differs" in dataclasses.replace(fused, scale=1.0).check(hidden, outputs)
    result = step(world, model, True, 0.3, store=world["store"])
    assert result[2].fused_off is None
    assert_same(result, step(world, model, False, 0.3, store=world["store"]))


class KeepsAllLogits(LlamaForCausalLM):
    """A causal LM whose forward has no `logits_to_keep` (as older or custom architectures)."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


class OwnDecoder(LlamaForCausalLM):
    """A causal LM that names itself as its decoder: no hidden states to take from a separate module."""

    def get_decoder(self):
        return self


def _tiny_llama(world, model_class=LlamaForCausalLM):
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, pad_token_id=world["tokenizer"].pad_token_id)
    torch.manual_seed(0)
    return model_class(config)


def _lora_on_the_head(world):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(_tiny_llama(world), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))


@pytest.mark.parametrize(("build", "why"), [
    (lambda w: _tiny_llama(w, KeepsAllLogits), "KeepsAllLogits.forward takes no logits_to_keep"),
    (lambda w: _tiny_llama(w, OwnDecoder), "OwnDecoder has no separate decoder module"),
    (_lora_on_the_head,
     "LlamaForCausalLM's output head is a peft.tuners.lora.layer.Linear, not a plain torch.nn.Linear"),
], ids=["no-logits_to_keep", "no-decoder", "lora-head"])
def test_a_model_it_cannot_take_apart_trains_unfused_saying_why(world, caplog, build, why):
    model = build(world)
    assert fused_model(model, model) == (None, why)
    with caplog.at_level(logging.WARNING, logger="smoothkd.distill.trainer"):
        fused = step(world, model, True, 0.3, store=world["store"])
    assert fused[2].fused_off == why and f"trained unfused ([B, T, V] logits): {why}" in caplog.text
    assert_same(fused, step(world, model, False, 0.3, store=world["store"]))
