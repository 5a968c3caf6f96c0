"""Batched greedy generation: left padding, KV cache, stop at the first newline (the paper's protocol).

One loop serves plain generation and generation with lookback ratios (see `smoothkd.evaluation.lookback`):
a prefill forward without attentions, then one forward per generated token on the KV cache. With
`lookback`, only the decode steps return attentions ([batch, heads, 1, kv] per layer, under eager
attention) and each is reduced at once to [batch, layers, heads] ratios, so memory stays small for any
prompt length.

Every generated token also gets the model's probability of it at the step that chose it (greedy: the
largest probability of that step's softmax over the tokenizer's tokens), read from the logits the loop
already has, in float32: how confidently the model stated it (`smoothkd.evaluation.confidence`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from smoothkd.data.tokenize import encode_prompt
from smoothkd.evaluation.lookback import (
    eager_attention,
    first_step_ratios,
    step_lookback_ratios,
    token_offsets,
)
from smoothkd.modeling.tokenizer import newline_token_ids


@dataclass(frozen=True)
class Generation:
    """One greedy continuation with its per-token lookback ratios and probabilities.

    `token_ids` are the generated ids, the stop token (newline or EOS) included when generation stopped;
    `lookback[t]` is the [layers, heads] ratio of the step that produced `token_ids[t]`; `offsets[t]` is
    that token's [start, end) character span in `text` (see `token_offsets`; empty when it lies outside
    the text); `probs[t]` is the model's probability of `token_ids[t]` at the step that chose it.
    """

    text: str
    token_ids: list[int]
    lookback: np.ndarray
    offsets: list[tuple[int, int]]
    probs: np.ndarray


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def _greedy_batch(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, stop_ids: torch.Tensor,
                  pad_id: int, max_new_tokens: int, lookback: bool, vocab_size: int
                  ) -> tuple[list[list[int]], list[list[float]], list[torch.Tensor | None]]:
    """Generated ids per row (stop token included), each one's probability at the step that chose it and,
    with `lookback`, their [n, layers, heads] ratios."""
    batch = input_ids.shape[0]
    # Positions as `model.generate` numbers them: left pads do not shift the prompt's positions.
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache, mask = out.past_key_values, attention_mask
    next_position = positions[:, -1:] + 1
    ratios = None
    if lookback:
        ratios = first_step_ratios(batch, model.config.num_hidden_layers, model.config.num_attention_heads)
    tokens, probs, step_ratios = [], [], []
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    lengths = torch.full((batch,), max_new_tokens, dtype=torch.long)
    for step in range(max_new_tokens):
        # Padded embedding rows (past the tokenizer) are no token: never generated, and no share of the
        # probability either. float32 is an exact copy of bf16/fp16 logits, so the argmax is the same.
        logits = out.logits[:, -1, :vocab_size].float()
        token = logits.argmax(-1)
        probs.append((logits.gather(-1, token[:, None])[:, 0] - logits.logsumexp(-1)).exp())
        token = token.masked_fill(finished, pad_id)
        tokens.append(token)
        if lookback:
            step_ratios.append(ratios)
        stopped = ~finished & torch.isin(token, stop_ids)
        lengths[stopped.cpu()] = step + 1
        finished |= stopped
        if bool(finished.all()) or step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                    past_key_values=cache, use_cache=True, output_attentions=lookback)
        cache, next_position = out.past_key_values, next_position + 1
        if lookback:
            ratios = step_lookback_ratios(out.attentions, attention_mask, n_generated=step + 1).cpu()
    ids, chosen = torch.stack(tokens, dim=1).tolist(), torch.stack(probs, dim=1).tolist()
    stacked = torch.stack(step_ratios, dim=1) if lookback else None
    n = lengths.tolist()
    return ([row[:k] for row, k in zip(ids, n, strict=True)],
            [row[:k] for row, k in zip(chosen, n, strict=True)],
            [stacked[row, :k] if lookback else None for row, k in enumerate(n)])


@torch.inference_mode()
def _generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int,
              max_prompt_length: int, progress: bool, desc: str, lookback: bool
              ) -> list[tuple[list[int], list[float], torch.Tensor | None]]:
    model.eval()
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p, max_prompt_length) for p in prompts]
    # Longest first: similar lengths share a batch, so little compute goes to padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    stop_ids = torch.tensor(sorted({tokenizer.eos_token_id, *newline_token_ids(tokenizer)}), device=device)
    results: list = [None] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with eager_attention(model) if lookback else contextlib.nullcontext():
        # disable=None: no bar when stderr is not a terminal (a log file gets no carriage-return frames).
        for idx in tqdm(batches, desc=desc, unit="batch", disable=None if progress else True):
            input_ids, attention_mask = _left_pad([encoded[i] for i in idx], tokenizer.pad_token_id)
            ids, probs, ratios = _greedy_batch(model, input_ids.to(device), attention_mask.to(device),
                                               stop_ids, tokenizer.pad_token_id, max_new_tokens, lookback,
                                               len(tokenizer))
            for i, row in zip(idx, zip(ids, probs, ratios, strict=True), strict=True):
                results[i] = row
    return results


def generate(model, tokenizer, prompts: list[str], batch_size: int = 16, max_new_tokens: int = 64,
             max_prompt_length: int = 512, progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy continuations of `prompts`, each cut at its first newline, in input order."""
    results = _generate(model, tokenizer, prompts, batch_size, max_new_tokens, max_prompt_length, progress,
                        desc, lookback=False)
    return [tokenizer.decode(ids, skip_special_tokens=True).split("\n", 1)[0].strip()
            for ids, _, _ in results]


def generate_with_lookback(model, tokenizer, prompts: list[str], batch_size: int = 16,
                           max_new_tokens: int = 64, max_prompt_length: int = 512, progress: bool = True,
                           desc: str = "generate") -> list[Generation]:
    """`generate`'s greedy texts plus each generated token's id, lookback ratios, character span and
    probability."""
    results = _generate(model, tokenizer, prompts, batch_size, max_new_tokens, max_prompt_length, progress,
                        desc, lookback=True)
    generations = []
    for ids, probs, ratios in results:
        text, offsets = token_offsets(tokenizer, ids)
        generations.append(Generation(text, ids, ratios.numpy(), offsets, np.asarray(probs)))
    return generations
