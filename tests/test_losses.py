"""KD losses against dense references written here, independently of smoothkd.distill.losses."""

import pytest
import torch

from smoothkd.distill.losses import dense_kd_loss, divergence, mixed_loss, sparse_kd_loss


def ref_divergence(p_logits, q_logits, kind, temperature, beta=0.5):
    """Textbook formulas on dense probabilities, float64."""
    p = torch.softmax(p_logits.double() / temperature, -1)
    q = torch.softmax(q_logits.double() / temperature, -1)
    if kind == "forward_kl":
        value = (p * (p.log() - q.log())).sum(-1)
    elif kind == "reverse_kl":
        value = (q * (q.log() - p.log())).sum(-1)
    else:
        m = beta * p + (1 - beta) * q
        value = beta * (p * (p.log() - m.log())).sum(-1) + (1 - beta) * (q * (q.log() - m.log())).sum(-1)
    return value.sum() * temperature**2


def teacher_topk(teacher_logits, k, temperature):
    logp = torch.log_softmax(teacher_logits / temperature, -1)
    values, ids = logp.topk(k, -1)
    tail_mass = (1 - values.exp().sum(-1)).clamp(min=1e-30)
    return ids, values, tail_mass.log()


KINDS = ["forward_kl", "reverse_kl", "jsd"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_support_sparse_loss_equals_dense_reference_with_gradients(kind, temperature):
    torch.manual_seed(0)
    n, vocab = 12, 50
    teacher = torch.randn(n, vocab) * 3
    student = torch.randn(n, vocab, requires_grad=True)
    ids, logp, _ = teacher_topk(teacher, vocab, 1.0)  # stored labels: the taught distribution
    tail = torch.full((n,), float("-inf"))
    sparse = sparse_kd_loss(student, ids, logp, tail, temperature, kind, beta=0.3)
    (grad_sparse,) = torch.autograd.grad(sparse, student)
    student_ref = student.detach().clone().requires_grad_(True)
    ref = ref_divergence(teacher, student_ref, kind, temperature, beta=0.3)
    (grad_ref,) = torch.autograd.grad(ref, student_ref)
    # Per-token values (training divides the summed loss by the token count).
    assert sparse.item() / n == pytest.approx(ref.item() / n, abs=1e-5)
    torch.testing.assert_close(grad_sparse.double(), grad_ref.double(), atol=1e-5, rtol=1e-5)
    dense = dense_kd_loss(student, teacher, temperature, kind, beta=0.3)
    assert dense.item() / n == pytest.approx(ref.item() / n, abs=1e-5)


def test_topk_support_matches_reference_on_k_plus_one_outcomes():
    """With k < V, both sides are reduced to top-k + one tail bucket before the divergence."""
    torch.manual_seed(1)
    n, vocab, k = 8, 40, 5
    teacher, student = torch.randn(n, vocab) * 2, torch.randn(n, vocab)
    ids, logp, tail = teacher_topk(teacher, k, 1.0)
    p = torch.cat([logp.exp(), tail.exp().unsqueeze(-1)], -1).double()
    q_full = torch.softmax(student.double(), -1)
    q_top = q_full.gather(-1, ids)
    q = torch.cat([q_top, 1 - q_top.sum(-1, keepdim=True)], -1)
    ref = (p * (p.log() - q.log())).sum()
    assert sparse_kd_loss(student, ids, logp, tail).item() == pytest.approx(ref.item(), abs=1e-5)


def reduce_and_temper(logits, ids, temperature):
    """A distribution reduced to k ids + the rest (float64), then each of the k + 1 outcomes raised to 1/T."""
    full = torch.softmax(logits.double(), -1)
    top = full.gather(-1, ids)
    reduced = torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1)
    tempered = reduced ** (1 / temperature)
    return tempered / tempered.sum(-1, keepdim=True)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_topk_loss_tempers_both_sides_on_the_k_plus_one_outcomes(temperature):
    torch.manual_seed(2)
    n, vocab, k = 8, 40, 5
    teacher, student = torch.randn(n, vocab) * 2, torch.randn(n, vocab, requires_grad=True)
    ids, logp, tail = teacher_topk(teacher, k, 1.0)
    student_ref = student.detach().clone().requires_grad_(True)
    p, q = reduce_and_temper(teacher, ids, temperature), reduce_and_temper(student_ref, ids, temperature)
    ref = (p * (p.log() - q.log())).sum() * temperature**2
    got = sparse_kd_loss(student, ids, logp, tail, temperature)
    assert got.item() == pytest.approx(ref.item(), rel=1e-4)
    (grad,), (grad_ref,) = torch.autograd.grad(got, student), torch.autograd.grad(ref, student_ref)
    torch.testing.assert_close(grad.double(), grad_ref.double(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("kind", KINDS)
def test_distillation_temperature_leaves_the_target_where_it_is(temperature, kind):
    """A student equal to the taught distribution is at the loss's minimum whatever T: zero loss, zero
    gradient. T shapes the loss, never what is taught."""
    torch.manual_seed(3)
    n, vocab, k = 6, 30, 4
    teacher = torch.randn(n, vocab) * 3
    ids, logp, tail = teacher_topk(teacher, k, 1.0)
    student = teacher.clone().requires_grad_(True)
    loss = sparse_kd_loss(student, ids, logp, tail, temperature, kind)
    (grad,) = torch.autograd.grad(loss, student)
    assert abs(loss.item()) < 1e-5 and grad.abs().max() < 1e-4
    dense = teacher.clone().requires_grad_(True)
    loss = dense_kd_loss(dense, teacher, temperature, kind)
    (grad,) = torch.autograd.grad(loss, dense)
    assert abs(loss.item()) < 1e-5 and grad.abs().max() < 1e-5


def test_divergences_vanish_for_identical_distributions_and_are_positive_otherwise():
    logp = torch.log_softmax(torch.randn(4, 10), -1)
    other = torch.log_softmax(torch.randn(4, 10), -1)
    for kind in KINDS:
        assert divergence(logp, logp, kind).abs().max() < 1e-6
        assert (divergence(logp, other, kind) > 0).all()


def test_alpha_weights_nll_and_kd_directly():
    nll, kd = torch.tensor(2.0), torch.tensor(10.0)
    assert mixed_loss(nll, kd, 0.0) == nll
    assert mixed_loss(nll, kd, 1.0) == kd
    assert mixed_loss(nll, kd, 0.1).item() == pytest.approx(0.9 * 2 + 0.1 * 10)
