"""TRL's distillation losses against smoothkd's forward KL, so bench/peers.py compares like with like.

Reductions: smoothkd's `dense_kd_loss` sums KL(teacher ‖ student) over tokens (× T²) and its trainer divides
by the batch's response-token count; TRL's DistillationTrainer divides its per-token sum by
`num_items_in_batch` (the same count); GKD's `generalized_jsd_loss` ('batchmean' with labels) by the
unmasked tokens. All three are per-token means over the batch, none per sequence. The trainers are built
by the bench's own functions, so the configuration checked here is the one it times.
"""

import copy

import pytest
import torch

pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[peers]'): no peer to compare with")

from bench.peers import distillation_trainer, gkd_trainer, stub_tokenizer, trl_inputs  # noqa: E402
from smoothkd.config import DistillConfig, TrainConfig  # noqa: E402
from smoothkd.data.tokenize import IGNORE_INDEX, CausalLMCollator  # noqa: E402
from smoothkd.distill.losses import dense_kd_loss  # noqa: E402
from smoothkd.distill.trainer import DistillTrainer, training_arguments  # noqa: E402

VOCAB = 96


def trl_per_token_kl(student_logits, teacher_logits, temperature):
    """TRL's per-token forward KL, from the kernel DistillationTrainer's loss runs (beta = 0).

    The kernel takes hidden states and LM-head weights; through an identity head the hidden states are
    the logits, exactly (each output is one input times 1 plus zeros).
    """
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    eye = torch.eye(student_logits.shape[-1])
    divergence, _ = ChunkedDivergenceFunction.apply(student_logits, eye, None, teacher_logits, eye, None, 0.0,
                                                    temperature)
    return divergence


def test_trl_kernel_is_smoothkd_forward_kl_at_t1_and_lacks_t_squared_elsewhere():
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(64, VOCAB, generator=g) * 3).requires_grad_()
    teacher = torch.randn(64, VOCAB, generator=g) * 3
    ours = dense_kd_loss(student, teacher)
    theirs = trl_per_token_kl(student, teacher, 1.0).sum()
    assert ours.item() > 1.0  # a real divergence, not two zeros agreeing
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-5)
    (grad_ours,) = torch.autograd.grad(ours, student)
    (grad_theirs,) = torch.autograd.grad(theirs, student)
    torch.testing.assert_close(grad_theirs, grad_ours, rtol=1e-4, atol=1e-6)
    # At T = 2 both divide the logits by T, but only smoothkd multiplies the divergence by T².
    ours_t2 = dense_kd_loss(student, teacher, temperature=2.0).item()
    theirs_t2 = trl_per_token_kl(student, teacher, 2.0).sum().item()
    assert theirs_t2 * 4 == pytest.approx(ours_t2, rel=1e-5)


def tiny_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(seed, hidden):
        torch.manual_seed(seed)
        # A wide initialisation gives peaked distributions (logits of std ~3), on which temperature matters.
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=True,
                             pad_token_id=0, initializer_range=0.5)
        return LlamaForCausalLM(config).train()

    return build(0, 32), build(1, 48)


def encoded_pairs():
    """Three pairs with prompts and responses of different lengths, so the batches carry padding."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for prompt, response in [(5, 7), (8, 4), (6, 9)]:
        ids = torch.randint(3, VOCAB, (prompt + response,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def smoothkd_loss(student, teacher, batch, tmp_path, temperature=1.0):
    args = training_arguments(TrainConfig(batch_size=3), tmp_path / "smoothkd", "cpu")
    trainer = DistillTrainer(model=student, args=args, distill=DistillConfig(temperature=temperature),
                             alpha=1.0, teacher=teacher)
    return trainer.compute_loss(student, batch)


def test_trl_trainers_compute_smoothkd_online_loss_on_the_same_batch(tmp_path):
    student, teacher = tiny_models()
    examples = encoded_pairs()
    batch = CausalLMCollator(pad_token_id=0)(examples)
    tokenizer = stub_tokenizer()
    trl_student, gkd_student = copy.deepcopy(student), copy.deepcopy(student)

    ours = smoothkd_loss(student, teacher, batch, tmp_path)
    distill = distillation_trainer(trl_student, teacher, tokenizer, tmp_path / "trl", 3)
    theirs = distill.compute_loss(trl_student, trl_inputs(batch, 0))
    gkd = gkd_trainer(gkd_student, teacher, tokenizer, tmp_path / "gkd", 3, examples)
    gkd_loss = gkd.compute_loss(gkd_student, batch)

    assert ours.item() > 0.1
    # DistillationTrainer left-pads the prompts: positions shift, which rotary attention does not see.
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-5)
    assert gkd_loss.item() == pytest.approx(ours.item(), rel=1e-5)
    for loss in (ours, theirs, gkd_loss):
        loss.backward()
    for mine, trl_param, gkd_param in zip(student.parameters(), trl_student.parameters(),
                                          gkd_student.parameters(), strict=True):
        torch.testing.assert_close(trl_param.grad, mine.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gkd_param.grad, mine.grad, rtol=1e-4, atol=1e-6)


def test_trl_temperatures_differ_from_smoothkd(tmp_path):
    """At T = 2 DistillationTrainer's loss is smoothkd's ÷ T²; GKD's compute_loss ignores its temperature."""
    student, teacher = tiny_models()
    examples = encoded_pairs()
    batch = CausalLMCollator(pad_token_id=0)(examples)
    tokenizer = stub_tokenizer()
    with torch.no_grad():
        ours_t1 = smoothkd_loss(student, teacher, batch, tmp_path).item()
        ours_t2 = smoothkd_loss(student, teacher, batch, tmp_path, temperature=2.0).item()
        distill = distillation_trainer(student, teacher, tokenizer, tmp_path / "trl", 3, temperature=2.0)
        theirs_t2 = distill.compute_loss(student, trl_inputs(batch, 0)).item()
        gkd = gkd_trainer(student, teacher, tokenizer, tmp_path / "gkd", 3, examples, temperature=2.0)
        gkd_t2 = gkd.compute_loss(student, batch).item()
    assert ours_t2 != pytest.approx(ours_t1, rel=0.05)  # the temperature changes smoothkd's loss
    assert theirs_t2 * 4 == pytest.approx(ours_t2, rel=1e-5)
    assert gkd_t2 == pytest.approx(ours_t1, rel=1e-5)
