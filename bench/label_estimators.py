"""Stored top-k labels vs sampled labels at equal bytes/token: gradient bias, the students they train, cost.

The teacher is the demo's own (configs/demo.yaml, trained or reused from `.smoothkd/` through the stages,
as `make demo` leaves it), at the temperature its calibration gate passes: what the students are taught.
1. Gradient bias. On the first 1,024 response tokens of the training split, for a student at
   initialisation (logits 0.02·N(0, 1): near uniform, where KD starts) and one near the teacher (its
   log-probs plus N(0, 1) noise: where KD ends), the gradient of the KD loss with respect to the
   student's logits is compared with the dense forward-KL gradient, as ‖E[g] − g_dense‖ / ‖g_dense‖:
   - top-16 labels with their tail bucket, values exact (the compact store's float16 tail and
     top-1-relative values are within 1e-5 nats of these: bench/label_store.py): deterministic, so E[g]
     is g;
   - 24 draws per token, about the same bytes with bit-packed ids, E[g] estimated by the mean over
     10,000 independent draws, so the figure printed is an upper bound (bias plus the sampling noise
     left; the error of one draw is printed next to it).
2. The students. The SFT baseline and a KD student (α = 1, where the labels are all the student learns)
   on each label kind, trained and evaluated as the pipeline does (cached like it): held-out ECE and
   fact-precision consistency per split, one seed (the config's), with the consistency's 95% CI.
3. Cost: one forward + backward of the demo student (batch 16), SFT vs KD on each store, medians of
   interleaved repetitions: each KD step's time over the cross-entropy step.
The last line is `sampled_over_topk_grad_bias=…`, the larger of the two students' ratios.
"""

import statistics
import tempfile
from pathlib import Path

import torch
from _kd_world import ROOT
from _timing import interleaved_times

from smoothkd import stages
from smoothkd.calibration.gate import response_logit_batches
from smoothkd.config import DistillConfig, TrainConfig, load_config
from smoothkd.data.dataset import train_examples
from smoothkd.distill.labels import LabelSpec, LabelStore, bytes_per_token, precompute_labels
from smoothkd.distill.losses import dense_kd_loss, sparse_kd_loss
from smoothkd.distill.sampled import decode, draw, sampled_kd_loss
from smoothkd.distill.trainer import DistillCollator, DistillTrainer, training_arguments
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm
from smoothkd.modeling.tokenizer import load_tokenizer
from smoothkd.stages import (
    check_teacher_calibration,
    evaluate_model,
    prepare_data,
    prepare_teacher,
    prepare_tokenizer,
    train_student,
)

TOKENS, TOP_K, DRAWS, TIMING_REPEATS = 1024, 16, 10000, 15
PER_CALL = 500
SPLITS = ("cnndm", "xsum")


def taught_logp(cfg, teacher_dir: str, tokenizer, examples: list[dict], temperature: float) -> torch.Tensor:
    """The demo teacher's taught log-probs [TOKENS, V] (the gate's temperature, logit scale) in float64."""
    model = load_causal_lm(teacher_dir).eval()
    logits = torch.cat([batch for batch, _ in response_logit_batches(
        model, examples, tokenizer.pad_token_id, cfg.student.train.batch_size, TOKENS,
        cfg.calibration.logit_scale, len(tokenizer))])
    return torch.log_softmax(logits.double() / temperature, -1)


def logit_grad(loss_fn, student: torch.Tensor) -> torch.Tensor:
    s = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(s), s)
    return grad


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((estimate - reference).norm() / reference.norm())


