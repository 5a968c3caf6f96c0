"""Finetuning on response tokens with the HF Trainer: teacher SFT, the SFT baseline and KD students.

`DistillTrainer` overrides `compute_loss` only (TRL-style). The loss is (1 − α)·NLL + α·KD summed over
response tokens and divided by the token count of the whole accumulated batch, so gradient accumulation
and data-parallel ranks weigh every token alike. α = 0 takes the plain NLL path: exactly SFT.
The loss runs over response positions in chunks, each recomputed in the backward pass (activation
checkpointing), so fp32 log-probs exist for one chunk at a time, never for the whole batch. With
`train.fused_loss` (the default) the chunks start from the final hidden states and go through the LM head
inside the chunk (`smoothkd.distill.fused`), so no [B, T, V] logits exist either; an architecture whose
head cannot be reproduced, and FSDP, fall back to the model's full logits with a warning.
An online teacher with another tokenizer (`cross`) reads its own encoding of each example; its taught
log-probs are projected onto the student's vocabulary (`smoothkd.distill.crosstok`) and compared densely.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from smoothkd.config import DistillConfig, LoraSettings, TrainConfig
from smoothkd.data.tokenize import CausalLMCollator, select_response
from smoothkd.distill.crosstok import CrossStats, CrossTokenizer, response_pairs, teacher_view
from smoothkd.distill.fused import FusedModel, fused_model
from smoothkd.distill.labels import LabelStore
from smoothkd.distill.losses import dense_kd_loss, mixed_loss, sparse_kd_loss
from smoothkd.distill.progress import TrainProgress
from smoothkd.distill.runtime import mixed_precision, on_cpu, world_size
from smoothkd.distill.sampled import sampled_kd_loss
from smoothkd.errors import IncompatibleModelsError, NonFiniteLossError
from smoothkd.io import atomic_dir
from smoothkd.modeling.models import response_logits

logger = logging.getLogger(__name__)


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over positions whose label is not IGNORE_INDEX, and their count.

    Only response positions reach the log-softmax: prompt positions would cost vocab-sized work for nothing.
    """
    selected, targets = select_response(logits, labels)
    return F.cross_entropy(selected.float(), targets, reduction="sum"), targets.new_tensor(targets.numel())


@dataclass
class DistillCollator(CausalLMCollator):
    """CausalLMCollator plus the stored teacher labels of the batch's response tokens, in row-major order;
    with `teacher_pad_token_id` (an online teacher with another tokenizer) also the teacher's encoding of
    the batch (`teacher`) and both sides' response ids (`cross_ids`)."""

    store: LabelStore | None = None
    teacher_pad_token_id: int | None = None

    def __call__(self, features):
        batch = super().__call__(features)
        if self.teacher_pad_token_id is not None:
            batch["teacher"] = CausalLMCollator(self.teacher_pad_token_id)(teacher_view(features))
            batch["cross_ids"] = response_pairs(features)
        if self.store is not None:
            parts = [self.store.example(f["label_index"]) for f in features]
            batch.update(kd_ids=torch.cat([p.ids for p in parts]), kd_logp=torch.cat([p.logp for p in parts]),
                         kd_tail=torch.cat([p.tail for p in parts]))
        return batch


class EpochPermutationSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch, the same on every rank.

    Data-parallel ranks then take consecutive per-device batches of one shared order, so N processes with
    batch b see exactly the examples one process with batch N·b would: the runs agree step for step.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class DistillTrainer(Trainer):
    """HF Trainer computing (1 − α)·NLL + α·KD on response tokens; α = 0 is plain SFT."""

    # compute_loss scales for accumulation on both paths (see there): the Trainer must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, distill: DistillConfig | None = None, alpha: float = 0.0, teacher=None,
                 fused_loss: bool = True, teacher_scale: float = 1.0, vocab_size: int | None = None,
                 cross: CrossTokenizer | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill, self.alpha, self.teacher = distill or DistillConfig(), alpha, teacher
        # Online teacher logits × teacher_scale (logit_scale ÷ calibration temperature) are the taught ones.
        self.teacher_scale = teacher_scale
        # The shared tokenizer's length: embedding rows past it (padded vocabularies) are never compared.
        self.vocab_size = vocab_size
        # A teacher with another tokenizer: its targets are projected onto the student's ids, counted here.
        self.cross, self.cross_stats = cross, CrossStats()
        # Why the student's loss is computed unfused (None while the fused path is on), and whether the
        # fused heads have been checked against the models' own logits yet (once, on the first batch).
        self.fused_off: str | None = None if fused_loss else "train.fused_loss is false"
        self.fused_checked = self.teacher_checked = False
        self.teacher_fused: FusedModel | None = None
        if self.teacher is not None:
            # The Trainer has put the student on this rank's device by now; the teacher joins it.
            self.teacher.to(self.args.device).eval().requires_grad_(False)
            # Across tokenizers the projection needs the teacher's full rows: its head is not fused.
            if fused_loss and cross is None:
                self.teacher_fused, reason = fused_model(self.teacher, self.teacher)
                if self.teacher_fused is None:
                    self._fall_back("teacher", reason)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpochPermutationSampler(len(dataset), self.args.data_seed or self.args.seed)

    def _fused(self, model) -> FusedModel | None:
        """The student as decoder + head when the fused loss is on and known to fit it, else None."""
        if self.fused_off is not None:
            return None
        if self.is_fsdp_enabled:
            fused, reason = None, "FSDP reshards the head's weight outside the model's forward"
        else:
            fused, reason = fused_model(model, self.accelerator.unwrap_model(model))
        if fused is None:
            self._fall_back("student", reason)
        return fused

    def _fall_back(self, role: str, reason: str) -> None:
        """Record (and say, once) that the `role`'s loss is computed from the model's full logits."""
        if role == "student":
            self.fused_off = reason
        else:
            self.teacher_fused = None
        logger.warning("train.fused_loss: %s trained unfused ([B, T, V] logits): %s", role, reason)

    def _teacher_rows(self, inputs):
        """The online teacher's response rows (hidden states when fused, else logits; across tokenizers the
        taught log-probs projected onto the student's ids) and their head."""
        with torch.no_grad():
            if self.cross is not None:
                logits, _ = response_logits(self.teacher, inputs["teacher"])
                logits = logits[..., :self.cross.teacher_vocab].float() * self.teacher_scale
                logp = torch.log_softmax(logits, dim=-1)
                targets = self.cross.batch_targets(logp.cpu(), inputs["cross_ids"], self.cross_stats)
                return targets.to(logits.device), None
            if self.teacher_fused is not None:
                hidden, outputs = self.teacher_fused.forward(inputs)
                problem = None if self.teacher_checked else self.teacher_fused.check(hidden, outputs)
                self.teacher_checked = True
                if problem is None:
                    rows, _ = select_response(hidden, inputs["labels"])
                    return rows, self.teacher_fused.logits
                self._fall_back("teacher", problem)
            logits, _ = response_logits(self.teacher, inputs)
        return logits, None

    def _response_sums(self, rows, targets, head, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(NLL sum, KD sum) over response rows, chunk by chunk, each chunk recomputed in backward.

        `rows` are the student's response logits [N, V], or its final hidden states [N, H] when `head`
        maps them to logits inside the chunk: then no chunk's logits outlive its own forward or backward.
        """
        d = self.distill
        kd_on = self.alpha > 0
        teacher_rows = teacher_head = None
        if kd_on and self.teacher is not None:
            teacher_rows, teacher_head = self._teacher_rows(inputs)

        def chunk_loss(start: int, piece):
            end = start + piece.shape[0]
            student = head(piece) if head is not None else piece
            logp = torch.log_softmax(student.float(), dim=-1)
            nll = -logp.gather(-1, targets[start:end].unsqueeze(-1)).sum()
            if not kd_on:
                return nll, nll.new_zeros(())
            # At T = 1 the KD term reuses the NLL's log-softmax instead of computing it again.
            logp_t = logp if d.temperature == 1.0 else None
            if teacher_rows is not None:
                teacher = teacher_rows[start:end]
                if teacher_head is not None:
                    with torch.no_grad():
                        teacher = teacher_head(teacher)
                teacher = teacher[..., :self.vocab_size]
                if self.teacher_scale != 1.0 and self.cross is None:  # projected targets are scaled already
                    teacher = teacher.float() * self.teacher_scale
                shared = student[..., :teacher.shape[-1]]
                kd = dense_kd_loss(shared, teacher, d.temperature, d.divergence, d.jsd_beta,
                                   student_logp=logp_t if shared.shape == student.shape else None)
            elif d.labels == "sampled":
                kd = sampled_kd_loss(student, inputs["kd_ids"][start:end], inputs["kd_logp"][start:end],
                                     d.temperature, student_logp=logp_t)
            else:  # tempered on the k + 1 outcomes, so the T = 1 log-softmax serves at any T
                kd = sparse_kd_loss(student, inputs["kd_ids"][start:end], inputs["kd_logp"][start:end],
                                    inputs["kd_tail"][start:end], d.temperature, d.divergence, d.jsd_beta,
                                    student_logp=logp)
            return nll, kd

        nll_sum = kd_sum = rows.new_zeros((), dtype=torch.float32)
        for start in range(0, rows.shape[0], d.chunk_tokens):
            nll, kd = checkpoint(chunk_loss, start, rows[start:start + d.chunk_tokens], use_reentrant=False)
            nll_sum, kd_sum = nll_sum + nll, kd_sum + kd
        return nll_sum, kd_sum

    def _unfused_sums(self, model, inputs):
        """(total, count, outputs) from the model's full logits: plain NLL at α = 0, chunked KD else."""
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        if self.alpha == 0.0:
            total, count = response_nll(outputs.logits, inputs["labels"])
            return total, count, outputs
        rows, targets = select_response(outputs.logits, inputs["labels"])
        nll_sum, kd_sum = self._response_sums(rows, targets, None, inputs)
        return mixed_loss(nll_sum, kd_sum, self.alpha), targets.new_tensor(targets.numel()), outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        fused = self._fused(model)
        if fused is not None:
            hidden, outputs = fused.forward(inputs)
            problem = None if self.fused_checked else fused.check(hidden, outputs)
            self.fused_checked = True
            if problem is not None:
                self._fall_back("student", problem)
                fused = None
        if fused is not None:
            rows, targets = select_response(hidden, inputs["labels"])
            nll_sum, kd_sum = self._response_sums(rows, targets, fused.logits, inputs)
            total, count = mixed_loss(nll_sum, kd_sum, self.alpha), targets.new_tensor(targets.numel())
        else:
            total, count, outputs = self._unfused_sums(model, inputs)
        if num_items_in_batch is None:
            # The Trainer counts the accumulated batch only for models whose forward takes loss kwargs;
            # without that count each micro-batch's mean is one of the window's equal parts.
            steps = getattr(self, "current_gradient_accumulation_steps", 1)
            loss = total / count.clamp(min=1) / steps
        else:
            # num_items_in_batch counts the whole accumulated (and, across ranks, gathered) batch; DDP
            # averages gradients over ranks, so scale back up to keep a per-token mean.
            loss = total / num_items_in_batch * self.accelerator.num_processes
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {self.state.global_step + 1}")
        # Fused, the outputs hold the logits of the last position only.
        return (loss, outputs) if return_outputs else loss


@dataclass
class TrainResult:
    output_dir: str
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    train_tokens: int = 0
    main_process: bool = True  # the one process that saved (always, outside a distributed run)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else math.nan


def _fsdp(cfg: TrainConfig) -> dict:
    """FSDP2 through the Trainer's own settings, so a torchrun start shards exactly as our launcher does.

    Wrapping follows the model's `_no_split_modules` (its decoder layers); the full state dict is gathered
    for the final save, so the saved model is a plain one.
    """
    if cfg.distributed != "fsdp" or world_size() == 1:
        return {}
    return {"fsdp": True, "fsdp_config": {"version": 2, "state_dict_type": "FULL_STATE_DICT"}}


def training_arguments(cfg: TrainConfig, output_dir: str | Path, device: str = "auto") -> TrainingArguments:
    """Map our TrainConfig onto TrainingArguments (no hub, no external reporters)."""
    precision = mixed_precision(cfg, device)
    # Without CUDA the Trainer must be told it is on CPU, or a multi-process start would not form a world.
    use_cpu = on_cpu(device)
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
        save_strategy="steps" if cfg.checkpoint_every else "no",
        save_steps=cfg.checkpoint_every or 500,
        save_total_limit=2,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **_fsdp(cfg),
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=not use_cpu,
        use_cpu=use_cpu,
    )


