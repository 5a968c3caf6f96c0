"""Gradient bias of stored top-k labels vs sampled labels at equal bytes/token, and their step overhead.

Teacher distributions: Zipf-shaped, p(rank r) ∝ r^(−s) over the demo's 1,024-token vocabulary, a random
order of tokens per position and a per-position exponent s jittered ×exp(0.3·N(0, 1)) around a value
fitted so the mean top-16 mass is 0.956, what the demo teacher measures (bench/label_store.py). (Training
the demo teacher for this was out of reach on the loaded machine of the session that wrote this.) For a
student at initialisation (logits 0.02·N(0, 1): near uniform, where KD starts) and one near the teacher
(its log-probs plus N(0, 1) noise: where KD ends), the gradient of the KD loss with respect to the
student's logits is compared with the dense forward-KL gradient, as ‖E[g] − g_dense‖ / ‖g_dense‖ over
1,024 positions:
- top-16 labels with their tail bucket, values exact (compact's 49 B/token at 16-bit ids quantises
  them, so this
  is top-k's bias at its best): deterministic, so E[g] is g;
- 24 draws per position (48 B/token with 16-bit ids), E[g] estimated by the mean over R independent draws,
  so the figure printed is an upper bound (bias plus the sampling noise left after R draws; the error of
  one draw is printed next to it).
Then a forward + backward on the demo student (batch 16; labels from a random demo-shaped teacher, which
changes nothing in the cost), SFT vs KD on top-k and on sampled labels, medians of interleaved
repetitions: each KD step's time over the cross-entropy step. The last line is
`sampled_over_topk_grad_bias=…`, the larger of the two students' ratios.
"""

import statistics
import tempfile
from pathlib import Path

import torch
from _kd_world import ROOT
from _timing import interleaved_times

from smoothkd.config import DistillConfig, TrainConfig, load_config
from smoothkd.data.dataset import train_examples
from smoothkd.distill.labels import LabelSpec, LabelStore, bytes_per_token, precompute_labels
from smoothkd.distill.losses import dense_kd_loss, sparse_kd_loss
from smoothkd.distill.sampled import decode, draw, sampled_kd_loss
from smoothkd.distill.trainer import DistillCollator, DistillTrainer, training_arguments
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm
from smoothkd.modeling.tokenizer import load_tokenizer
from smoothkd.stages import prepare_data, prepare_tokenizer

VOCAB, TOKENS, TOP_K, SAMPLES, DRAWS, TIMING_REPEATS = 1024, 1024, 16, 24, 10000, 15
TOPK_MASS = 0.956
PER_CALL = 500


def zipf_teacher(exponent: float, generator: torch.Generator) -> torch.Tensor:
    """Teacher log-probs [TOKENS, VOCAB]: Zipf over ranks, jittered exponent, tokens in a random order."""
    jitter = torch.exp(0.3 * torch.randn(TOKENS, 1, generator=generator, dtype=torch.float64))
    ranks = torch.arange(1, VOCAB + 1, dtype=torch.float64)
    by_rank = torch.log_softmax(-exponent * jitter * ranks.log(), -1)
    order = torch.rand(TOKENS, VOCAB, generator=generator).argsort(-1)
    return torch.empty_like(by_rank).scatter_(-1, order, by_rank)


def fitted_teacher() -> torch.Tensor:
    """The Zipf teacher whose mean top-k mass is TOPK_MASS (bisection on the exponent, one fixed seed)."""
    low, high = 0.5, 4.0
    for _ in range(30):
        mid = (low + high) / 2
        mass = zipf_teacher(mid, torch.Generator().manual_seed(0)).topk(TOP_K, -1).values.exp().sum(-1).mean()
        low, high = (mid, high) if mass < TOPK_MASS else (low, mid)
    return zipf_teacher((low + high) / 2, torch.Generator().manual_seed(0))


def logit_grad(loss_fn, student: torch.Tensor) -> torch.Tensor:
    s = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(s), s)
    return grad


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((estimate - reference).norm() / reference.norm())


