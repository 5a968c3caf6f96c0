"""KD step time with stored labels ÷ SFT step time, same student, same batch, same run.

Also the online-teacher ratio and the KD/SFT memory ratio (peak CUDA memory on a GPU; on CPU the bytes
autograd keeps for backward, the part of peak memory the loss adds). Step times are medians over
interleaved repetitions so machine noise hits both sides alike. Prints `kd_over_sft_step_time=…` last.
"""

import statistics

import torch
from _kd_world import demo_world
from _timing import interleaved_times, training_step

from smoothkd.config import DistillConfig, TrainConfig
from smoothkd.distill.labels import LabelSpec, LabelStore, precompute_labels
from smoothkd.distill.trainer import DistillCollator, DistillTrainer, training_arguments
from smoothkd.modeling.models import load_causal_lm, resolve_device

REPEATS = 30



def saved_bytes(trainer, model, batch) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.compute_loss(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return total


def main() -> None:
    cfg, tokenizer, teacher_dir, student_dir, examples, out = demo_world()
    device = resolve_device("auto")
    batch_size = cfg.student.train.batch_size
    examples = examples[:batch_size]
    spec = LabelSpec(top_k=cfg.distill.top_k)
    labels = precompute_labels(load_causal_lm(teacher_dir).to(device), examples, out / "labels", spec,
                               {"teacher": "bench"}, tokenizer.pad_token_id, progress=False)
    store = LabelStore(labels.path)
    args = training_arguments(TrainConfig(batch_size=batch_size), out / "w", device.type)
    features = [{**e, "label_index": i} for i, e in enumerate(examples)]
    variants = {}
    for name, alpha, store_, teacher in [("sft", 0.0, None, None), ("kd", 0.5, store, None),
                                         ("online", 0.5, None, load_causal_lm(teacher_dir).to(device))]:
        model = load_causal_lm(student_dir).to(device)
        trainer = DistillTrainer(model=model, args=args, distill=DistillConfig(), alpha=alpha,
                                 teacher=teacher,
                                 data_collator=DistillCollator(tokenizer.pad_token_id, store_))
        batch = {k: v.to(device) for k, v in trainer.data_collator(features).items()}
        variants[name] = (training_step(trainer, model, batch), trainer, model, batch)

    for _ in range(3):  # warm-up
        for step, *_ in variants.values():
            step()
    times = interleaved_times({name: step for name, (step, *_) in variants.items()}, REPEATS, device)
    median = {name: statistics.median(t) for name, t in times.items()}

    memory = {}
    for name, (step, trainer, model, batch) in variants.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step()
            memory[name] = torch.cuda.max_memory_allocated()
        else:
            memory[name] = saved_bytes(trainer, model, batch)
    print(f"device={device.type} batch={batch_size} tokens={sum(len(e['input_ids']) for e in examples)} "
          f"top_k={spec.top_k} repeats={REPEATS}")
    print("median step seconds: " + ", ".join(f"{k}={v * 1000:.1f}ms" for k, v in median.items()))
    print(f"online_over_sft_step_time={median['online'] / median['sft']:.3f}")
    print(f"kd_over_sft_peak_memory={memory['kd'] / memory['sft']:.3f}")
    print(f"kd_over_sft_step_time={median['kd'] / median['sft']:.3f}")


if __name__ == "__main__":
    main()