def with_lora(model, lora: LoraSettings):
    """`model` with LoRA adapters injected (in place) and only the adapters trainable."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type="CAUSAL_LM"))


def _save(trainer: Trainer, tokenizer, output_dir: Path, merge_lora: bool) -> None:
    """Write the trained model once, from the main process, as a plain HF model directory.

    LoRA adapters are merged into the weights first, so serving needs no peft.
    """
    accelerator = trainer.accelerator
    # Under FSDP this gathers the shards, a collective every rank must join; otherwise the weights are whole.
    state_dict = accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(trainer.model)
        if merge_lora:
            model = model.merge_and_unload()
        with atomic_dir(output_dir) as tmp:
            model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def finetune(model, tokenizer, examples: list[dict], cfg: TrainConfig, output_dir: str | Path,
             device: str = "auto", alpha: float = 0.0, distill: DistillConfig | None = None,
             label_store: LabelStore | None = None, teacher=None, work_dir: str | Path | None = None,
             callbacks: list[TrainerCallback] | None = None, lora: LoraSettings | None = None,
             teacher_scale: float = 1.0, desc: str = "train", cross: CrossTokenizer | None = None,
             teacher_pad_token_id: int | None = None) -> TrainResult:
    """Finetune `model` on encoded examples, then save weights and tokenizer atomically to `output_dir`.

    α > 0 needs either `label_store` (stored teacher labels, one entry per example, in order) or `teacher`
    (online mode, its logits × `teacher_scale` being the taught ones). Checkpoints go to `work_dir` every
    `cfg.checkpoint_every` steps; when it already holds one, training resumes from it. `work_dir` is
    removed once the model is saved. With `lora.enabled` only adapters train and `model` ends up holding
    the merged weights that are saved. Under torchrun or `accelerate launch` every rank calls this; only
    the main process writes. Progress shows as one bar named `desc`. An online `teacher` with another
    vocabulary comes with the map to the student's (`cross`) and its tokenizer's pad id, and takes examples
    paired with its encoding (`CrossTokenizer.pair`).
    """
    if alpha > 0 and label_store is None and teacher is None:
        raise ValueError("alpha > 0 needs stored teacher labels or an online teacher")
    distill = distill or DistillConfig()
    kind = distill.labels
    if label_store is not None and label_store.sampled != (kind == "sampled"):
        raise ValueError(f"distill.labels is {kind} but the label store {label_store.path} holds "
                         f"{'sampled' if label_store.sampled else 'top-k'} labels")
    if label_store is not None and len(label_store) != len(examples):
        raise ValueError(f"label store holds {len(label_store)} examples, training set {len(examples)}")
    output_dir = Path(output_dir)
    work_dir = Path(work_dir) if work_dir else output_dir.parent / f".{output_dir.name}.work"
    store = label_store if alpha > 0 and teacher is None else None
    rows = model.get_input_embeddings().num_embeddings
    if store is not None and store.manifest["vocab_size"] > rows:
        vocab = store.manifest["vocab_size"]
        raise IncompatibleModelsError(f"label store {store.path} holds ids of a {vocab}-token vocabulary, "
                                      f"beyond the student's {rows} embedding rows: recompute the labels")
    cross = cross if alpha > 0 and teacher is not None else None
    use_lora = lora is not None and lora.enabled
    if use_lora:
        torch.manual_seed(cfg.seed)  # adapters are initialised randomly: seeded, a rerun is the same run
        model = with_lora(model, lora)
    trainer = DistillTrainer(
        model=model,
        args=training_arguments(cfg, work_dir, device),
        train_dataset=[{**e, "label_index": i} for i, e in enumerate(examples)],
        data_collator=DistillCollator(tokenizer.pad_token_id, store,
                                      teacher_pad_token_id if cross is not None else None),
        callbacks=callbacks,
        distill=distill,
        alpha=alpha,
        teacher=teacher,
        fused_loss=cfg.fused_loss,
        teacher_scale=teacher_scale,
        vocab_size=len(tokenizer),
        cross=cross,
    )
    for default in (ProgressCallback, PrinterCallback):  # they print raw log dicts; TrainProgress does not
        trainer.remove_callback(default)
    trainer.add_callback(TrainProgress(desc))
    resume = any(work_dir.glob("checkpoint-*"))
    start = time.perf_counter()
    state = trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start
    if cross is not None:
        logger.info("cross-tokenizer targets: %s", trainer.cross_stats.summary())
    _save(trainer, tokenizer, output_dir, merge_lora=use_lora)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(work_dir, ignore_errors=True)
    tokens_per_epoch = sum(len(e["input_ids"]) for e in examples)
    epochs_seen = state.metrics.get("epoch", cfg.epochs)
    return TrainResult(
        output_dir=str(output_dir),
        # The trainer state survives a resume, so this is the whole curve even after an interruption.
        loss_history=[(h["step"], float(h["loss"])) for h in trainer.state.log_history if "loss" in h],
        steps=state.global_step,
        seconds=seconds,
        main_process=trainer.accelerator.is_main_process,
        train_tokens=int(tokens_per_epoch * epochs_seen),
    )
