"""Causal LMs: tiny Llamas built from scratch for the embedded default, any HF model otherwise.

Tiny models are written with `save_pretrained` and read back through `load_causal_lm`, so the embedded
default travels exactly the loading path a hub model does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from smoothkd.config import ModelConfig, TinyModelConfig
from smoothkd.data.tokenize import select_response
from smoothkd.io import atomic_dir

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tiny_llama(tokenizer, shape: TinyModelConfig, out_dir: str | Path, seed: int = 10) -> Path:
    """Randomly initialise a Llama of the given shape for `tokenizer` and save it (safetensors)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads or shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def resolve_device(requested: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def load_causal_lm(path: str | Path, cfg: ModelConfig | None = None, attn_implementation: str | None = None
                   ) -> PreTrainedModel:
    """Load a causal LM by hub id or local path with safetensors weights only.

    `trust_remote_code` stays off unless the model config asks for it.
    """
    cfg = cfg or ModelConfig()
    dtype = "auto" if cfg.dtype == "auto" else _DTYPES[cfg.dtype]
    return AutoModelForCausalLM.from_pretrained(
        str(path),
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        dtype=dtype,
        use_safetensors=True,
        attn_implementation=attn_implementation,
    )


def response_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward a collated batch on the model's device; logits at response positions and their targets."""
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device),
                   attention_mask=batch["attention_mask"].to(device)).logits
    return select_response(logits, batch["labels"].to(device))


def initial_model(model_cfg: ModelConfig, tokenizer, init_dir: Path, seed: int) -> PreTrainedModel:
    """Load the configured model, or build a tiny Llama of the configured shape once and load it back."""
    if model_cfg.name_or_path:
        return load_causal_lm(model_cfg.name_or_path, model_cfg)
    if not init_dir.exists():
        build_tiny_llama(tokenizer, model_cfg.tiny, init_dir, seed=seed)
    return load_causal_lm(init_dir, model_cfg)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
