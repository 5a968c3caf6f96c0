"""Peak memory of a training step at Qwen's vocabulary (V = 151,936): SFT unfused vs KD with the fused head.

A Qwen2-shaped student with a small hidden size (64, 2 layers; random init, nothing downloaded) on a batch
of 4 × 512 random tokens whose first 256 positions are a masked prompt (B·T = 2048, 1,020 response
targets), stored top-16 labels with a tail bucket, `distill.chunk_tokens = 256`. Each configuration
(sft/kd × unfused/fused) runs in its own subprocess: two optimiser steps (forward, backward, AdamW), then
the process's peak RSS (`VmHWM`, which includes the interpreter, torch and the model: the whole
process, as a machine's memory limit sees it) and the part of it above the RSS before the first step.
Step times are medians of interleaved repetitions of all four configurations in one further subprocess.
On CUDA the figures are `torch.cuda.max_memory_allocated` instead. Prints
`kd_fused_over_sft_unfused_peak=…` last, the step-time ratio on the line before.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _timing import interleaved_times, training_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smoothkd.config import DistillConfig, TrainConfig  # noqa: E402
from smoothkd.data.tokenize import IGNORE_INDEX, CausalLMCollator  # noqa: E402
from smoothkd.distill.trainer import DistillTrainer, training_arguments  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 151936, 64, 2, 4, 2, 128
BATCH, SEQ, PROMPT, TOP_K, CHUNK = 4, 512, 256, 16, 256
REPEATS = 5
CONFIGS = {"sft_unfused": (0.0, False), "kd_unfused": (0.5, False), "sft_fused": (0.0, True),
           "kd_fused": (0.5, True)}


def student(device: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         intermediate_size=INTERMEDIATE, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(config).train()


def examples(g: torch.Generator) -> list[dict[str, list[int]]]:
    """BATCH encoded pairs of SEQ random tokens, the first PROMPT of each a prompt masked out of the loss."""
    rows = []
    for _ in range(BATCH):
        ids = torch.randint(1, VOCAB, (SEQ,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * PROMPT + ids[PROMPT:]})
    return rows


def batch(device: torch.device) -> dict[str, torch.Tensor]:
    """Random tokens with a masked prompt, and top-k teacher labels (distinct ids, a proper k + 1 support)."""
    g = torch.Generator().manual_seed(0)
    out = CausalLMCollator(pad_token_id=0)(examples(g))
    n = int((out["labels"][:, 1:] != IGNORE_INDEX).sum())
    # k distinct ids per token: start + j·stride for j < k, with stride < V / k so no two ids coincide mod V.
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, VOCAB // TOP_K, (n, 1), generator=g)
    kd_ids = (start + stride * torch.arange(TOP_K)) % VOCAB
    support = torch.log_softmax(torch.randn(n, TOP_K + 1, generator=g) * 2, -1)
    out.update(kd_ids=kd_ids, kd_logp=support[:, :TOP_K], kd_tail=support[:, TOP_K])
    return {k: v.to(device) for k, v in out.items()}


def make_step(name: str, device: torch.device, work: Path):
    alpha, fused = CONFIGS[name]
    model = student(device)
    trainer = DistillTrainer(model=model, args=training_arguments(TrainConfig(batch_size=BATCH), work,
                                                                  device.type),
                             distill=DistillConfig(chunk_tokens=CHUNK), alpha=alpha, fused_loss=fused)
    return training_step(trainer, model, batch(device)), trainer


def rss_bytes() -> int:
    """This process's peak RSS so far (Linux's VmHWM).

    Not `getrusage`'s ru_maxrss: Linux carries that high-water mark from the parent through fork and exec, so
    a child started by a process that had grown larger would report the parent's peak.
    """
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def step_memory(step: Callable[[], object], device: torch.device) -> dict:
    """Two calls of the training step `step`: the memory before them and the peak after them ({"before",
    "peak"}: the process's RSS, on CUDA `torch.cuda` allocations)."""
    before = torch.cuda.memory_allocated() if device.type == "cuda" else rss_bytes()
    for _ in range(2):  # the second step runs with the optimiser state in place
        step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss_bytes()
    return {"peak": peak, "before": before}


def child_memory(name: str, device: torch.device, work: Path) -> dict:
    step, trainer = make_step(name, device, work)
    memory = step_memory(step, device)
    fused = CONFIGS[name][1]
    if fused and trainer.fused_off is not None:
        raise SystemExit(f"{name}: the fused path did not run: {trainer.fused_off}")
    return memory


def child_times(device: torch.device, work: Path) -> dict:
    steps = {name: make_step(name, device, work / name)[0] for name in CONFIGS}
    for step in steps.values():  # warm-up
        step()
    times = interleaved_times(steps, REPEATS, device)
    return {name: statistics.median(t) for name, t in times.items()}


def run_child(script: str, *args: str) -> dict:
    """Run the bench `script` with `args` in a fresh interpreter and return the JSON of its last output line;
    SystemExit with the end of its stderr when it fails."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=[*CONFIGS, "times"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="smoothkd-kd-memory-"))
    if args.child == "times":
        print(json.dumps(child_times(device, work)))
        return
    if args.child:
        print(json.dumps(child_memory(args.child, device, work)))
        return
    memory = {name: run_child(__file__, "--child", name) for name in CONFIGS}
    median = run_child(__file__, "--child", "times")
    unit = "cuda_max_allocated" if device.type == "cuda" else "peak_rss"
    print(f"device={torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} vocab={VOCAB} "
          f"hidden={HIDDEN} layers={LAYERS} batch={BATCH}x{SEQ} prompt={PROMPT} top_k={TOP_K} "
          f"chunk_tokens={CHUNK} repeats={REPEATS} memory={unit}")
    for name, m in memory.items():
        print(f"{name}: peak={m['peak'] / 2**20:.0f} MiB (above the pre-step {m['before'] / 2**20:.0f} MiB: "
              f"{(m['peak'] - m['before']) / 2**20:.0f} MiB) step={median[name] * 1000:.0f} ms")
    above = {name: m["peak"] - m["before"] for name, m in memory.items()}
    print(f"kd_fused_over_kd_unfused_peak={memory['kd_fused']['peak'] / memory['kd_unfused']['peak']:.3f} "
          f"kd_fused_over_sft_unfused_step_peak_increment={above['kd_fused'] / above['sft_unfused']:.3f}")
    print(f"sft_fused_over_sft_unfused_step_time={median['sft_fused'] / median['sft_unfused']:.3f}")
    print(f"kd_fused_over_sft_unfused_step_time={median['kd_fused'] / median['sft_unfused']:.3f}")
    print(f"kd_fused_over_sft_unfused_peak={memory['kd_fused']['peak'] / memory['sft_unfused']['peak']:.3f}")


if __name__ == "__main__":
    main()
