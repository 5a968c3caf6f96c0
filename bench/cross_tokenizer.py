"""Cross-tokenizer targets against an exact reference: how far the taught distribution is from the truth.

The world: the config's data and run tokenizer (the student's, with whole-entity tokens on the embedded
corpus), and a teacher trained (through the stages, cached like the pipeline's) in a second tokenizer: a
GPT-2-style byte-level BPE trained on the same training split, of another vocabulary size
(`--teacher-vocab`, default 1.5 × `tokenizer.vocab_size`), with no entity tokens and no BOS. The teacher's
distribution is taken at T = 1 and logit scale 1 (the calibration does not change what is compared).

Over the student response positions of the first `--examples` training rows, it prints the method's counts
(`smoothkd.distill.crosstok`): the share of positions aligned to a teacher boundary, the share with an exact
target (≥ 99 % of the teacher's mass reached it one to one: a candidate whose text is exactly one student
token), and the mean teacher mass carried one to one. Then, on `--positions` positions drawn from them
(seeded), the KL(reference ‖ target) of the method's target and of a ULD-only target, in nats per position.

The reference at a student position (student token y at byte c of the response; its anchoring teacher
position predicts the teacher token covering c, which starts at d ≤ c, so the bytes P = text[d:c] are
already written): the teacher's probability, over all of its token sequences, that the student's first
token of the continuation is v, where the student's first token of a text is its longest prefix in the
student's vocabulary. Computed by expanding the teacher's token tree from the anchor: a path's text (after
P, which every path must spell first; paths that leave P are dropped) is continued with an extra teacher
forward pass whenever it is a proper prefix of a longer student token, or has not yet covered P, and is
otherwise resolved to its longest student-token prefix, which receives the path's probability; a teacher
EOS ends the text where it stands. Each student token v so receives the teacher's probability of every
continuation whose longest student-token prefix spells it, summed over every teacher path that spells the
same text; the result is renormalised over the student's candidates (dropped paths removed). Teacher
special tokens are read as the method reads them: EOS ends the text where it stands, another special token
is the student's special token of the same name (else dropped). Paths whose probability falls under
`--prune` (or that reach a depth of 8 tokens) are resolved where they stand, as the method resolves them;
their mass is printed as the reference's unexpanded mass (an upper bound on its own error).

The ULD-only target (Universal Logit Distillation, as TRL's GOLD uses for unshared tokens): the teacher's
anchor distribution sorted by probability and laid onto the student's vocabulary in a student's order of
its tokens. Two orders are printed: the SFT student's (the config's student trained on the same split
through the stages, the order a student brings to ULD) and the reference's own (the most favourable order
there is: a lower bound on ULD's error).
Both targets are smoothed as (1 − 1e-4)·target + 1e-4·uniform before the KL, so a token a target leaves
at zero costs a finite amount.

Run at the demo's size (the default config) or on a smaller one (`--config configs/test/tiny.yaml`); the
last line is `cross_tokenizer_kl_to_exact=…`, the method's mean KL over the sampled positions.
"""

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from smoothkd import stages  # noqa: E402
from smoothkd.config import apply_overrides, load_config, output_root  # noqa: E402
from smoothkd.data.dataset import read_split, train_examples  # noqa: E402
from smoothkd.data.prompts import build_prompt, response_text  # noqa: E402
from smoothkd.distill.crosstok import CrossStats, CrossTokenizer, response_ids, teacher_window  # noqa: E402
from smoothkd.modeling.models import load_causal_lm  # noqa: E402
from smoothkd.modeling.tokenizer import GPT2_SPECIAL_TOKENS, load_tokenizer, train_bpe_tokenizer  # noqa: E402

SMOOTHING = 1e-4
MAX_DEPTH = 8


def teacher_tokenizer(cfg, data_dir: Path, vocab: int) -> Path:
    """The second tokenizer: GPT-2-style byte-level BPE of `vocab` tokens on the training split."""
    out = output_root(cfg) / "bench-cross-tokenizer" / f"gpt2-style-{vocab}-{Path(data_dir).name}"
    if not out.exists():
        texts = (build_prompt(r["instruction"], r["context"], r["category"]) + response_text(r["response"])
                 for r in read_split(data_dir, "train"))
        train_bpe_tokenizer(texts, out, vocab, special_tokens=GPT2_SPECIAL_TOKENS)
    return out


