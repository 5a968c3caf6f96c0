"""Distillation across tokenizers: the teacher's next-token distribution carried onto the student's tokens.

Teacher and student read the same example, each in its own tokenization and with its own special tokens
(`encode_pair` on each side: a BOS on one side only is prompt context and shifts nothing here). Both
tokenize the response apart from the prompt, so within it every token starts at a byte offset of the
response's UTF-8 text, on either side (`token_bytes`; bytes, not characters: a byte-level token may hold
half of a multi-byte character such as "é" or "€"). EOS is an empty token at the end of the text.

The target at a student response position (the student predicts its token y, bytes s, at byte c; end e):

1. Anchor. The teacher position that predicts the teacher token covering byte c (starting at d ≤ c).
   d = c: the position is *aligned*, the teacher's next-token distribution given the same text. d < c:
   the student boundary lies inside a teacher token and the bytes P = text[d:c] are already written; the
   teacher's candidates are restricted to those whose bytes begin with P and go past it, renormalised,
   each standing for its remainder after P (one token of lookahead: teacher paths with a boundary inside
   P are left out).
2. Resolution. A candidate whose text is b goes to `longest(b)`, the student token with the longest text
   that b begins with: a student token with the same text (exact, one to one; the same id first, so
   identical vocabularies map every id to itself), or, for a longer teacher token, the student token its
   text begins with. Teacher EOS goes to student EOS, a teacher special token to the student's special
   token of the same name; other special tokens, and text no student token begins, are dropped.
3. The observed path. Where the teacher token z that the text continues with ends strictly inside s (one
   student token over several teacher ones, e.g. a whole-entity token), z's mass is not resolved at once:
   it moves on to the next teacher position of the same forward pass, whose candidates u stand for
   text[c:end of z] + bytes(u) and are resolved as in 2, until the observed path reaches e. The observed
   student token so receives the teacher's likelihood of spelling it along the teacher's tokenization (as
   in chunk-likelihood matching), and every alternative met on the way goes to the student token it spells.
   No extra teacher forward passes.
   A candidate other than the observed one whose text is a proper prefix of a student token that no
   single teacher token spells (a whole-entity " 24 percent" after a teacher " 24") would be continued by
   the teacher in more tokens: it is continued with the teacher's distribution at the next position of the
   pass (after the observed token, its sibling: numbers are followed by the same words), each continuation
   resolved as in 2, and on through the following positions while its text stays open (up to
   `CONTINUE_DEPTH` levels, for paths of probability ≥ `CONTINUE_MIN`). With identical
   vocabularies no such student token exists, so nothing is continued.
4. Fallback. A student position whose teacher positions lie past the teacher's (truncated) window gets a
   one-hot target on its observed token (the KD term is then its NLL); counted in `CrossStats.fallback`.
   The teacher's window (`teacher_window`) is up to twice the student's `max_length` in teacher tokens,
   within the teacher's positions, and `CrossTokenizer.pair` trims it to the student's text, so a teacher
   whose tokenizer spells the text in more tokens still covers the student's window.

Dropped mass is renormalised away. With identical tokenizers every position is aligned, every candidate is
its own student token and no path is expanded: the target is the teacher's distribution itself.

What it approximates: the teacher's probability that the student's first token of the continuation is v,
reading the student's tokenizer as taking the longest vocabulary prefix of the text. A candidate that is a
proper prefix of longer student tokens (teacher " th" where the student has " the") is resolved at its own
text instead of being continued with extra teacher forwards; `bench/cross_tokenizer.py` measures that error
against the fully expanded reference.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field

import torch

from smoothkd.data.tokenize import IGNORE_INDEX

# Bumped when the target construction changes: part of every cross-tokenizer label store's key.
METHOD_VERSION = 1
# A target counts as exact when at least this share of the teacher's mass reached it one to one.
EXACT_SHARE = 0.99
# Candidates below this probability are resolved where they stand, never continued (step 3): their share
# of the error is small and each continuation costs a pass over the teacher's vocabulary.
CONTINUE_MIN = 1e-3
CONTINUE_DEPTH = 4


@dataclass
class Node:
    """One teacher position a target reads: its row among the example's teacher response positions, the
    response bytes written since the student boundary (`written`) or still to be matched inside the
    anchoring teacher token (`prefix`), and the observed teacher token carried on to the next node."""

    row: int
    written: bytes = b""
    prefix: bytes = b""
    carry: int | None = None


@dataclass
class CrossStats:
    """Counts over student response positions: aligned to a teacher boundary, exact (≥ EXACT_SHARE of the
    mass one to one), one-hot fallbacks, and the summed teacher mass carried one to one."""

    positions: int = 0
    aligned: int = 0
    exact_targets: int = 0
    fallback: int = 0
    exact_mass: float = 0.0
    expanded: int = 0  # positions whose observed token spans several teacher tokens

    def add(self, other: CrossStats) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def summary(self) -> dict:
        n = max(self.positions, 1)
        return {**asdict(self), "aligned_share": self.aligned / n,
                "exact_target_share": self.exact_targets / n, "exact_mass_mean": self.exact_mass / n,
                "fallback_share": self.fallback / n}


def response_ids(labels: list[int]) -> list[int]:
    """The response tokens of an encoded example, in order (the targets `select_response` keeps)."""
    return [label for label in labels[1:] if label != IGNORE_INDEX]


def response_pairs(examples: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(student, teacher) response ids of paired examples (`CrossTokenizer.pair`)."""
    return [(response_ids(e["labels"]), response_ids(e["teacher_labels"])) for e in examples]


