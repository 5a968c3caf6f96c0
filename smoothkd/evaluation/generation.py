"""Batched greedy generation: left padding, KV cache, stop at the first newline (the paper's protocol)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from smoothkd.data.tokenize import encode_prompt
from smoothkd.modeling.tokenizer import newline_token_ids


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], batch_size: int = 16, max_new_tokens: int = 64,
             max_prompt_length: int = 512, progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy continuations of `prompts`, each cut at its first newline, in input order."""
    model.eval()
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p, max_prompt_length) for p in prompts]
    # Longest first: similar lengths share a batch, so little compute goes to padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    stop_ids = sorted({tokenizer.eos_token_id, *newline_token_ids(tokenizer)})
    outputs: list[str] = [""] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        input_ids, attention_mask = _left_pad([encoded[i] for i in idx], tokenizer.pad_token_id)
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = generated[:, input_ids.shape[1]:]
        for i, ids in zip(idx, new_tokens.tolist(), strict=True):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            outputs[i] = text.split("\n", 1)[0].strip()
    return outputs