class Reference:
    """The exact reference target (module docstring), with batched extra teacher forward passes."""

    def __init__(self, model, cross: CrossTokenizer, prune: float):
        self.model, self.cross, self.prune = model, cross, prune
        self.extendable = {text[:k] for text in cross.student_bytes if text for k in range(1, len(text))}
        self.unexpanded = 0.0
        self.forwards = 0
        self._needs: dict[tuple[bytes, bytes], torch.Tensor] = {}

    def next_logp(self, contexts: list[list[int]]) -> torch.Tensor:
        """The teacher's next-token log-probs after each context, in one padded batch."""
        width = max(map(len, contexts))
        ids = torch.zeros(len(contexts), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, context in enumerate(contexts):
            ids[row, :len(context)] = torch.tensor(context)
            mask[row, :len(context)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        self.forwards += len(contexts)
        last = mask.sum(-1) - 1
        rows = logits[torch.arange(len(contexts)), last, :self.cross.teacher_vocab]
        return torch.log_softmax(rows.double(), dim=-1)

    def needs_forward(self, written: bytes, left: bytes) -> torch.Tensor:
        """For every teacher id, at a node with `written` bytes and `left` bytes of the prefix still to
        spell: whether its path must be continued (a proper prefix of a longer student token, or not yet
        past the prefix). Cached."""
        key = (written, left)
        if key not in self._needs:
            need = torch.zeros(self.cross.teacher_vocab, dtype=torch.bool)
            for u, raw in enumerate(self.cross.teacher_bytes):
                if raw is None:
                    continue
                if left and left.startswith(raw):
                    need[u] = True
                elif left:
                    need[u] = raw.startswith(left) and written + raw[len(left):] in self.extendable
                else:
                    need[u] = written + raw in self.extendable
            self._needs[key] = need
        return self._needs[key]

    def target(self, context: list[int], anchor_logp: torch.Tensor, prefix: bytes) -> torch.Tensor:
        """Probabilities over the student vocabulary at a position whose teacher context is `context`
        (the anchor's distribution `anchor_logp` given) and whose anchoring token must first spell `prefix`.
        Every node resolves its candidates as the method does (`CrossTokenizer.resolution`) except those
        it continues with an extra forward pass."""
        cross = self.cross
        out = torch.zeros(cross.student_vocab, dtype=torch.float64)
        # A node: (teacher tokens after the context, bytes written after the prefix, prefix left, mass).
        level = [([], b"", prefix, 1.0)]
        logps = [anchor_logp.double()]
        for depth in range(MAX_DEPTH):
            grow = []
            for (path, written, left, mass), logp in zip(level, logps, strict=True):
                probs = logp.exp() * mass
                ids, _ = cross.resolution(written, left)
                need = self.needs_forward(written, left)
                big = need & (probs >= self.prune) if depth + 1 < MAX_DEPTH else torch.zeros_like(need)
                self.unexpanded += float(probs[need & ~big].sum())
                resolved = (ids >= 0) & ~big  # pruned paths are resolved where they stand
                out.index_add_(0, ids[resolved], probs[resolved])
                for u in torch.nonzero(big).flatten().tolist():
                    raw = cross.teacher_bytes[u]
                    if left and left.startswith(raw):
                        grow.append(([*path, u], b"", left[len(raw):], float(probs[u])))
                    else:
                        grow.append(([*path, u], written + raw[len(left):], b"", float(probs[u])))
            if not grow:
                break
            level = grow
            logps = list(self.next_logp([context + path for path, *_ in grow]))
        return out / out.sum()


def kl(reference: torch.Tensor, target: torch.Tensor) -> float:
    """KL(reference ‖ smoothed target) in nats."""
    smoothed = (1 - SMOOTHING) * target + SMOOTHING / target.numel()
    present = reference > 0
    return float((reference[present] * (reference[present].log() - smoothed[present].log())).sum())


def uld_target(anchor_probs: torch.Tensor, order: torch.Tensor, vocab: int) -> torch.Tensor:
    """The teacher's sorted probabilities laid onto student tokens in `order` (most probable first)."""
    ranked = anchor_probs.sort(descending=True).values[:vocab]
    out = torch.zeros(vocab, dtype=torch.float64)
    out[order[:len(ranked)]] = ranked.double()
    return out / out.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--teacher-vocab", type=int, default=None)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--positions", type=int, default=200)
    parser.add_argument("--prune", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    data = stages.prepare_data(cfg)
    run_tok_ref = stages.prepare_tokenizer(cfg, data)
    vocab = args.teacher_vocab or int(cfg.tokenizer.vocab_size * 1.5)
    teacher_tok_ref = teacher_tokenizer(cfg, data, vocab)
    raw = apply_overrides(cfg.model_dump(mode="json"), [f"teacher.tokenizer={teacher_tok_ref}"])
    cfg = type(cfg).model_validate(raw)
    teacher_dir = stages.prepare_teacher(cfg, data, run_tok_ref).path
    sft_dir = stages.train_student(cfg, data, run_tok_ref, alpha=0.0).path
    student_tok, teacher_tok = load_tokenizer(str(run_tok_ref)), load_tokenizer(str(teacher_tok_ref))
    sft = load_causal_lm(sft_dir).eval()
    model = load_causal_lm(teacher_dir).eval()
    cross = CrossTokenizer.from_tokenizers(teacher_tok, student_tok)
    train = cfg.student.train
    window = train.model_copy(update={"max_length": teacher_window(model, train.max_length)})
    examples = cross.pair(train_examples(student_tok, data, train)[:args.examples],
                          train_examples(teacher_tok, data, window)[:args.examples])
    print(f"teacher {teacher_dir}: {len(teacher_tok)}-token GPT-2-style tokenizer; student tokenizer "
          f"{len(student_tok)} tokens; {len(examples)} training examples")

    stats, rows = CrossStats(), []  # rows: (kind of position, SFT student's logits, method target)
    anchors = []
    for example in examples:
        t_input = torch.tensor([example["teacher_input_ids"]])
        with torch.inference_mode():
            logits = model(input_ids=t_input).logits[0, :, :cross.teacher_vocab]
            s_logits = sft(input_ids=torch.tensor([example["input_ids"]])).logits[0, :, :cross.student_vocab]
        t_logp = torch.log_softmax(logits.double(), dim=-1)
        s_ids, t_ids = response_ids(example["labels"]), response_ids(example["teacher_labels"])
        first = len(example["teacher_input_ids"]) - len(t_ids) - 1  # the row predicting response token 0
        s_first = len(example["input_ids"]) - len(s_ids) - 1
        response_logp = t_logp[first:first + len(t_ids)].float()
        targets = cross.targets(response_logp, s_ids, t_ids, stats).double().exp()
        for j, nodes in enumerate(cross.plan(s_ids, t_ids)):
            if nodes is not None:
                kind = "inside a teacher token" if nodes[0].prefix else (
                    "over several teacher tokens" if len(nodes) > 1 else "aligned, one teacher token")
                rows.append((kind, s_logits[s_first + j], targets[j]))
                anchors.append((example["teacher_input_ids"][:first + 1 + nodes[0].row],
                                t_logp[first + nodes[0].row], nodes[0].prefix))
    summary = stats.summary()
    spanning = summary["expanded"] / max(summary["positions"], 1)
    print(f"response positions {summary['positions']}: aligned to a teacher boundary "
          f"{summary['aligned_share']:.3f}, exact target {summary['exact_target_share']:.3f}, teacher mass "
          f"carried exactly {summary['exact_mass_mean']:.3f} per position, observed token over several "
          f"teacher tokens {spanning:.3f}, fallback {summary['fallback_share']:.3f}")

    sample = random.Random(args.seed).sample(range(len(rows)), min(args.positions, len(rows)))
    reference = Reference(model, cross, args.prune)
    method_kl, uld_kl, uld_best, by_kind = [], [], [], {}
    for index in sample:
        kind, student_logits, method = rows[index]
        context, anchor, prefix = anchors[index]
        ref = reference.target(context, anchor, prefix)
        method_kl.append(kl(ref, method))
        by_kind.setdefault(kind, []).append(method_kl[-1])
        order = student_logits.argsort(descending=True)
        uld_kl.append(kl(ref, uld_target(anchor.exp(), order, cross.student_vocab)))
        uld_best.append(kl(ref, uld_target(anchor.exp(), ref.argsort(descending=True), cross.student_vocab)))
    n = max(len(sample), 1)
    print(f"reference on {len(sample)} positions: {reference.forwards} extra teacher forwards, unexpanded "
          f"mass {reference.unexpanded / n:.2e} per position (prune {args.prune:g})")
    print(f"KL(reference || target), nats per position: method {sum(method_kl) / n:.4f} "
          f"(median {sorted(method_kl)[len(method_kl) // 2]:.4f}, max {max(method_kl):.3f}); "
          f"ULD-only {sum(uld_kl) / n:.4f} in the SFT student's order ({sum(uld_best) / n:.4f} in the "
          "reference's own order, its lower bound)")
    print("method by position: " + "; ".join(f"{kind} {sum(v) / len(v):.4f} ({len(v)})"
                                              for kind, v in sorted(by_kind.items())))
    print(f"seconds {time.perf_counter() - start:.0f}")
    print(f"cross_tokenizer_kl_to_exact={sum(method_kl) / n:.4f}")


if __name__ == "__main__":
    main()