def teacher_window(model, max_length: int) -> int:
    """The teacher's `max_length` beside a student's: twice it (another tokenizer may need more tokens for
    the same text), within the teacher's positions."""
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return min(2 * max_length, positions) if positions else 2 * max_length


def teacher_view(examples: list[dict]) -> list[dict]:
    """The teacher's encodings of paired examples, as the collator takes them."""
    return [{"input_ids": e["teacher_input_ids"], "labels": e["teacher_labels"]} for e in examples]


@dataclass
class CrossTokenizer:
    """The map between two vocabularies, given each id's bytes (None: special) and the special tokens by
    name (`{name: id}`, EOS under "eos")."""

    teacher_bytes: list[bytes | None]
    student_bytes: list[bytes | None]
    teacher_special: dict[str, int]
    student_special: dict[str, int]
    _index: dict[bytes, int] = field(init=False, repr=False)
    _cache: dict[tuple[bytes, bytes], tuple] = field(init=False, repr=False)

    def __post_init__(self):
        self._index = {}
        for idx, text in enumerate(self.student_bytes):
            if text:
                self._index.setdefault(text, idx)
        self._longest = max(map(len, self._index), default=0)
        self._cache = {}
        # Texts the teacher would go on spelling: proper prefixes of student tokens no teacher token spells.
        spelled = {text for text in self.teacher_bytes if text}
        self._open = {text[:k] for text in self._index if text not in spelled for k in range(1, len(text))}

    @classmethod
    def from_tokenizers(cls, teacher, student) -> CrossTokenizer:
        """The map between two HF tokenizers (their special tokens named by content, EOS by role)."""
        from smoothkd.modeling.tokenizer import token_bytes

        def special(tok) -> dict[str, int]:
            named = {tok.convert_ids_to_tokens(i): i for i in tok.all_special_ids if i < len(tok)}
            return {**named, "eos": tok.eos_token_id}

        return cls(token_bytes(teacher), token_bytes(student), special(teacher), special(student))

    @property
    def teacher_vocab(self) -> int:
        return len(self.teacher_bytes)

    @property
    def student_vocab(self) -> int:
        return len(self.student_bytes)

    def pair(self, student: list[dict], teacher: list[dict]) -> list[dict]:
        """Student encodings with the teacher's encoding of the same rows beside them (`teacher_*` keys),
        the teacher's response cut after the token that covers the student's last response byte (and its
        EOS, when the student's window ends with one): positions no student target reads cost nothing."""
        if len(student) != len(teacher):
            raise ValueError(f"{len(student)} student but {len(teacher)} teacher examples")
        student_eos, teacher_eos = self.student_special.get("eos"), self.teacher_special.get("eos")
        paired = []
        for s, t in zip(student, teacher, strict=True):
            s_ids, t_ids = response_ids(s["labels"]), response_ids(t["labels"])
            need = sum(len(self.student_bytes[i] or b"") for i in s_ids)
            keep = covered = 0
            while keep < len(t_ids) and covered < need:
                covered += len(self.teacher_bytes[t_ids[keep]] or b"")
                keep += 1
            if s_ids and s_ids[-1] == student_eos and keep < len(t_ids) and t_ids[keep] == teacher_eos:
                keep += 1
            cut = len(t["input_ids"]) - (len(t_ids) - keep)
            paired.append({**s, "teacher_input_ids": t["input_ids"][:cut],
                           "teacher_labels": t["labels"][:cut]})
        return paired

    def longest(self, text: bytes) -> int | None:
        """The student token with the longest text that `text` begins with (None: no student token does)."""
        for n in range(min(len(text), self._longest), 0, -1):
            idx = self._index.get(text[:n])
            if idx is not None:
                return idx
        return None

    def resolution(self, written: bytes = b"", prefix: bytes = b"") -> tuple[torch.Tensor, torch.Tensor]:
        """For every teacher id: the student id its mass goes to (−1: dropped) and whether one to one, at a
        node with `written` bytes since the student boundary and `prefix` bytes still to match. Cached."""
        return self._resolve(written, prefix)[:2]

    def _resolve(self, written: bytes, prefix: bytes) -> tuple:
        """`resolution`, plus for every teacher id the index of the text it stands for in the list returned
        last when the teacher would go on spelling that text (step 3), else −1."""
        key = (written, prefix)
        if key not in self._cache:
            ids = torch.full((self.teacher_vocab,), -1, dtype=torch.long)
            exact = torch.zeros(self.teacher_vocab, dtype=torch.bool)
            open_at = torch.full((self.teacher_vocab,), -1, dtype=torch.long)
            open_texts: list[bytes] = []
            names = {i: name for name, i in self.teacher_special.items() if name != "eos"}
            eos = self.teacher_special.get("eos")
            for u, raw in enumerate(self.teacher_bytes):
                if raw is None:  # a special token
                    if prefix:
                        continue
                    if u == eos:  # the text ends: after the written bytes, or right here
                        target = self.longest(written) if written else self.student_special.get("eos")
                        text = written
                    elif not written and names.get(u) in self.student_special:
                        target, text = self.student_special[names[u]], None
                    else:
                        continue
                else:
                    if prefix and not (raw.startswith(prefix) and len(raw) > len(prefix)):
                        continue
                    text = written + raw[len(prefix):]
                    same = u < self.student_vocab and self.student_bytes[u] == text
                    target = u if same else self.longest(text)
                    if text in self._open:
                        open_at[u] = len(open_texts)
                        open_texts.append(text)
                if target is not None:
                    ids[u] = target
                    # One to one: the same special token, or a student token of exactly this text.
                    exact[u] = text is None or self.student_bytes[target] == (text or None)
            self._cache[key] = (ids, exact, open_at, open_texts)
        return self._cache[key]

    def plan(self, student_ids: list[int], teacher_ids: list[int]) -> list[list[Node] | None]:
        """For each student response token, the teacher nodes its target reads (None: fallback).

        Raises ValueError when the two tokenizations do not spell the same bytes.
        """
        s_parts = [self.student_bytes[i] or b"" for i in student_ids]
        t_parts = [self.teacher_bytes[i] or b"" for i in teacher_ids]
        s_text, t_text = b"".join(s_parts), b"".join(t_parts)
        short = min(len(s_text), len(t_text))
        if s_text[:short] != t_text[:short]:
            at = next(i for i in range(short) if s_text[i] != t_text[i])
            raise ValueError(f"teacher and student tokens spell different bytes from byte {at} of a "
                             f"response ({s_text[at:at + 12]!r} vs {t_text[at:at + 12]!r}): a tokenizer is "
                             "not lossless")
        t_starts, position = [], 0
        for part in t_parts:
            t_starts.append(position)
            position += len(part)
        t_ends = [start + len(part) for start, part in zip(t_starts, t_parts, strict=True)]
        # Nonempty teacher tokens by start, to find the one covering a byte (an empty one, EOS, covers none).
        spans = [i for i, part in enumerate(t_parts) if part]
        span_starts = [t_starts[i] for i in spans]
        plans: list[list[Node] | None] = []
        c = 0
        for part in s_parts:
            end = c + len(part)
            plans.append(self._nodes(c, end, s_text, teacher_ids, t_starts, t_ends, spans, span_starts))
            c = end
        return plans

    @staticmethod
    def _nodes(c, end, text, teacher_ids, t_starts, t_ends, spans, span_starts) -> list[Node] | None:
        if c == end:  # an empty student token (EOS): the teacher's empty token at the same byte
            row = next((i for i in range(len(teacher_ids)) if t_starts[i] == c and t_ends[i] == c), None)
            return None if row is None else [Node(row)]
        k = bisect.bisect_right(span_starts, c) - 1
        if k < 0 or t_ends[spans[k]] <= c:
            return None  # past the teacher's window
        row = spans[k]
        nodes = [Node(row, prefix=text[t_starts[row]:c])]
        while t_ends[row] < end:
            nodes[-1].carry = teacher_ids[row]
            row += 1
            if row >= len(teacher_ids):
                return None
            nodes.append(Node(row, written=text[c:t_starts[row]]))
        return nodes

    def targets(self, teacher_logp: torch.Tensor, student_ids: list[int], teacher_ids: list[int],
                stats: CrossStats | None = None) -> torch.Tensor:
        """Log-probs over the student vocabulary [len(student_ids), V_student] for one example, from the
        teacher's response log-probs [len(teacher_ids), V_teacher] (the taught distribution)."""
        probs = teacher_logp.double().exp()
        out = torch.zeros(len(student_ids), self.student_vocab, dtype=torch.float64)
        stats = stats if stats is not None else CrossStats()
        for j, nodes in enumerate(self.plan(student_ids, teacher_ids)):
            stats.positions += 1
            if nodes is None:
                out[j, student_ids[j]] = 1.0
                stats.fallback += 1
                continue
            mass, exact_mass = 1.0, 0.0
            for node in nodes:
                ids, exact, open_at, open_texts = self._resolve(node.written, node.prefix)
                row = probs[node.row]
                kept = ids >= 0
                norm = row[kept].sum()
                weights = torch.where(kept, row, torch.zeros_like(row)) * (mass / norm)
                if node.carry is not None:
                    carried = weights[node.carry].item()
                    weights[node.carry] = 0.0
                self._continue(out[j], weights, open_at, open_texts, probs, node.row + 1)
                kept_ids = torch.where(kept, ids, torch.zeros_like(ids))
                out[j].index_add_(0, kept_ids, weights)
                exact_mass += weights[exact & kept].sum().item()
                if node.carry is not None:
                    mass = carried
            aligned = not nodes[0].prefix
            stats.aligned += aligned
            stats.expanded += len(nodes) > 1
            if aligned:
                stats.exact_mass += exact_mass
                stats.exact_targets += exact_mass >= EXACT_SHARE
        return (out / out.sum(-1, keepdim=True)).log().float()

    def _continue(self, out: torch.Tensor, weights: torch.Tensor, open_at: torch.Tensor,
                  open_texts: list[bytes], probs: torch.Tensor, row: int, depth: int = 0) -> None:
        """Step 3's continuation: candidates the teacher would go on spelling (weight ≥ CONTINUE_MIN) move
        their weight into `out` through the observed path's distribution at `row`, and on through the
        following rows while their text stays open (at most CONTINUE_DEPTH levels); their weights are
        zeroed."""
        if row >= len(probs) or depth >= CONTINUE_DEPTH:
            return
        following = probs[row]
        for u in torch.nonzero((open_at >= 0) & (weights >= CONTINUE_MIN)).flatten().tolist():
            ids, _, next_open, next_texts = self._resolve(open_texts[open_at[u]], b"")
            kept = ids >= 0
            moved = torch.where(kept, following, torch.zeros_like(following)) * (
                weights[u] / following[kept].sum())
            self._continue(out, moved, next_open, next_texts, probs, row + 1, depth + 1)
            out.index_add_(0, torch.where(kept, ids, torch.zeros_like(ids)), moved)
            weights[u] = 0.0

    def batch_targets(self, teacher_logp: torch.Tensor, pairs: list[tuple[list[int], list[int]]],
                      stats: CrossStats | None = None) -> torch.Tensor:
        """`targets` over a batch given its `response_pairs`: teacher rows row-major in, student rows out."""
        parts, start = [], 0
        for s_ids, t_ids in pairs:
            parts.append(self.targets(teacher_logp[start:start + len(t_ids)], s_ids, t_ids, stats))
            start += len(t_ids)
        return torch.cat(parts)
