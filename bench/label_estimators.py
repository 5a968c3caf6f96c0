"""Gradient bias of stored top-k labels vs sampled labels at equal bytes/token, on the demo teacher.

Teacher: the demo's trained teacher (cached under .smoothkd, trained first if absent; `label_store.py`
shares it). Tokens: the response tokens of the first training examples, up to 1,024. For a student at
its initialisation (the demo student, random weights: where KD starts) and a student near the teacher
(the teacher's logits plus N(0, 1) noise: where KD ends), the gradient of the KD loss with respect to
the student's logits is compared with the dense forward-KL gradient, as the relative error
‖E[g] − g_dense‖ / ‖g_dense‖ over all tokens:
- top-16, compact encoding (48 B/token at the demo's 1,024-token vocabulary), read back from a real store:
  deterministic, so E[g] is g;
- 24 sampled draws per token (48 B/token), E[g] estimated by the mean over R independent draws, so the
  printed figure is an upper bound (bias plus the sampling noise left after R draws; the single-draw error
  is printed next to it).
Then one training step (forward, backward) on the demo student, SFT vs KD on top-k and on sampled labels,
medians of interleaved repetitions: the overhead of each over cross-entropy. The last line is
`sampled_over_topk_grad_bias=…` (student at initialisation).
"""

import statistics
import tempfile
from pathlib import Path

import torch
from _kd_world import ROOT
from _timing import interleaved_times

from smoothkd.config import DistillConfig, TrainConfig, load_config
from smoothkd.data.tokenize import CausalLMCollator
from smoothkd.distill.labels import LabelSpec, LabelStore, precompute_labels
from smoothkd.distill.losses import dense_kd_loss, sparse_kd_loss
from smoothkd.distill.sampled import decode, draw, sampled_kd_loss
from smoothkd.distill.trainer import DistillCollator, DistillTrainer, training_arguments
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm, response_logits
from smoothkd.modeling.tokenizer import load_tokenizer
from smoothkd.stages import _train_examples, prepare_data, prepare_teacher, prepare_tokenizer

N_EXAMPLES, MAX_TOKENS, DRAWS, TIMING_REPEATS = 16, 1024, 1000, 15


@torch.no_grad()
def logits_of(model, examples, pad_id) -> torch.Tensor:
    logits, _ = response_logits(model, CausalLMCollator(pad_id)(examples))
    return logits.double()[:MAX_TOKENS]


def logit_grad(loss_fn, student: torch.Tensor) -> torch.Tensor:
    s = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(s), s)
    return grad


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((estimate - reference).norm() / reference.norm())


def biases(teacher: torch.Tensor, student: torch.Tensor, topk: tuple, samples: int, temperature: float
           ) -> dict[str, float]:
    dense = logit_grad(lambda s: dense_kd_loss(s, teacher, temperature), student)
    ids, logp, tail = topk
    topk_grad = logit_grad(lambda s: sparse_kd_loss(s, ids, logp, tail, temperature), student)
    teacher_logp = torch.log_softmax(teacher / temperature, -1)
    total, first = torch.zeros_like(dense), None
    for r in range(DRAWS):
        drawn, _ = draw(teacher_logp, samples, seed=r)
        _, log_weights, _ = decode(drawn.numpy())
        grad = logit_grad(lambda s, ids=drawn, w=log_weights: sampled_kd_loss(s, ids, w, temperature),
                          student)
        total += grad
        first = grad if first is None else first
    return {"topk": relative_error(topk_grad, dense), "sampled": relative_error(total / DRAWS, dense),
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
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs/demo.yaml", [f"output_dir={ROOT / '.smoothkd'}", "device=cpu"])
    data = prepare_data(cfg)
    tokenizer_dir = prepare_tokenizer(cfg, data)
    teacher_path = prepare_teacher(cfg, data, tokenizer_dir).path
    tokenizer = load_tokenizer(str(tokenizer_dir))
    examples = _train_examples(tokenizer, data, cfg.student.train)[:N_EXAMPLES]
    pad, d = tokenizer.pad_token_id, cfg.distill
    work = Path(tempfile.mkdtemp(prefix="smoothkd-estimators-"))
    teacher_model = load_causal_lm(teacher_path)
    specs = {"topk": LabelSpec(top_k=d.top_k, temperature=d.temperature),
             "sampled": LabelSpec(labels="sampled", samples=d.samples, temperature=d.temperature)}
    identity = {"teacher": teacher_path}
    results = {name: precompute_labels(teacher_model, examples, work / "labels", spec, identity, pad, 16,
                                       progress=False) for name, spec in specs.items()}
    store = {name: LabelStore(r.path) for name, r in results.items()}
    teacher = logits_of(teacher_model, examples, pad)
    n = teacher.shape[0]
    ids, logp, tail = store["topk"].all_tokens()
    topk = (ids[:n], logp[:n].double(), tail[:n].double())
    student_dir = build_tiny_llama(tokenizer, cfg.student.tiny, work / "student", seed=2)
    students = {"init": logits_of(load_causal_lm(student_dir), examples, pad),
                "near_teacher": teacher + torch.randn_like(teacher)}
    print(f"teacher={teacher_path} tokens={n} vocab={teacher.shape[-1]} temperature={d.temperature} "
          f"draws_averaged={DRAWS}")
    print(f"bytes_per_token topk(k={d.top_k}, compact)={results['topk'].bytes_per_token} "
          f"sampled(S={d.samples})={results['sampled'].bytes_per_token}; teacher mass covered: "
          f"top-k {results['topk'].topk_mass:.4f}, distinct draws {results['sampled'].topk_mass:.4f}")
    found = {}
    for name, student in students.items():
        found[name] = biases(teacher, student, topk, d.samples, d.temperature)
        b = found[name]
        print(f"student={name}: grad_bias topk={b['topk']:.4f} sampled={b['sampled']:.4f} "
              f"(one draw: {b['sampled_single_draw']:.4f}) sampled_over_topk={b['sampled'] / b['topk']:.3f}")
    median = step_times(student_dir, tokenizer, examples,
                        {"kd_topk": (0.5, store["topk"], DistillConfig()),
                         "kd_sampled": (0.5, store["sampled"], DistillConfig(labels="sampled"))},
                        torch.device("cpu"), work / "w")
    print("median step ms: " + " ".join(f"{k}={v * 1000:.1f}" for k, v in median.items()))
    print(f"kd_topk_over_sft_step_time={median['kd_topk'] / median['sft']:.3f} "
          f"kd_sampled_over_sft_step_time={median['kd_sampled'] / median['sft']:.3f}")
    print(f"sampled_over_topk_grad_bias={found['init']['sampled'] / found['init']['topk']:.3f}")


if __name__ == "__main__":
    main()
