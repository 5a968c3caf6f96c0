"""The in-process training and label jobs: what one process (or each rank of a launched world) runs.

`smoothkd.stages` calls these directly in a plain process, or through `smoothkd.distill.launch` on N
processes, whose workers call the same functions; neither knows about caching, which the stages own.
"""

from __future__ import annotations

from pathlib import Path

from smoothkd.artifacts import TRAIN_RECORD, ModelArtifact
from smoothkd.config import RunConfig, output_root
from smoothkd.data.dataset import dataset_key, train_examples
from smoothkd.distill.labels import LabelSpec, LabelStore, PrecomputeResult, precompute_labels
from smoothkd.distill.runtime import main_process_first
from smoothkd.distill.trainer import finetune
from smoothkd.io import content_hash, write_json
from smoothkd.modeling.identity import directory_identity, model_identity
from smoothkd.modeling.models import count_parameters, initial_model, load_causal_lm, resolve_device
from smoothkd.modeling.tokenizer import check_tokenizers_agree, load_run_tokenizer


def train_model(cfg: RunConfig, section: str, role: str, tokenizer_ref: str | Path, data_dir: str | Path,
                out: str | Path, alpha: float = 0.0, labels_dir: str | None = None,
                teacher_path: str | None = None, calibration_temperature: float | None = None,
                work_key: str = ""
                ) -> ModelArtifact:
    """Train `cfg.<section>` (teacher or student) into `out` in this process (or as this rank).

    α > 0 distils from the label store at `labels_dir` or, in online mode, the teacher at `teacher_path`
    (its logits × logit_scale ÷ the calibration temperature being the taught ones).
    Rank 0 writes `out/smoothkd_train.json`, the record the stages' cache reads back.
    """
    out = Path(out)
    model_cfg = getattr(cfg, section)
    train_cfg = model_cfg.train
    store = teacher = None
    if alpha > 0 and cfg.distill.mode == "online":
        teacher = load_causal_lm(teacher_path, cfg.teacher)
    elif alpha > 0:
        store = LabelStore(labels_dir)
    tokenizer = load_run_tokenizer(tokenizer_ref, model_cfg)
    init_key = content_hash(str(tokenizer_ref), model_cfg.model_dump_json(), str(train_cfg.seed))[:16]
    with main_process_first():  # a tiny model is built once, by rank 0, and loaded by every rank
        model = initial_model(model_cfg, tokenizer, output_root(cfg) / "init" / init_key, train_cfg.seed)
    distill = cfg.distill
    # Checkpoints are keyed by everything that shapes the run, so rerunning an interrupted one resumes it
    # (`work_key` names the teacher labels: the store, or the online teacher at its calibration).
    work_dir = output_root(cfg) / "checkpoints" / content_hash(
        role, init_key, dataset_key(data_dir), train_cfg.model_dump_json(), str(alpha),
        distill.model_dump_json() if alpha else "", work_key)[:16]
    parameters = count_parameters(model)  # before LoRA adds adapters or FSDP shards the weights
    result = finetune(model, tokenizer, train_examples(tokenizer, data_dir, train_cfg), train_cfg, out,
                      device=cfg.device, alpha=alpha, distill=distill, label_store=store, teacher=teacher,
                      work_dir=work_dir, lora=model_cfg.lora,
                      teacher_scale=cfg.calibration.logit_scale / (calibration_temperature
                                                                   or cfg.calibration.temperature),
                      desc=f"train {role}")
    artifact = ModelArtifact(
        path=str(out), role=role, parameters=parameters, train_steps=result.steps,
        train_seconds=result.seconds, train_tokens_per_second=result.tokens_per_second,
        loss_history=result.loss_history,
    )
    if result.main_process:
        write_json(out / TRAIN_RECORD, artifact.to_dict())
    return artifact


def shared_tokenizer(cfg: RunConfig, tokenizer_ref: str | Path):
    """The teacher's tokenizer, after checking that the student's is the same (TokenizerMismatchError)."""
    tokenizer = load_run_tokenizer(tokenizer_ref, cfg.teacher)
    student = load_run_tokenizer(cfg.student.name_or_path or tokenizer_ref, cfg.student)
    check_tokenizers_agree(tokenizer, student)
    return tokenizer


def precompute_teacher_labels(cfg: RunConfig, data_dir: str | Path, tokenizer_ref: str | Path,
                              teacher_path: str, calibration_temperature: float | None = None,
                              progress: bool = True
                              ) -> PrecomputeResult:
    """The teacher's top-k labels on the training split, stored under `<output_dir>/labels` (reused when
    an identical store exists); inside a launched world every rank computes its share of the shards."""
    d = cfg.distill
    tokenizer = shared_tokenizer(cfg, tokenizer_ref)
    spec = LabelSpec(top_k=d.top_k, calibration_temperature=calibration_temperature
                     or cfg.calibration.temperature, logit_scale=cfg.calibration.logit_scale,
                     encoding=d.encoding, shard_size=d.shard_size, labels=d.labels, samples=d.samples)
    identity = {
        "teacher": model_identity(teacher_path),
        "tokenizer": directory_identity(tokenizer_ref, ("tokenizer.json", "tokenizer_config.json")),
        "vocab_size": len(tokenizer),  # teacher logits cut to the shared vocabulary
    }
    model = load_causal_lm(teacher_path, cfg.teacher).to(resolve_device(cfg.device))
    examples = train_examples(tokenizer, data_dir, cfg.student.train)
    return precompute_labels(model, examples, output_root(cfg) / "labels", spec, identity,
                             tokenizer.pad_token_id, d.precompute_batch_size, progress, len(tokenizer))
