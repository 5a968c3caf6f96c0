"""Label encodings: the compact store keeps the teacher's mass on confident tokens, ids round-trip."""

import math

import numpy as np
import pytest
import torch

from smoothkd.distill.labels import (
    LabelSpec,
    TopK,
    bytes_per_token,
    decode_labels,
    encode_labels,
    id_bits,
    pack_ids,
    teacher_topk,
    unpack_ids,
)
from smoothkd.distill.losses import log1mexp

K = 16


def confident_logits(n: int = 4000, vocab: int = 2048, seed: int = 0) -> torch.Tensor:
    """Next-token logits of a confident teacher: top-1 mass median ~0.99, top-16 tails ~0.05 %–20 %."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=gen)
    winners = torch.randint(0, vocab, (n,), generator=gen)
    logits[torch.arange(n), winners] += torch.empty(n).uniform_(9, 16, generator=gen)
    return logits


def compact_round_trip(labels: TopK, vocab: int) -> TopK:
    arrays = encode_labels(labels, LabelSpec(top_k=K), vocab)
    return decode_labels(arrays["ids"], arrays["logp"], arrays["tail"], K, vocab)


def format2_round_trip(labels: TopK, vocab: int) -> TopK:
    """The format-2 scheme, kept here only to show the fidelity check catches it: absolute log-probs
    quantised to uint8 in 1/16-nat steps, the tail implied by 1 − Σ p_topk, then renormalised."""
    quantised = torch.clamp(torch.round(-labels.logp / (1 / 16)), 0, 255)
    values = -quantised / 16
    mass = torch.logsumexp(values, -1)
    tail = log1mexp(mass)
    norm = torch.logaddexp(mass, tail).clamp(min=0.0)
    return TopK(labels.ids, values - norm.unsqueeze(-1), tail - norm)


def fidelity(exact: TopK, stored: TopK) -> tuple[float, float]:
    """(mean KL(exact ‖ stored) over the k + 1 outcomes, worst relative tail error where tail ≥ 1e-4),
    computed densely in float64."""
    assert torch.equal(exact.ids, stored.ids)
    p = torch.cat([exact.logp, exact.tail[:, None]], -1).double().exp()
    q = torch.cat([stored.logp, stored.tail[:, None]], -1).double().exp()
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    tail_p, tail_q = p[:, -1], q[:, -1]
    big = tail_p >= 1e-4
    return float(kl), float(((tail_q[big] - tail_p[big]).abs() / tail_p[big]).max())


@pytest.fixture(scope="module")
def confident():
    logits = confident_logits()
    labels = teacher_topk(logits, LabelSpec(top_k=K))
    tail = labels.tail.exp()
    top1 = labels.logp[:, 0].exp()
    # The regime of the bug: confident tops, small but real tails.
    assert float(top1.median()) > 0.95 and float(tail.median()) > 1e-3
    assert float((tail >= 1e-4).float().mean()) > 0.9
    return logits, labels


def test_compact_store_keeps_the_tail_of_confident_tokens(confident):
    logits, labels = confident
    kl, tail_error = fidelity(labels, compact_round_trip(labels, logits.shape[-1]))
    assert kl <= 0.002 and tail_error <= 0.10, (kl, tail_error)
    # The same bounds fail the format-2 scheme: they catch the bug they are here for.
    assert fidelity(labels, format2_round_trip(labels, logits.shape[-1]))[1] > 0.10


def test_compact_store_is_no_sharper_than_the_teacher_where_format2_was(confident):
    """On the tokens whose real tail (≥ 1e-4) the format-2 scheme erased (< 1e-6), making the target sharper
    than the teacher, the compact store keeps the teacher's top-1 mass and tail."""
    logits, labels = confident
    vocab = logits.shape[-1]
    old, stored = format2_round_trip(labels, vocab), compact_round_trip(labels, vocab)
    erased = (old.tail.exp() < 1e-6) & (labels.tail.exp() >= 1e-4)
    assert float(erased.float().mean()) > 0.3  # many such tokens in this teacher
    teacher_tail, stored_tail = labels.tail.exp()[erased], stored.tail.exp()[erased]
    assert float(((stored_tail - teacher_tail).abs() / teacher_tail).max()) <= 0.10
    teacher_top1, stored_top1 = labels.logp[erased, 0].exp(), stored.logp[erased, 0].exp()
    torch.testing.assert_close(stored_top1, teacher_top1, atol=1e-3, rtol=0)
    assert float(old.logp[erased, 0].exp().mean() - teacher_top1.mean()) > 1e-3  # where format 2 sharpened


def test_exact_tail_survives_where_one_minus_sum_would_cancel():
    logits = torch.zeros(2, 1000)
    logits[:, 0] = 25.0  # tail ≈ 999·e^-25 ≈ 1.4e-8, below float32's resolution near 1
    labels = teacher_topk(logits, LabelSpec(top_k=4))
    want = math.log(996) - float(torch.logsumexp(logits[0].double(), -1))
    assert float(labels.tail[0]) == pytest.approx(want, rel=1e-5)


def test_decoded_compact_labels_are_a_distribution(confident):
    logits, labels = confident
    stored = compact_round_trip(labels, logits.shape[-1])
    total = torch.cat([stored.logp, stored.tail[:, None]], -1).double().exp().sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)


def test_complete_support_has_no_tail():
    logits = torch.randn(5, 16)
    labels = teacher_topk(logits, LabelSpec(top_k=16))
    stored = compact_round_trip(labels, 16)
    assert torch.isneginf(stored.tail).all()
    torch.testing.assert_close(stored.logp.exp().sum(-1), torch.ones(5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("vocab", [2, 300, 2048, 65_536, 65_537, 151_936, 2**24 + 3])
def test_bit_packed_ids_round_trip_exactly(vocab):
    rng = np.random.default_rng(vocab)
    ids = rng.integers(0, vocab, size=(257, K))
    ids[0, :] = vocab - 1
    ids[1, :] = 0
    ids[2, ::2] = vocab - 1
    bits = id_bits(vocab)
    assert 2 ** (bits - 1) < vocab <= 2**bits or vocab <= 2
    packed = pack_ids(ids, bits)
    assert packed.dtype == np.uint8 and packed.shape == (257, math.ceil(K * bits / 8))
    np.testing.assert_array_equal(unpack_ids(packed, K, bits), ids)


def test_qwen_vocabulary_fits_64_bytes_per_token_as_stored():
    vocab = 151_936
    gen = torch.Generator().manual_seed(1)
    labels = teacher_topk(torch.randn(64, vocab, generator=gen) * 4, LabelSpec(top_k=K))
    labels.ids[0] = torch.arange(vocab - K, vocab)  # the largest ids too
    arrays = encode_labels(labels, LabelSpec(top_k=K), vocab)
    stored = sum(a.nbytes for a in arrays.values()) / 64
    assert id_bits(vocab) == 18 and stored == bytes_per_token(LabelSpec(top_k=K), vocab) <= 64
    back = decode_labels(arrays["ids"], arrays["logp"], arrays["tail"], K, vocab)
    assert torch.equal(back.ids, labels.ids)
