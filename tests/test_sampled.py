"""Sampled teacher labels: unbiased against the dense forward-KL gradient, stored like top-k labels."""

import hashlib

import pytest
import torch
from conftest import corpus_and_tokenizer

from smoothkd.config import DistillConfig, TinyModelConfig, TrainConfig
from smoothkd.data.tokenize import encode_instruction_rows
from smoothkd.distill.labels import LabelSpec, LabelStore, precompute_labels
from smoothkd.distill.losses import dense_kd_loss, sparse_kd_loss
from smoothkd.distill.sampled import decode, draw, sampled_kd_loss
from smoothkd.distill.trainer import DistillCollator, DistillTrainer, finetune, training_arguments
from smoothkd.errors import CorruptLabelStoreError
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm

VOCAB = 300


def logits(n: int) -> torch.Tensor:
    return torch.randn(n, VOCAB, dtype=torch.float64)


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((estimate - reference).norm() / reference.norm())


def dense_grad(teacher, student, temperature):
    s = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(dense_kd_loss(s, teacher, temperature, "forward_kl"), s)
    return grad


def sampled_mean_grad(teacher, student, temperature, samples, draws, seed=0):
    """The student-logit gradient of the sampled loss, averaged over `draws` independent label draws."""
    logp = torch.log_softmax(teacher / temperature, -1).repeat(draws, 1)
    ids, _ = draw(logp, samples, seed)
    _, log_weights, _ = decode(ids.numpy())
    s = student.clone().requires_grad_(True)
    loss = sampled_kd_loss(s.repeat(draws, 1), ids, log_weights, temperature) / draws
    (grad,) = torch.autograd.grad(loss, s)
    return grad


def topk_grad(teacher, student, temperature, k):
    logp = torch.log_softmax(teacher / temperature, -1)
    values, ids = logp.topk(k, -1)
    tail = torch.log1p(-values.exp().sum(-1))
    s = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sparse_kd_loss(s, ids, values, tail, temperature), s)
    return grad


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_gradient_converges_to_the_dense_forward_kl_gradient(temperature):
    torch.manual_seed(0)
    teacher, student = logits(6) * 3, logits(6)
    reference = dense_grad(teacher, student, temperature)
    errors = {r: relative_error(sampled_mean_grad(teacher, student, temperature, 12, r), reference)
              for r in (10, 100, 1000, 10000)}
    # Unbiased: the error is sampling noise only, shrinking like 1/√draws (×√10 per step; allow noise).
    assert all(errors[10 * r] < errors[r] / 2 for r in (10, 100, 1000))
    assert errors[10000] < 0.05


def test_at_equal_bytes_topk_keeps_its_bias_while_sampling_loses_it():
    """Top-8 with 16-bit ids + 8-bit values = 24 B/token = 12 draws with 16-bit ids."""
    torch.manual_seed(1)
    teacher, student = logits(8) * 3, logits(8)
    reference = dense_grad(teacher, student, 1.0)
    topk_bias = relative_error(topk_grad(teacher, student, 1.0, 8), reference)
    sampled_few = relative_error(sampled_mean_grad(teacher, student, 1.0, 12, 100), reference)
    sampled_many = relative_error(sampled_mean_grad(teacher, student, 1.0, 12, 10000), reference)
    # Top-k labels are deterministic: more of them average to the same biased gradient.
    assert topk_bias > 0.1
    assert sampled_many < sampled_few < topk_bias and sampled_many < topk_bias / 10


def test_draws_follow_the_teacher_and_report_covered_mass():
    logp = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64), -1)
    ids, covered = draw(logp.repeat(20000, 1), 4, seed=3)
    frequency = torch.bincount(ids.flatten(), minlength=4).double() / ids.numel()
    torch.testing.assert_close(frequency, logp[0].exp(), atol=5e-3, rtol=0)
    assert (ids[:, 1:] >= ids[:, :-1]).all()  # sorted, repeats adjacent
    distinct = [len(set(row.tolist())) for row in ids[:50]]
    assert [int(torch.isfinite(c).sum()) for c in covered[:50]] == distinct
    assert (covered.exp().sum(-1) <= 1 + 1e-9).all()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampled")
    rows, tokenizer = corpus_and_tokenizer(root, seed=8, n_instruction=30, vocab_size=VOCAB)
    shape = TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    teacher = build_tiny_llama(tokenizer, shape, root / "teacher", seed=1)
    student = build_tiny_llama(tokenizer, shape, root / "student", seed=2)
    examples = encode_instruction_rows(tokenizer, rows[:12], max_length=128, max_prompt_length=96)
    return {"root": root, "tokenizer": tokenizer, "teacher": teacher, "student": student,
            "examples": examples}


