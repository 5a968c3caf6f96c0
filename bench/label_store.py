"""Soft-label store on the demo teacher: size, captured mass, fidelity, precompute speed.

For k ∈ {8, 32, 128} and the default k: bytes/token, mean top-k mass, and mean KL(full teacher ‖
reconstruction), where the reconstruction spreads the tail mass evenly over the other tokens. At the default
k, the compact store against the exact one on the same k + 1 outcomes: mean KL(exact ‖ compact) per token
and the relative error of the stored tail where the exact tail is ≥ 1e-4 (median and worst). Then the
bytes/token of the compact encoding at Qwen's V = 151,936 (measured on encoded random labels, ids checked
to round-trip), and label precompute throughput ÷ plain teacher forward throughput over the same batches
(median of interleaved runs). Uses the demo's cached teacher under .smoothkd (trains it first if absent).
Prints `bytes_per_token=…` for the default k last.
"""

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smoothkd.config import load_config  # noqa: E402
from smoothkd.data.dataset import train_examples  # noqa: E402
from smoothkd.data.tokenize import CausalLMCollator  # noqa: E402
from smoothkd.distill.labels import (  # noqa: E402
    LabelSpec,
    LabelStore,
    TopK,
    decode_labels,
    encode_labels,
    precompute_labels,
    teacher_topk,
)
from smoothkd.modeling.models import load_causal_lm, resolve_device, response_logits  # noqa: E402
from smoothkd.modeling.tokenizer import load_tokenizer  # noqa: E402
from smoothkd.stages import prepare_data, prepare_teacher, prepare_tokenizer  # noqa: E402

N_EXAMPLES = 512
BATCH = 16
QWEN_VOCAB = 151_936


@torch.inference_mode()
def full_teacher_logp(model, examples, pad_id):
    collate, rows = CausalLMCollator(pad_id), []
    for b in range(0, len(examples), BATCH):
        logits, _ = response_logits(model, collate(examples[b:b + BATCH]))
        rows.append(torch.log_softmax(logits.float(), -1))
    return torch.cat(rows)


def reconstruction_kl(full: torch.Tensor, labels: TopK) -> float:
    vocab, k = full.shape[-1], labels.ids.shape[-1]
    recon = (labels.tail - math.log(vocab - k)).unsqueeze(-1).expand(-1, vocab).clone()
    recon.scatter_(-1, labels.ids, labels.logp)
    p = full.exp()
    return float((p * (full - recon)).sum(-1).mean())


def support_fidelity(exact: TopK, compact: TopK) -> tuple[float, float, float, float]:
    """(mean KL(exact ‖ compact) on the k + 1 outcomes, median and worst relative tail error where the
    exact tail ≥ 1e-4, share of tokens with such a tail), in float64."""
    if not torch.equal(exact.ids, compact.ids):
        raise SystemExit("compact and exact stores disagree on the top-k ids")
    p = torch.cat([exact.logp, exact.tail[:, None]], -1).double().exp()
    q = torch.cat([compact.logp, compact.tail[:, None]], -1).double().exp()
    kl = torch.where(p > 0, p * (p.log() - q.log()), 0.0).sum(-1).mean()
    big = p[:, -1] >= 1e-4
    rel = (q[big, -1] - p[big, -1]).abs() / p[big, -1]
    return float(kl), float(rel.median()), float(rel.max()), float(big.double().mean())


def qwen_bytes_per_token(k: int) -> float:
    """Stored bytes/token of compact top-k labels at V = 151,936, measured on encoded random labels."""
    gen = torch.Generator().manual_seed(0)
    spec = LabelSpec(top_k=k)
    labels = teacher_topk(torch.randn(256, QWEN_VOCAB, generator=gen) * 4, spec)
    labels.ids[0] = torch.arange(QWEN_VOCAB - k, QWEN_VOCAB)
    arrays = encode_labels(labels, spec, QWEN_VOCAB)
    back = decode_labels(arrays["ids"], arrays["logp"], arrays["tail"], k, QWEN_VOCAB)
    if not torch.equal(back.ids, labels.ids):
        raise SystemExit("bit-packed ids did not round-trip at V = 151,936")
    return sum(a.nbytes for a in arrays.values()) / len(labels.ids)


def plain_forward_seconds(model, examples, pad_id) -> float:
    collate = CausalLMCollator(pad_id)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(examples), BATCH):
            batch = collate(examples[b:b + BATCH])
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return time.perf_counter() - start


def main() -> None:
    cfg = load_config(ROOT / "configs/demo.yaml", [f"output_dir={ROOT / '.smoothkd'}"])
    data = prepare_data(cfg)
    tokenizer_dir = prepare_tokenizer(cfg, data)
    teacher = prepare_teacher(cfg, data, tokenizer_dir)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    model = load_causal_lm(teacher.path).to(resolve_device("cpu"))
    examples = train_examples(tokenizer, data, cfg.student.train)[:N_EXAMPLES]
    pad = tokenizer.pad_token_id
    full = full_teacher_logp(model, examples, pad)
    default_k = cfg.distill.top_k
    with tempfile.TemporaryDirectory() as tmp:
        def store(k, encoding="compact"):
            spec = LabelSpec(top_k=k, encoding=encoding, shard_size=128)
            return precompute_labels(model, examples, Path(tmp) / "labels", spec, {"teacher": teacher.path},
                                     pad, BATCH, progress=False)

        for k in sorted({8, 32, 128, default_k}):
            result = store(k)
            labels = LabelStore(result.path).all_tokens()
            print(f"k={k}: bytes_per_token={result.bytes_per_token} topk_mass={result.topk_mass:.4f} "
                  f"kl_full_vs_reconstructed={reconstruction_kl(full, labels):.5f}")
            if k == default_k:
                default_bytes, compact = result.bytes_per_token, labels
        exact = LabelStore(store(default_k, "exact").path).all_tokens()
        kl, rel_median, rel_max, share = support_fidelity(exact, compact)
        for name, labels in (("exact", exact), ("compact", compact)):
            tail = labels.tail.exp()
            print(f"k={default_k} {name}: tail mean {float(tail.mean()):.5f} max {float(tail.max()):.5f}; "
                  f"share of tokens with tail < 1e-6 {float((tail < 1e-6).double().mean()):.4f}")
        print(f"tokens_with_tail_ge_1e-4={share:.4f} tail_rel_err_median={rel_median:.5f} "
              f"tail_rel_err_max={rel_max:.5f}")
        print(f"compact_kl_vs_exact={kl:.3g}")
        ratios = []
        spec = LabelSpec(top_k=default_k, shard_size=128)
        for rep in range(3):
            plain = plain_forward_seconds(model, examples, pad)
            start = time.perf_counter()
            precompute_labels(model, examples, Path(tmp) / f"speed{rep}", spec, {"teacher": teacher.path},
                              pad, BATCH, progress=False)
            ratios.append(plain / (time.perf_counter() - start))
    tokens = full.shape[0]
    print(f"tokens={tokens} examples={len(examples)} vocab={full.shape[-1]} default_k={default_k}")
    print(f"precompute_over_forward_tokens_per_second={statistics.median(ratios):.3f}")
    print(f"bytes_per_token_v152k={qwen_bytes_per_token(default_k):g}")
    print(f"bytes_per_token={default_bytes}")


if __name__ == "__main__":
    main()
