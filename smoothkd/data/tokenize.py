"""Turn prompt/response pairs into token ids with the prompt masked out of the loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smoothkd.data.prompts import build_prompt, response_text

IGNORE_INDEX = -100
# Tokens kept from the end of an over-long prompt: the instruction and its cue live there.
PROMPT_TAIL_TOKENS = 32


def encode_prompt(tokenizer, prompt: str, max_prompt_length: int) -> list[int]:
    """Token ids of `prompt` (with BOS when the tokenizer has one), truncated in the middle.

    Truncation keeps the head of the source (news leads carry the key facts) and the instruction tail.
    """
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    if len(ids) > max_prompt_length:
        tail = min(PROMPT_TAIL_TOKENS, max_prompt_length // 2)
        ids = ids[: max_prompt_length - tail] + ids[-tail:]
    return ids


def encode_pair(tokenizer, prompt: str, response: str, max_length: int, max_prompt_length: int
                ) -> dict[str, list[int]]:
    """input_ids = prompt + response + EOS; labels mask the prompt with IGNORE_INDEX."""
    prompt_ids = encode_prompt(tokenizer, prompt, max_prompt_length)
    response_ids = tokenizer(response_text(response), add_special_tokens=False)["input_ids"]
    response_ids = [*response_ids, tokenizer.eos_token_id][: max(1, max_length - len(prompt_ids))]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


def encode_instruction_rows(tokenizer, rows: list[dict], max_length: int, max_prompt_length: int
                            ) -> list[dict[str, list[int]]]:
    """Encode Dolly-schema rows through the shared prompt template."""
    return [
        encode_pair(tokenizer, build_prompt(r["instruction"], r.get("context", ""), r.get("category", "")),
                    r["response"], max_length, max_prompt_length)
        for r in rows
    ]


def select_response(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits at the response positions of a batch and their targets: [N, V], [N], row-major.

    Position t predicts token t + 1, so logits drop the last position and labels the first.
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    return logits[:, :-1][mask], labels[:, 1:][mask]


@dataclass
class CausalLMCollator:
    """Right-pads a batch of encoded pairs; padded positions are masked in attention and loss."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
