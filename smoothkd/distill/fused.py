"""The output projection fused with the loss: no tensor of shape [B, T, V] in either pass.

The model's forward is asked for one position of logits only (`logits_to_keep=1`); the decoder's final
hidden states are taken from a forward hook on the decoder. The trainer then sends the response rows of
those hidden states through the LM head itself, a chunk of positions at a time inside activation
checkpointing, so each chunk's logits exist during its own forward and again, recomputed, during its own
backward, never for the whole batch.

Going through the (possibly DDP- or PEFT-wrapped) model's own forward keeps every wrapper's hooks in
place; only the head's matmul moves. The head is rebuilt here (weight, bias, and the logit transforms
some architectures add: Gemma's final soft-capping, Cohere's `logit_scale`, Granite's `logits_scaling`),
and `FusedModel.check` compares it with the model's own logits at the kept position, so an architecture
whose head does something else is caught and trained unfused rather than silently trained wrong.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FusedModel:
    """A causal LM seen as decoder (hidden states) + output head, for a fused loss."""

    model: nn.Module  # what is called: the wrapper the trainer holds (DDP, PEFT) or the model itself
    decoder: nn.Module
    head: nn.Linear
    scale: float  # multiplies the logits (Cohere: logit_scale; Granite: 1 / logits_scaling)
    softcap: float | None  # Gemma 2/3: logits = cap · tanh(logits / cap)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits for `hidden` ([..., H] → [..., V]), computed as its own head does."""
        logits = F.linear(hidden, self.head.weight, self.head.bias)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def forward(self, inputs: dict[str, torch.Tensor]):
        """(final hidden states [B, T, H], the model's outputs, whose logits cover the last position only)."""
        captured: list[torch.Tensor] = []

        def keep(_module, _args, output):
            captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

        handle = self.decoder.register_forward_hook(keep)
        try:
            outputs = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 logits_to_keep=1)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"the decoder ran {len(captured)} times in one forward; expected once")
        return captured[0], outputs

    def check(self, hidden: torch.Tensor, outputs) -> str | None:
        """None when this head reproduces the logits in `outputs` at the last position, else what differs."""
        with torch.no_grad():
            mine = self.logits(hidden[:, -1]).float()
            theirs = outputs.logits[:, -1].float()
        if mine.shape != theirs.shape:
            return f"head gives logits of shape {tuple(mine.shape)}, the model {tuple(theirs.shape)}"
        # Same weights and inputs: only kernel rounding may differ, a few ulps of the compute dtype.
        full_precision = hidden.dtype == torch.float32 and not torch.is_autocast_enabled(hidden.device.type)
        tolerance = (1e-4 if full_precision else 5e-2) * max(1.0, theirs.abs().max().item())
        error = (mine - theirs).abs().max().item()
        if not math.isfinite(error) or error > tolerance:
            return f"head differs from the model's logits by up to {error:.3g} (tolerance {tolerance:.3g})"
        return None


def fused_model(model: nn.Module, unwrapped: nn.Module) -> tuple[FusedModel | None, str]:
    """`model` as decoder + head, or (None, why not) for an architecture this cannot take apart.

    `unwrapped` is `model` without its distributed wrapper (what `accelerator.unwrap_model` returns); a
    PEFT model is looked through to the transformers model it adapts.
    """
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    name = type(base).__name__
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return None, f"{name}.forward takes no logits_to_keep"
    try:
        decoder = base.get_decoder()
    except (AttributeError, ValueError, NotImplementedError):
        decoder = None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or decoder is base:
        return None, f"{name} has no separate decoder module"
    if type(head) is not nn.Linear:  # a LoRA-wrapped or custom head computes something else
        # Named with its module: a LoRA-wrapped head is also a class called Linear.
        kind = f"{type(head).__module__}.{type(head).__qualname__}"
        return None, f"{name}'s output head is a {kind}, not a plain torch.nn.Linear"
    config = base.config
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    if getattr(config, "logits_scaling", None):
        scale /= float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return FusedModel(model, decoder, head, scale, float(softcap) if softcap else None), ""
