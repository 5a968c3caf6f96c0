"""Lookback ratios (after Lookback Lens, Chuang et al. 2024): how much each head looks back at the context.

For the decode step that produces generated token t (0-based) and each (layer, head), with the context C
= the prompt's non-pad tokens (BOS included) and G = the t tokens generated so far (y_0 … y_{t-1}; the
step's query token y_{t-1} is among them, as it attends to itself):

    ratio = mean_{i in C} a_i / (mean_{i in C} a_i + mean_{j in G} a_j)

where a is the step's attention row (softmax weights) in that head. Token 0 is produced by the prefill,
when nothing has been generated yet: G is empty, every bit of attention is on the context, and its ratio
is defined as 1.0 (the limit of the formula), so it needs no attentions from the prefill.

Mean, not mass, as in the paper: attention masses over C and G always sum to 1 (pads get exactly 0), so a
mass "ratio" would collapse to the context's share, which falls as generation grows G whatever the model
grounds on. The paper's per-token means compare how strongly a typical context token and a typical
generated token are attended, and keep our features the ones its detector was defined on.

Left padding is respected: pad positions are excluded from C (both from the sum and from |C|).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """Run `model` with eager attention (the only implementation that returns attention weights).

    The model's own setting (sdpa, flash, ...) is restored on exit.
    """
    original = model.config._attn_implementation
    if original != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if original != "eager":
            model.set_attn_implementation(original)


def step_lookback_ratios(attentions: tuple[torch.Tensor, ...], context_mask: torch.Tensor,
                         n_generated: int) -> torch.Tensor:
    """[batch, layers, heads] lookback ratios of one decode step.

    `attentions` holds one [batch, heads, 1, width + n_generated] tensor per layer (the decode step's
    query row), `context_mask` is the [batch, width] left-padded prompt mask (1 = prompt token) and
    `n_generated` ≥ 1 counts the generated tokens in the cache, the step's input token included.
    """
    width = context_mask.shape[1]
    attn = torch.stack([a[:, :, -1, :] for a in attentions], dim=1).float()  # [b, layers, heads, kv]
    mask = context_mask.to(attn.dtype)
    context = (attn[..., :width] * mask[:, None, None, :]).sum(-1) / mask.sum(-1)[:, None, None]
    generated = attn[..., width:].sum(-1) / n_generated
    return context / (context + generated)


def first_step_ratios(batch: int, layers: int, heads: int) -> torch.Tensor:
    """Ratios of the prefill step: nothing generated yet, so all attention is on the context."""
    return torch.ones(batch, layers, heads)


def token_offsets(tokenizer, token_ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The generation's text (first line, stripped) and each token's [start, end) character span in it.

    Decodes every prefix of the ids, so the spans are what the tokenizer's own decoder produces. A
    byte-level token may hold part of a multi-byte character: a token's span starts at the character that
    holds its first byte and ends after the one that holds its last, so tokens that share a character both
    cover it (the token that completes "é", or starts mid-character, starts where "é" starts; the one that
    began it covers "é" too, and is the first token covering it). A prefix that ends inside a character
    decodes with U+FFFD in its place, which the whole text does not have there: a prefix's complete
    characters are those it shares with the whole text. Tokens outside the text (a leading space, the
    newline that stopped generation, EOS) get empty spans, and so do all but the first token of a
    character left incomplete by the token limit.
    """
    prefixes = [tokenizer.decode(token_ids[:k], skip_special_tokens=True) for k in range(len(token_ids) + 1)]
    whole = prefixes[-1]
    complete = [len(os.path.commonprefix([prefix, whole])) for prefix in prefixes]
    # A prefix longer than what it shares ends inside one more character, which its last token touched.
    touched = [n + (len(prefix) > n) for n, prefix in zip(complete, prefixes, strict=True)]
    line = whole.split("\n", 1)[0]
    text = line.strip()
    lead = len(line) - len(line.lstrip())

    def clip(pos: int) -> int:
        return min(max(pos - lead, 0), len(text))

    return text, [(clip(complete[k]), clip(max(complete[k], touched[k + 1]))) for k in range(len(token_ids))]


def span_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """[first, last + 1) of the tokens whose characters overlap text[start:end]; (0, 0) when none do."""
    hits = [k for k, (s, e) in enumerate(offsets) if s < end and e > start]
    return (hits[0], hits[-1] + 1) if hits else (0, 0)


def span_features(lookback: np.ndarray, first: int, last: int) -> np.ndarray | None:
    """Mean lookback ratio per (layer, head) over tokens [first, last): the detector's [layers, heads].

    Token 0 is left out: its ratio is 1 by definition, not measured, and as a constant inside a mean it
    would only encode the sentence's length. None when no measured token remains.
    """
    first = max(first, 1)
    return lookback[first:last].mean(axis=0) if last > first else None
