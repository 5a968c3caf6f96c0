"""smoothkd's KD step beside TRL's: the same student, teacher and batch through each trainer.

Variants, one optimiser step each (forward, backward, AdamW; the trainer's own `compute_loss`):
  sft          smoothkd SFT (α = 0, fused head): the floor every KD step is measured against;
  kd_stored    smoothkd KD (α = 1) on stored top-16 labels + tail bucket, fused head, no teacher in memory;
  kd_online    smoothkd KD (α = 1) with the teacher run online, fused heads, full-vocabulary forward KL;
  trl_distill  TRL's DistillationTrainer: forward KL (beta = 0), T = 1, chunked over hidden states;
  trl_gkd      TRL's experimental GKDTrainer: lmbda = 0 (no generation), beta = 0, seq_kd off, full logits.
Both TRL trainers generate on-policy in their own training step (DistillationTrainer always, GKD with
probability lmbda). Here they train on the dataset's responses: DistillationTrainer's `compute_loss` is
handed the batch exactly as its generation step would hand it (prompts left-padded, completions
right-padded, `num_items_in_batch`), with the dataset's responses as the completions; GKD at lmbda = 0
skips generation by itself. What the objectives share and where they differ: tests/test_peers.py, and
`OBJECTIVE` below, which the bench prints.

Shapes: `demo` (configs/demo.yaml's tiny Llamas on the embedded corpus, a batch of 16 of its training
pairs) and `qwen` (bench/kd_memory.py's Qwen2-shaped student at V = 151,936 and a wider teacher, random
weights, 4 × 512 random tokens with a 256-token prompt). Step times are medians of interleaved repetitions
of the smoothkd variants and trl_distill in one subprocess per shape (GKD repeats its steps in a subprocess
of its own: see `main`); peak memory is measured in one subprocess per shape and variant (two steps, then
the peak RSS, or `torch.cuda.max_memory_allocated` on CUDA); every subprocess imports the same modules (TRL
included), so the whole-process figures share one baseline. The stored labels' precompute (teacher
forward + top-k + writing the store, for this batch; median of `--reps` runs) is printed apart, and
amortised over the epochs a run reuses the labels for. Prints a table per shape, then
`smoothkd_over_trl_peak=…` and, last, `smoothkd_over_trl_step_time=…` (kd_stored ÷ trl_distill at
V = 151,936). Without TRL it prints `skipped: …` and exits 0. Run time on one CPU thread: `--shapes demo`
about a minute; the Qwen shape 10+ minutes even with `--quick`, most of it GKD's full-logit steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

# GKDTrainer lives in trl.experimental, which warns on import; the bench says so once in its own output.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
HERE = Path(__file__).resolve().parent
# The bench helpers beside this file and smoothkd itself, whether run as a script or imported by a test.
sys.path[:0] = [str(HERE), str(HERE.parent)]

import kd_memory  # noqa: E402
from _timing import interleaved_times, training_step  # noqa: E402

from smoothkd.config import DistillConfig, TrainConfig  # noqa: E402
from smoothkd.data.tokenize import IGNORE_INDEX  # noqa: E402
from smoothkd.distill.labels import LabelSpec, LabelStore, precompute_labels  # noqa: E402
from smoothkd.distill.trainer import DistillCollator, DistillTrainer, training_arguments  # noqa: E402
from smoothkd.modeling.models import load_causal_lm  # noqa: E402

VARIANTS = ("sft", "kd_stored", "kd_online", "trl_distill", "trl_gkd")
TRL_VARIANTS = ("trl_distill", "trl_gkd")
SHAPES = ("demo", "qwen")
TOP_K = 16
EPOCHS = 3  # the paper's; a stored-label run computes its labels once for all of them
# The Qwen-shaped teacher: twice the student's width (kd_memory.py's student has hidden 64, 2 layers).
QWEN_TEACHER = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 256}
OBJECTIVE = """\
objective: smoothkd α = 1 and both TRL trainers minimise the mean over response tokens of
  KL(teacher ‖ student) at T = 1 over the full vocabulary (kd_stored: on the teacher's top-16 ids + one
  tail bucket instead): a sum over tokens divided by the batch's response-token count (TRL:
  num_items_in_batch; GKD: 'batchmean' over unmasked tokens), not a mean per sequence.
  Where they differ: neither TRL trainer has an NLL term (smoothkd's α < 1 mixes one in); at T ≠ 1
  DistillationTrainer divides both sides by T without smoothkd's T² factor, and GKD's compute_loss ignores
  its temperature (it samples with it only); DistillationTrainer left-pads prompts, so its sequences are
  max prompt + max response long (the shifted positions leave rotary attention unchanged); both TRL configs
  default to gradient checkpointing (off here, as in smoothkd) and DistillationTrainer to bf16 (fp32 here,
  as every variant: compute_loss runs outside the Trainer's autocast)."""


def trl_inputs(batch: dict[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A collated batch as DistillationTrainer's generation step hands it to `compute_loss`.

    Prompts left-padded, the dataset's responses as completions right-padded, and the response-token
    count that TRL divides the summed divergence by.
    """
    prompts, completions = [], []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        n = int(mask.sum())
        start = int((labels[:n] != IGNORE_INDEX).nonzero()[0])  # the response follows the prompt
        prompts.append(ids[:start])
        completions.append(ids[start:n])

    def padded(rows, value, side):
        return pad_sequence(rows, batch_first=True, padding_value=value, padding_side=side)

    completion_mask = padded([torch.ones_like(c) for c in completions], 0, "right")
    return {"prompt_ids": padded(prompts, pad_token_id, "left"),
            "prompt_mask": padded([torch.ones_like(p) for p in prompts], 0, "left"),
            "completion_ids": padded(completions, pad_token_id, "right"),
            "completion_mask": completion_mask,
            "num_items_in_batch": completion_mask.sum()}


def distillation_trainer(student, teacher, tokenizer, output_dir: Path, batch_size: int,
                         temperature: float = 1.0):
    """TRL's DistillationTrainer set to smoothkd's objective: forward KL (beta = 0) at `temperature`."""
    from trl import DistillationConfig, DistillationTrainer

    device = next(student.parameters()).device
    args = DistillationConfig(output_dir=str(output_dir), beta=0.0, temperature=temperature,
                              per_device_train_batch_size=batch_size, bf16=False,
                              activation_checkpointing=False, report_to="none", use_cpu=device.type == "cpu")
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=tokenizer)


def gkd_trainer(student, teacher, tokenizer, output_dir: Path, batch_size: int, examples: list[dict],
                temperature: float = 1.0):
    """TRL's experimental GKDTrainer on the dataset's responses (lmbda = 0, no seq_kd), forward KL (beta 0).

    `examples` (encoded pairs) are its train_dataset, which its SFTTrainer base requires; the bench hands
    the collated batch to `compute_loss` itself, so they are never read.
    """
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    device = next(student.parameters()).device
    args = GKDConfig(output_dir=str(output_dir), lmbda=0.0, beta=0.0, seq_kd=False, temperature=temperature,
                     per_device_train_batch_size=batch_size, bf16=False, activation_checkpointing=False,
                     report_to="none", use_cpu=device.type == "cpu")
    return GKDTrainer(model=student, teacher_model=teacher, args=args, processing_class=tokenizer,
                      train_dataset=Dataset.from_list(examples))


def stub_tokenizer():
    """A three-token tokenizer for the random-token shape: TRL reads only its pad and eos ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_world(shape: str, root: Path) -> dict:
    """Save the shape's student, teacher, tokenizer and batch under `root`; what a child process reads."""
    root.mkdir(parents=True, exist_ok=True)
    if shape == "demo":
        from _kd_world import demo_world

        cfg, tokenizer, teacher_dir, student_dir, examples, _ = demo_world()
        batch_size, chunk = cfg.student.train.batch_size, DistillConfig().chunk_tokens
        examples = examples[:batch_size]
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        student_dir, teacher_dir = root / "student", root / "teacher"
        kd_memory.student(torch.device("cpu")).save_pretrained(student_dir)
        torch.manual_seed(1)
        Qwen2ForCausalLM(Qwen2Config(vocab_size=kd_memory.VOCAB, tie_word_embeddings=True,
                                     **QWEN_TEACHER)).save_pretrained(teacher_dir)
        tokenizer, batch_size, chunk = stub_tokenizer(), kd_memory.BATCH, kd_memory.CHUNK
        examples = kd_memory.examples(torch.Generator().manual_seed(0))
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "examples.json").write_text(json.dumps(examples))
    return {"student": str(student_dir), "teacher": str(teacher_dir), "tokenizer": str(root / "tokenizer"),
            "batch_size": batch_size, "chunk_tokens": chunk, "pad_token_id": tokenizer.pad_token_id,
            "tokens": sum(len(e["input_ids"]) for e in examples),
            "response_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in examples)}


def time_precompute(world: dict, root: Path, device: torch.device, reps: int) -> tuple[float, str]:
    """Median seconds to precompute and store this batch's top-k labels (a fresh store each time), and the
    path of the last store."""
    teacher = load_causal_lm(world["teacher"]).to(device)
    examples = json.loads((root / "examples.json").read_text())
    seconds, path = [], ""
    for rep in range(reps):
        start = time.perf_counter()
        result = precompute_labels(teacher, examples, root / f"labels-{rep}", LabelSpec(top_k=TOP_K),
                                   {"teacher": "bench-peers"}, world["pad_token_id"], progress=False)
        seconds.append(time.perf_counter() - start)
        path = result.path
    return statistics.median(seconds), path


def make_variant(name: str, world: dict, root: Path, device: torch.device):
    """(one-step callable, trainer, model, batch) for one variant on the shape saved under `root`."""
    from transformers import AutoTokenizer

    model = load_causal_lm(world["student"]).to(device).train()
    teacher = None if name in ("sft", "kd_stored") else load_causal_lm(world["teacher"]).to(device)
    examples = json.loads((root / "examples.json").read_text())
    features = [{**e, "label_index": i} for i, e in enumerate(examples)]
    store = LabelStore(world["labels"]) if name == "kd_stored" else None
    collated = DistillCollator(world["pad_token_id"], store)(features)
    work = root / "work" / name
    if name in TRL_VARIANTS:
        tokenizer = AutoTokenizer.from_pretrained(world["tokenizer"])
        if name == "trl_distill":
            trainer = distillation_trainer(model, teacher, tokenizer, work, world["batch_size"])
            batch = trl_inputs(collated, world["pad_token_id"])
        else:
            trainer = gkd_trainer(model, teacher, tokenizer, work, world["batch_size"], examples)
            batch = collated
    else:
        args = training_arguments(TrainConfig(batch_size=world["batch_size"]), work, device.type)
        distill = DistillConfig(chunk_tokens=world["chunk_tokens"])
        trainer = DistillTrainer(model=model, args=args, distill=distill, alpha=0.0 if name == "sft" else 1.0,
                                 teacher=teacher)
        batch = collated
    batch = {k: v.to(device) for k, v in batch.items()}
    return training_step(trainer, model, batch), trainer, model, batch


def child_memory(name: str, world: dict, root: Path, device: torch.device) -> dict:
    step, trainer, *_ = make_variant(name, world, root, device)
    memory = kd_memory.step_memory(step, device)
    if getattr(trainer, "fused_off", None) is not None:
        raise SystemExit(f"{name}: the fused path did not run: {trainer.fused_off}")
    return memory


def child_times(names: list[str], world: dict, root: Path, device: torch.device, reps: int) -> dict:
    steps = {name: make_variant(name, world, root, device)[0] for name in names}
    # The warm-up step's loss is each objective's value on the same starting weights, side by side.
    losses = {name: float(step()) for name, step in steps.items()}
    times = interleaved_times(steps, reps, device)
    return {"median": {name: statistics.median(t) for name, t in times.items()}, "loss": losses}


def available_variants() -> tuple[list[str], list[str]]:
    """(variants this environment can run, why any is left out)."""
    if importlib.util.find_spec("trl") is None:
        return [], ["trl is not installed (pip install -e '.[peers]')"]
    names, notes = list(VARIANTS), ["trl_gkd comes from trl.experimental (an API TRL marks unstable)"]
    if importlib.util.find_spec("trl.experimental.gkd") is None:
        names.remove("trl_gkd")
        notes = ["trl_gkd: this TRL no longer ships trl.experimental.gkd"]
    return names, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved timing repetitions (default 5)")
    parser.add_argument("--quick", action="store_true", help="3 repetitions, a check that everything runs")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    reps = 3 if args.quick else args.reps
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names, notes = available_variants()
    if args.child:
        import trl  # noqa: F401  every child carries the same imports, so whole-process peaks compare

        root = Path(args.root)
        world = json.loads((root / "world.json").read_text())
        result = (child_times(args.child.split(":")[1].split(","), world, root, device, reps)
                  if args.child.startswith("times:") else child_memory(args.child, world, root, device))
        print(json.dumps(result))
        return
    if not names:
        print(f"skipped: {notes[0]}")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # saving and loading the models would draw bars between the tables

    work = Path(tempfile.mkdtemp(prefix="smoothkd-peers-"))
    unit = "cuda_max_allocated" if device.type == "cuda" else "peak_rss (whole process)"
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device={name} torch={torch.__version__} threads={torch.get_num_threads()} reps={reps} "
          f"memory={unit} top_k={TOP_K} epochs={EPOCHS}")
    print(OBJECTIVE)
    for note in notes:
        print(f"note: {note}")
    results = {}
    for shape in args.shapes:
        root = work / shape
        world = build_world(shape, root)
        world["precompute_s"], world["labels"] = time_precompute(world, root, device, reps)
        (root / "world.json").write_text(json.dumps(world))
        memory = {name: kd_memory.run_child(__file__, "--child", name, "--root", str(root)) for name in names}
        # GKD's step forms both models' full logits (GBs at V = 151,936); interleaved, the variant after it
        # would pay for faulting that memory back in, so GKD repeats its own steps in a process of its own.
        lean = [name for name in names if name != "trl_gkd"]
        groups = [lean, ["trl_gkd"]] if "trl_gkd" in names else [lean]
        timed = {"median": {}, "loss": {}}
        for group in groups:
            part = kd_memory.run_child(__file__, "--child", "times:" + ",".join(group), "--root", str(root),
                                       "--reps", str(reps))
            for key in timed:
                timed[key].update(part[key])
        results[shape] = (world, memory, timed)
        print_shape(shape, world, memory, timed)
    if "qwen" not in results:
        return
    world, memory, timed = results["qwen"]
    median = timed["median"]
    print(f"smoothkd_over_trl_peak={memory['kd_stored']['peak'] / memory['trl_distill']['peak']:.3f}")
    print(f"smoothkd_over_trl_step_time={median['kd_stored'] / median['trl_distill']:.3f}")


def print_shape(shape: str, world: dict, memory: dict, timed: dict) -> None:
    """The shape's table: step time, ratio to SFT, peak memory, the objective's value at the start."""
    median, loss = timed["median"], timed["loss"]
    print(f"\n{shape}: batch {world['batch_size']}, {world['tokens']} tokens ({world['response_tokens']} "
          f"response targets), chunk_tokens {world['chunk_tokens']}")
    print("| variant | step ms | ÷ sft | ÷ trl_distill | peak MiB | above pre-step MiB | loss at step 0 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, m in memory.items():
        print(f"| {name} | {median[name] * 1000:.1f} | {median[name] / median['sft']:.2f} | "
              f"{median[name] / median['trl_distill']:.2f} | {m['peak'] / 2**20:.0f} | "
              f"{(m['peak'] - m['before']) / 2**20:.0f} | {loss[name]:.5f} |")
    per_step = world["precompute_s"]  # one batch of labels: one step's worth over a single epoch
    amortised = median["kd_stored"] + per_step / EPOCHS
    print(f"{shape}: label precompute for this batch {per_step * 1000:.1f} ms: per step "
          f"{per_step * 1000:.1f} ms over 1 epoch, {per_step / EPOCHS * 1000:.1f} ms over {EPOCHS}; "
          f"kd_stored with it amortised over {EPOCHS} epochs {amortised * 1000:.1f} ms "
          f"(÷ trl_distill {amortised / median['trl_distill']:.2f})")
    for name in TRL_VARIANTS:
        if name in loss:
            print(f"{shape}: objective check: {name} loss ÷ kd_online loss at step 0 = "
                  f"{loss[name] / loss['kd_online']:.6f}")
    above = {name: m["peak"] - m["before"] for name, m in memory.items()}
    # A step that stays under the high-water mark its set-up left has nothing above it: no ratio then.
    above_ratio = f"{above['kd_stored'] / above['trl_distill']:.3f}" if above["trl_distill"] > 0 else "n/a"
    print(f"{shape}: kd_stored ÷ trl_distill: step {median['kd_stored'] / median['trl_distill']:.3f}, "
          f"peak {memory['kd_stored']['peak'] / memory['trl_distill']['peak']:.3f}, above pre-step "
          f"{above_ratio}; kd_online ÷ trl_distill: step "
          f"{median['kd_online'] / median['trl_distill']:.3f}, peak "
          f"{memory['kd_online']['peak'] / memory['trl_distill']['peak']:.3f}")


if __name__ == "__main__":
    main()