def biases(teacher_logp: torch.Tensor, student: torch.Tensor, samples: int) -> dict[str, float]:
    dense = logit_grad(lambda s: dense_kd_loss(s, teacher_logp), student)
    values, ids = teacher_logp.topk(TOP_K, -1)
    tail = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-12))
    topk_grad = logit_grad(lambda s: sparse_kd_loss(s, ids, values, tail), student)
    # The loss is linear in the draws' counts, so the mean gradient over R independent draws of S equals
    # the gradient of one draw of R·S (i.i.d. draws either way): PER_CALL draws of S are taken per call.
    total = torch.zeros_like(dense)
    for r in range(DRAWS // PER_CALL):
        drawn, _ = draw(teacher_logp, samples * PER_CALL, seed=r)
        _, log_weights, _ = decode(drawn.numpy())
        total += logit_grad(lambda s, ids=drawn, w=log_weights: sampled_kd_loss(s, ids, w), student)
    drawn, _ = draw(teacher_logp, samples, seed=DRAWS)
    _, log_weights, _ = decode(drawn.numpy())
    first = logit_grad(lambda s: sampled_kd_loss(s, drawn, log_weights), student)
    mean = total / (DRAWS // PER_CALL)
    return {"topk": relative_error(topk_grad, dense), "sampled": relative_error(mean, dense),
            "sampled_single_draw": relative_error(first, dense)}


def demo_students(overrides: list[str], data, tokenizer_ref, teacher_dir: str, temperature: float,
                  samples: int) -> dict:
    """Held-out metrics of the SFT baseline and an α = 1 KD student on each label kind (stage-cached),
    taught at the gate's `temperature` as in the pipeline."""
    runs = {"sft": (overrides, 0.0), "kd_topk": (overrides + ["distill.labels=topk"], 1.0),
            "kd_sampled": (overrides + ["distill.labels=sampled", f"distill.samples={samples}"], 1.0)}
    found = {}
    for name, (sets, alpha) in runs.items():
        cfg = load_config(ROOT / "configs/demo.yaml", sets)
        labels = (stages.precompute_labels(cfg, data, tokenizer_ref, teacher_dir, temperature).path
                  if alpha else None)
        student = train_student(cfg, data, tokenizer_ref, alpha, labels, teacher_dir if alpha else None,
                                temperature)
        found[name] = evaluate_model(cfg, student.path, data, progress=False).metrics
    return found


def step_times(student_dir, tokenizer, examples, stores, device, work: Path) -> dict[str, float]:
    """Median seconds of a forward + backward on one batch: SFT and KD on each store."""
    features = [{**e, "label_index": i} for i, e in enumerate(examples)]
    args = training_arguments(TrainConfig(batch_size=len(examples)), work, device.type)
    steps = {}
    for name, (alpha, store, distill) in {"sft": (0.0, None, DistillConfig()), **stores}.items():
        model = load_causal_lm(student_dir).to(device)
        trainer = DistillTrainer(model=model, args=args, distill=distill, alpha=alpha,
                                 data_collator=DistillCollator(tokenizer.pad_token_id, store))
        batch = {k: v.to(device) for k, v in trainer.data_collator(features).items()}

        def step(trainer=trainer, model=model, batch=batch):
            trainer.compute_loss(model, batch).backward()
            model.zero_grad(set_to_none=True)
        step()  # warm-up
        steps[name] = step
    times = interleaved_times(steps, TIMING_REPEATS, device)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    # The demo's own output directory and device, so a `make demo` before this makes every stage a reuse.
    overrides = [f"output_dir={ROOT / '.smoothkd'}"]
    cfg = load_config(ROOT / "configs/demo.yaml", overrides)
    data = prepare_data(cfg)
    tokenizer_ref = prepare_tokenizer(cfg, data)
    tokenizer = load_tokenizer(str(tokenizer_ref))
    teacher_dir = prepare_teacher(cfg, data, tokenizer_ref).path
    # The gate fixes what students are taught (its fitted T with calibration.fit_temperature).
    gate = check_teacher_calibration(cfg, data, teacher_dir, Path(tempfile.mkdtemp(prefix="smoothkd-gate-")))
    if not gate.passed:
        raise SystemExit(gate.message())
    examples = train_examples(tokenizer, data, cfg.student.train)
    vocab = len(tokenizer)
    topk_bytes = bytes_per_token(LabelSpec(top_k=TOP_K), vocab)
    # Equal bytes: the most draws whose bit-packed ids fit in top-k's bytes.
    samples = max(s for s in range(1, 8 * topk_bytes)
                  if bytes_per_token(LabelSpec(labels="sampled", samples=s), vocab) <= topk_bytes)
    sampled_bytes = bytes_per_token(LabelSpec(labels="sampled", samples=samples), vocab)

    teacher = taught_logp(cfg, teacher_dir, tokenizer, examples, gate.temperature)
    topk_mass = float(teacher.topk(TOP_K, -1).values.exp().sum(-1).mean())
    g = torch.Generator().manual_seed(1)
    students = {"init": 0.02 * torch.randn(teacher.shape, generator=g, dtype=torch.float64),
                "near_teacher": teacher + torch.randn(teacher.shape, generator=g, dtype=torch.float64)}
    print(f"teacher=demo tokens={teacher.shape[0]} vocab={vocab} top-{TOP_K} mass={topk_mass:.4f} "
          f"draws_averaged={DRAWS}")
    print(f"bytes_per_token topk(k={TOP_K}, compact)={topk_bytes} sampled(S={samples})={sampled_bytes}")
    found = {}
    for name, student in students.items():
        found[name] = b = biases(teacher, student, samples)
        print(f"student={name}: grad_bias topk={b['topk']:.4f} sampled={b['sampled']:.4f} "
              f"(one draw: {b['sampled_single_draw']:.4f}) sampled_over_topk={b['sampled'] / b['topk']:.3f}",
              flush=True)

    students_found = demo_students(overrides, data, tokenizer_ref, teacher_dir, gate.temperature, samples)
    for name, m in students_found.items():
        consistency = " ".join(
            f"{split}_consistency={m[f'{split}/factual_consistency']:.1f} "
            f"({m[f'{split}/factual_consistency_ci_low']:.1f}-{m[f'{split}/factual_consistency_ci_high']:.1f})"
            for split in SPLITS)
        print(f"demo student={name}: ece={m['general/ece']:.4f} "
              f"overconfidence={m['general/overconfidence']:.4f} {consistency}", flush=True)

    batch = examples[:cfg.student.train.batch_size]
    work = Path(tempfile.mkdtemp(prefix="smoothkd-estimators-"))
    teacher_model = load_causal_lm(teacher_dir)
    stores = {}
    for name, spec, distill in [("kd_topk", LabelSpec(top_k=TOP_K), DistillConfig()),
                                ("kd_sampled", LabelSpec(labels="sampled", samples=samples),
                                 DistillConfig(labels="sampled", samples=samples))]:
        result = precompute_labels(teacher_model, batch, work / name, spec, {"teacher": "demo"},
                                   tokenizer.pad_token_id, progress=False)
        stores[name] = (0.5, LabelStore(result.path), distill)
    student_dir = build_tiny_llama(tokenizer, cfg.student.tiny, work / "student", seed=2)
    median = step_times(student_dir, tokenizer, batch, stores, torch.device("cpu"), work / "w")
    print("median step ms: " + " ".join(f"{k}={v * 1000:.1f}" for k, v in median.items()))
    print(f"kd_topk_over_sft_step_time={median['kd_topk'] / median['sft']:.3f} "
          f"kd_sampled_over_sft_step_time={median['kd_sampled'] / median['sft']:.3f}")
    # The headline is the less favourable of the two students.
    worst = max(b["sampled"] / b["topk"] for b in found.values())
    print(f"sampled_over_topk_grad_bias={worst:.3f}")


if __name__ == "__main__":
    main()