def biases(teacher_logp: torch.Tensor, student: torch.Tensor) -> dict[str, float]:
    dense = logit_grad(lambda s: dense_kd_loss(s, teacher_logp), student)
    values, ids = teacher_logp.topk(TOP_K, -1)
    tail = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-12))
    topk_grad = logit_grad(lambda s: sparse_kd_loss(s, ids, values, tail), student)
    # The loss is linear in the draws' counts, so the mean gradient over R independent draws of S equals
    # the gradient of one draw of R·S (i.i.d. draws either way): PER_CALL draws of S are taken per call.
    total = torch.zeros_like(dense)
    for r in range(DRAWS // PER_CALL):
        drawn, _ = draw(teacher_logp, SAMPLES * PER_CALL, seed=r)
        _, log_weights, _ = decode(drawn.numpy())
        total += logit_grad(lambda s, ids=drawn, w=log_weights: sampled_kd_loss(s, ids, w), student)
    drawn, _ = draw(teacher_logp, SAMPLES, seed=DRAWS)
    _, log_weights, _ = decode(drawn.numpy())
    first = logit_grad(lambda s: sampled_kd_loss(s, drawn, log_weights), student)
    mean = total / (DRAWS // PER_CALL)
    return {"topk": relative_error(topk_grad, dense), "sampled": relative_error(mean, dense),
            "sampled_single_draw": relative_error(first, dense)}


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
    teacher = fitted_teacher()
    topk_mass = float(teacher.topk(TOP_K, -1).values.exp().sum(-1).mean())
    g = torch.Generator().manual_seed(1)
    students = {"init": 0.02 * torch.randn(TOKENS, VOCAB, generator=g, dtype=torch.float64),
                "near_teacher": teacher + torch.randn(TOKENS, VOCAB, generator=g, dtype=torch.float64)}
    topk_bytes = bytes_per_token(LabelSpec(top_k=TOP_K), VOCAB)
    sampled_bytes = bytes_per_token(LabelSpec(labels="sampled", samples=SAMPLES), VOCAB)
    print(f"teacher=zipf tokens={TOKENS} vocab={VOCAB} top-{TOP_K} mass={topk_mass:.3f} "
          f"draws_averaged={DRAWS}")
    print(f"bytes_per_token topk(k={TOP_K}, compact)={topk_bytes} sampled(S={SAMPLES})={sampled_bytes}")
    found = {}
    for name, student in students.items():
        found[name] = b = biases(teacher, student)
        print(f"student={name}: grad_bias topk={b['topk']:.4f} sampled={b['sampled']:.4f} "
              f"(one draw: {b['sampled_single_draw']:.4f}) sampled_over_topk={b['sampled'] / b['topk']:.3f}",
              flush=True)

    cfg = load_config(ROOT / "configs/demo.yaml", [f"output_dir={ROOT / '.smoothkd'}", "device=cpu"])
    data = prepare_data(cfg)
    tokenizer = load_tokenizer(str(prepare_tokenizer(cfg, data)))
    examples = train_examples(tokenizer, data, cfg.student.train)[:cfg.student.train.batch_size]
    work = Path(tempfile.mkdtemp(prefix="smoothkd-estimators-"))
    teacher_model = load_causal_lm(build_tiny_llama(tokenizer, cfg.teacher.tiny, work / "teacher", seed=1))
    stores = {}
    for name, spec, distill in [("kd_topk", LabelSpec(top_k=TOP_K), DistillConfig()),
                                ("kd_sampled", LabelSpec(labels="sampled", samples=SAMPLES),
                                 DistillConfig(labels="sampled", samples=SAMPLES))]:
        result = precompute_labels(teacher_model, examples, work / "labels", spec, {"teacher": "random"},
                                   tokenizer.pad_token_id, progress=False)
        stores[name] = (0.5, LabelStore(result.path), distill)
    student_dir = build_tiny_llama(tokenizer, cfg.student.tiny, work / "student", seed=2)
    median = step_times(student_dir, tokenizer, examples, stores, torch.device("cpu"), work / "w")
    print("median step ms: " + " ".join(f"{k}={v * 1000:.1f}" for k, v in median.items()))
    print(f"kd_topk_over_sft_step_time={median['kd_topk'] / median['sft']:.3f} "
          f"kd_sampled_over_sft_step_time={median['kd_sampled'] / median['sft']:.3f}")
    # The headline is the less favourable of the two students.
    worst = max(b["sampled"] / b["topk"] for b in found.values())
    print(f"sampled_over_topk_grad_bias={worst:.3f}")


if __name__ == "__main__":
    main()
