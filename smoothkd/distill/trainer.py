"""Finetuning on response tokens with the HF Trainer: the SFT baseline and the teacher's SFT.

`DistillTrainer` overrides `compute_loss` only (TRL-style): the loss is the mean NLL over response tokens
of the whole accumulated batch, so gradient accumulation and data-parallel ranks weigh every token alike.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from smoothkd.config import TrainConfig
from smoothkd.data.tokenize import IGNORE_INDEX, CausalLMCollator
from smoothkd.io import atomic_dir


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss."""


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over positions whose label is not IGNORE_INDEX, and their count."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (targets != IGNORE_INDEX).sum()


class DistillTrainer(Trainer):
    """HF Trainer computing response-token NLL (α = 0: plain SFT)."""

    loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        total, count = response_nll(outputs.logits, labels)
        if num_items_in_batch is None:
            loss = total / count.clamp(min=1)
        else:
            # num_items_in_batch counts the whole accumulated (and, across ranks, gathered) batch; DDP
            # averages gradients over ranks, so scale back up to keep a per-token mean.
            loss = total / num_items_in_batch * self.accelerator.num_processes
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {self.state.global_step + 1}")
        return (loss, outputs) if return_outputs else loss


class _LossHistory(TrainerCallback):
    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.points.append((state.global_step, float(logs["loss"])))


@dataclass
class TrainResult:
    output_dir: str
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    train_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else math.nan


def training_arguments(cfg: TrainConfig, output_dir: str | Path, device: str = "auto") -> TrainingArguments:
    """Map our TrainConfig onto TrainingArguments (no hub, no external reporters)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a fraction of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.log_every,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available() and device != "cpu",
        use_cpu=device == "cpu",
    )


def train_sft(model, tokenizer, examples: list[dict], cfg: TrainConfig, output_dir: str | Path,
              device: str = "auto") -> TrainResult:
    """Finetune `model` on encoded examples, then save weights and tokenizer atomically to `output_dir`."""
    output_dir = Path(output_dir)
    history = _LossHistory()
    work_dir = output_dir.parent / f".{output_dir.name}.work"
    trainer = DistillTrainer(
        model=model,
        args=training_arguments(cfg, work_dir, device),
        train_dataset=examples,
        data_collator=CausalLMCollator(tokenizer.pad_token_id),
        callbacks=[history],
    )
    start = time.perf_counter()
    state = trainer.train()
    seconds = time.perf_counter() - start
    with atomic_dir(output_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(work_dir, ignore_errors=True)
    tokens_per_epoch = sum(len(e["input_ids"]) for e in examples)
    epochs_seen = state.metrics.get("epoch", cfg.epochs)
    return TrainResult(
        output_dir=str(output_dir),
        loss_history=history.points,
        steps=state.global_step,
        seconds=seconds,
        train_tokens=int(tokens_per_epoch * epochs_seen),
    )