def sampled_store(world, root, samples=12):
    return precompute_labels(load_causal_lm(world["teacher"]), world["examples"], root,
                             LabelSpec(labels="sampled", samples=samples, shard_size=4), {"teacher": "t"},
                             world["tokenizer"].pad_token_id, batch_size=4, progress=False)


def test_sampled_store_size_integrity_and_resume(world, tmp_path):
    result = sampled_store(world, tmp_path / "a")
    assert result.bytes_per_token == 14  # 12 ids bit-packed at 9 bits (vocab 300): 108 bits, nothing else
    assert 0 < result.topk_mass < 1  # the teacher mass the distinct draws covered
    store = LabelStore(result.path)
    labels = store.all_tokens()
    ids, log_weights, tail = labels.ids, labels.logp, labels.tail
    assert store.sampled and ids.shape == (result.tokens, 12) and (ids < VOCAB).all()
    torch.testing.assert_close(log_weights.exp().sum(-1), torch.ones(result.tokens, dtype=torch.float32))
    assert torch.isinf(tail).all()
    shards = sorted((tmp_path / "a").rglob("shard-*.npz"))

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    before = {p.name: digest(p) for p in shards}
    # Shards recomputed (no manifest, one shard lost: an interrupted precompute) hold the same draws, so a
    # resumed store is the store an uninterrupted run writes.
    (shards[0].parent / "manifest.json").unlink()
    shards[1].unlink()
    again = sampled_store(world, tmp_path / "a")
    assert again.key == result.key and again.teacher_forward_passes > 0
    assert {p.name: digest(p) for p in shards} == before
    assert sampled_store(world, tmp_path / "a").reused
    shards[2].write_bytes(shards[2].read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CorruptLabelStoreError, match="shard-00002"):
        LabelStore(again.path)
    # Top-k and sampled stores of the same teacher and data live under different keys.
    topk = precompute_labels(load_causal_lm(world["teacher"]), world["examples"], tmp_path / "a",
                             LabelSpec(shard_size=4), {"teacher": "t"}, world["tokenizer"].pad_token_id,
                             batch_size=4, progress=False)
    assert topk.key != result.key


def test_trainer_uses_the_sampled_loss_fused_or_not(world, tmp_path):
    store = LabelStore(sampled_store(world, tmp_path).path)
    distill = DistillConfig(labels="sampled", samples=12, chunk_tokens=9)
    results = []
    for fused in (True, False):
        model = load_causal_lm(world["student"])
        trainer = DistillTrainer(
            model=model, args=training_arguments(TrainConfig(batch_size=8), tmp_path / "w", "cpu"),
            distill=distill, alpha=1.0, fused_loss=fused,
            data_collator=DistillCollator(world["tokenizer"].pad_token_id, store))
        batch = trainer.data_collator([{**e, "label_index": i} for i, e in enumerate(world["examples"][:8])])
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        results.append((loss.item(), [p.grad for p in model.parameters()]))
    # α = 1: the loss is the per-token sampled cross-entropy, computed here from the full logits.
    with torch.no_grad():
        logits = load_causal_lm(world["student"])(input_ids=batch["input_ids"],
                                                   attention_mask=batch["attention_mask"]).logits
    from smoothkd.data.tokenize import select_response

    rows, targets = select_response(logits, batch["labels"])
    expected = sampled_kd_loss(rows, batch["kd_ids"], batch["kd_logp"]) / len(targets)
    assert results[0][0] == pytest.approx(expected.item(), rel=1e-5)
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_store_of_the_other_kind_is_refused(world, tmp_path):
    store = LabelStore(sampled_store(world, tmp_path).path)
    with pytest.raises(ValueError, match="distill.labels is topk but the label store .* holds sampled"):
        finetune(load_causal_lm(world["student"]), world["tokenizer"], world["examples"],
                 TrainConfig(max_steps=1), tmp_path / "out", device="cpu", alpha=0.5, distill=DistillConfig(),
                 label_store=store)


@pytest.mark.parametrize("override", [{"divergence": "reverse_kl"}, {"mode": "online"}])
def test_sampled_labels_need_stored_forward_kl(override):
    with pytest.raises(ValueError, match="labels: sampled needs divergence: forward_kl and mode: stored"):
        DistillConfig(labels="sampled", **override)
