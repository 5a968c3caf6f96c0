"""Soft-label store on the demo teacher: size, captured mass, reconstruction error, precompute speed.

For k ∈ {8, 32, 128} and the default k: bytes/token, mean top-k mass, and mean KL(full teacher ‖
reconstruction), where the reconstruction spreads the tail mass evenly over the other tokens. Then label
precompute throughput ÷ plain teacher forward throughput over the same batches (median of interleaved
runs). Uses the demo's cached teacher under .smoothkd (trains it first if absent). Prints
`bytes_per_token=…` for the default k last.
"""

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
from smoothkd.distill.labels import LabelSpec, LabelStore, precompute_labels  # noqa: E402
from smoothkd.modeling.models import load_causal_lm, resolve_device, response_logits  # noqa: E402
from smoothkd.modeling.tokenizer import load_tokenizer  # noqa: E402
from smoothkd.stages import prepare_data, prepare_teacher, prepare_tokenizer  # noqa: E402

N_EXAMPLES = 512
BATCH = 16


@torch.inference_mode()
def full_teacher_logp(model, examples, pad_id):
    collate, rows = CausalLMCollator(pad_id), []
    for b in range(0, len(examples), BATCH):
        logits, _ = response_logits(model, collate(examples[b:b + BATCH]))
        rows.append(torch.log_softmax(logits.float(), -1))
    return torch.cat(rows)


def reconstruction_kl(full: torch.Tensor, store: LabelStore) -> float:
    ids, logp, tail = store.all_tokens()
    vocab, k = full.shape[-1], ids.shape[-1]
    recon = (tail - torch.log(torch.tensor(float(vocab - k)))).unsqueeze(-1).expand(-1, vocab).clone()
    recon.scatter_(-1, ids, logp)
    p = full.exp()
    return float((p * (full - recon)).sum(-1).mean())


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
        for k in sorted({8, 32, 128, default_k}):
            spec = LabelSpec(top_k=k, shard_size=128)
            result = precompute_labels(model, examples, Path(tmp) / "labels", spec, {"teacher": teacher.path},
                                       pad, BATCH, progress=False)
            print(f"k={k}: bytes_per_token={result.bytes_per_token} topk_mass={result.topk_mass:.4f} "
                  f"kl_full_vs_reconstructed={reconstruction_kl(full, LabelStore(result.path)):.5f}")
            if k == default_k:
                default_bytes = result.bytes_per_token
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
    print(f"bytes_per_token={default_bytes}")


if __name__ == "__main__":
    main()
