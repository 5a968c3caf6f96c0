"""KD at Qwen2.5 shapes on one GPU: label precompute throughput, KD step ÷ SFT step, peak memory.

A Qwen2.5-0.5B-shaped student and a 1.5B-shaped teacher (the published shapes, randomly initialised from
local configs: nothing is downloaded) on random tokens, batch 8 × 1024 with the first 512 positions a
masked prompt. It measures
- teacher tokens/s: a plain bf16 forward vs `precompute_labels` (top-16, compact: the forward plus top-k,
  encoding and writing the shards);
- the median step time of a KD step on stored labels and of an SFT step (forward, backward, AdamW),
  interleaved after warm-up with the device synchronised, the student in fp32 weights under bf16
  autocast as `train.mixed_precision: bf16` trains it;
- the peak CUDA memory of one KD and one SFT step.
The last line is `gpu_kd_over_sft_step_time=<ratio>`. Without CUDA it prints `skipped: no CUDA device` and
exits 0: a skip is no failure, so a CPU machine can run every bench. `--tiny` runs the same code on a tiny
Qwen2 shape on whatever device is present, to check the script without a GPU.
"""

import argparse
import gc
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from _timing import interleaved_times, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoothkd.config import DistillConfig, TrainConfig  # noqa: E402
from smoothkd.data.tokenize import IGNORE_INDEX, CausalLMCollator  # noqa: E402
from smoothkd.distill.labels import LabelSpec, LabelStore, precompute_labels  # noqa: E402
from smoothkd.distill.trainer import DistillCollator, DistillTrainer, training_arguments  # noqa: E402

VOCAB = 151936
QWEN = {  # hidden, layers, heads, kv heads, intermediate (Qwen2.5 config.json)
    "0.5B": (896, 24, 14, 2, 4864),
    "1.5B": (1536, 28, 12, 2, 8960),
}
FULL = {"student": QWEN["0.5B"], "teacher": QWEN["1.5B"], "vocab": VOCAB, "batch": 8, "seq": 1024,
        "prompt": 512, "examples": 128, "repeats": 10}
TINY = {"student": (64, 2, 4, 2, 128), "teacher": (96, 2, 4, 2, 192), "vocab": 1000, "batch": 2, "seq": 64,
        "prompt": 32, "examples": 8, "repeats": 3}
WARMUP = 3


def qwen2(shape, vocab: int, device: torch.device, dtype: torch.dtype):
    """A randomly initialised Qwen2 causal LM of the given shape, built directly on `device`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads, kv_heads, intermediate = shape
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=intermediate, tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1_000_000.0)
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(config).to(dtype)


def random_examples(n: int, seq: int, prompt: int, vocab: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (seq,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def teacher_throughput(teacher, examples, p, device, out: Path) -> tuple[float, float]:
    """(plain forward tokens/s, precompute_labels tokens/s), both over the same input tokens."""
    collate = CausalLMCollator(pad_token_id=0)
    batches = [collate(examples[i:i + p["batch"]]) for i in range(0, len(examples), p["batch"])]

    @torch.inference_mode()
    def forward_all():
        for b in batches:
            teacher(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))

    forward_all()  # warm-up
    tokens = len(examples) * p["seq"]
    forward = tokens / timed(forward_all, device)
    spec = LabelSpec(top_k=16, encoding="compact", shard_size=64)
    precompute_labels(teacher, examples[:p["batch"]], out / "warmup", spec, {"teacher": "bench"}, 0,
                      batch_size=p["batch"], progress=False)
    seconds = timed(lambda: precompute_labels(teacher, examples, out / "labels", spec, {"teacher": "bench"},
                                              0, batch_size=p["batch"], progress=False), device)
    return forward, tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny Qwen2 shape on any device (checks the script)")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return
    p = TINY if args.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(tempfile.mkdtemp(prefix="smoothkd-gpu-kd-"))
    examples = random_examples(p["examples"], p["seq"], p["prompt"], p["vocab"])

    teacher = qwen2(p["teacher"], p["vocab"], device, torch.bfloat16).eval()
    forward_tps, precompute_tps = teacher_throughput(teacher, examples, p, device, out)
    store = LabelStore(next((out / "labels").iterdir()))
    del teacher
    if device.type == "cuda":
        torch.cuda.empty_cache()

    batch_rows = [{**e, "label_index": i} for i, e in enumerate(examples[:p["batch"]])]
    train_args = training_arguments(TrainConfig(batch_size=p["batch"], mixed_precision="bf16"), out / "w",
                                    device.type)

    def make_step(alpha: float):
        """One optimiser step of a fresh student: SFT (α = 0) or KD on the stored labels."""
        student = qwen2(p["student"], p["vocab"], device, torch.float32).train()
        trainer = DistillTrainer(model=student, args=train_args, distill=DistillConfig(), alpha=alpha,
                                 data_collator=DistillCollator(0, store if alpha else None))
        batch = {k: v.to(device) for k, v in trainer.data_collator(batch_rows).items()}
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = trainer.compute_loss(student, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    variants = {"sft": 0.0, "kd": 0.5}
    steps = {name: make_step(alpha) for name, alpha in variants.items()}
    for _ in range(WARMUP):
        for step in steps.values():
            step()
    times = interleaved_times(steps, p["repeats"], device)
    median = {name: statistics.median(t) for name, t in times.items()}
    del steps, step

    peak = {}  # one student at a time, after a first step has created its optimiser state
    for name, alpha in variants.items() if device.type == "cuda" else ():
        gc.collect()
        torch.cuda.empty_cache()
        step = make_step(alpha)
        step()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak[name] = torch.cuda.max_memory_allocated()
        del step
    tokens = p["batch"] * p["seq"]
    print(f"device={torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} "
          f"student={p['student']} teacher={p['teacher']} vocab={p['vocab']} batch={p['batch']}x{p['seq']} "
          f"prompt={p['prompt']} repeats={p['repeats']}")
    print(f"teacher_forward_tokens_per_s={forward_tps:.0f} "
          f"label_precompute_tokens_per_s={precompute_tps:.0f} "
          f"precompute_over_forward_time={forward_tps / precompute_tps:.3f}")
    print(f"step_ms sft={median['sft'] * 1000:.1f} kd={median['kd'] * 1000:.1f} "
          f"kd_tokens_per_s={tokens / median['kd']:.0f}")
    if peak:
        print(f"peak_memory_gib sft={peak['sft'] / 2**30:.2f} kd={peak['kd'] / 2**30:.2f} "
              f"kd_over_sft_peak_memory={peak['kd'] / peak['sft']:.3f}")
    print(f"gpu_kd_over_sft_step_time={median['kd'] / median['sft']:.3f}")


if __name__ == "__main__":
    main()
