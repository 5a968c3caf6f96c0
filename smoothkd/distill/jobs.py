"""The in-process training and label jobs: what one process (or each rank of a launched world) runs.

`smoothkd.stages` calls these directly in a plain process, or through `smoothkd.distill.launch` on N
processes, whose workers call the same functions with the same arguments; neither knows about caching,
which the stages own. Each job takes the config sections it reads as keyword arguments, and plain values
(paths as text, the device, the run's output root `root`) besides, so that a launched job is those
sections and values written to JSON.
"""

from __future__ import annotations

from pathlib import Path

from smoothkd.artifacts import TRAIN_RECORD, ModelArtifact
from smoothkd.config import (
    CalibrationConfig,
    DistillConfig,
    ModelConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)
from smoothkd.data.dataset import train_examples, training_key
from smoothkd.distill.crosstok import METHOD_VERSION, CrossTokenizer, teacher_window
from smoothkd.distill.labels import LabelSpec, LabelStore, PrecomputeResult, precompute_labels
from smoothkd.distill.runtime import intra_op_threads, main_process_first, runtime_record
from smoothkd.distill.trainer import finetune
from smoothkd.io import content_hash, write_json
from smoothkd.modeling.identity import directory_identity, model_identity
from smoothkd.modeling.models import count_parameters, initial_model, load_causal_lm, resolve_device
from smoothkd.modeling.tokenizer import check_tokenizers_agree, load_run_tokenizer

TOKENIZER_IDENTITY_FILES = ("tokenizer.json", "tokenizer_config.json")


def paired_with_teacher(examples: list[dict], tokenizer, data_dir: str | Path, train_cfg: TrainConfig,
                        teacher, teacher_tokenizer_ref: str, teacher_cfg: ModelConfig
                        ) -> tuple[list[dict], CrossTokenizer, int]:
    """The student's `examples` (the rows of `data_dir` encoded by `tokenizer` under `train_cfg`) paired with
    the `teacher` model's own encoding of them (its tokenizer at `teacher_tokenizer_ref`, loaded with
    `teacher_cfg`); with the CrossTokenizer between the two and the teacher's pad id."""
    teacher_tokenizer = load_run_tokenizer(teacher_tokenizer_ref, teacher_cfg)
    # The teacher reads the same rows in its own tokens, within a window that covers the student's.
    window = train_cfg.model_copy(update={"max_length": teacher_window(teacher, train_cfg.max_length)})
    cross = CrossTokenizer.from_tokenizers(teacher_tokenizer, tokenizer)
    examples = cross.pair(examples, train_examples(teacher_tokenizer, data_dir, window))
    return examples, cross, teacher_tokenizer.pad_token_id


def train_model(role: str, tokenizer_ref: str | Path, data_dir: str | Path, out: str | Path, *,
                model_cfg: TeacherConfig | StudentConfig, teacher_cfg: ModelConfig, distill: DistillConfig,
                calibration: CalibrationConfig, root: str | Path, device: str, alpha: float = 0.0,
                labels_dir: str | None = None, teacher_path: str | None = None,
                calibration_temperature: float | None = None, work_key: str = "",
                teacher_tokenizer_ref: str | None = None) -> ModelArtifact:
    """Train the model `model_cfg` describes (teacher or student) into `out` in this process (or as this
    rank); its initial tiny model and its checkpoints live under the run's output root `root`.

    α > 0 distils from the label store at `labels_dir` or, in online mode, the teacher at `teacher_path`
    (loaded with `teacher_cfg`; its logits × logit_scale ÷ the calibration temperature being the taught
    ones). Rank 0 writes `out/smoothkd_train.json`, the record the stages' cache reads back. An online
    teacher with its own tokenizer at `teacher_tokenizer_ref` reads its own encoding of every example.
    """
    out, root = Path(out), Path(root)
    train_cfg = model_cfg.train
    store = teacher = None
    if alpha > 0 and distill.mode == "online":
        teacher = load_causal_lm(teacher_path, teacher_cfg)
    elif alpha > 0:
        store = LabelStore(labels_dir)
    tokenizer = load_run_tokenizer(tokenizer_ref, model_cfg)
    init_key = content_hash(str(tokenizer_ref), model_cfg.model_dump_json(), str(train_cfg.seed))[:16]
    with main_process_first():  # a tiny model is built once, by rank 0, and loaded by every rank
        model = initial_model(model_cfg, tokenizer, root / "init" / init_key, train_cfg.seed)
    # Checkpoints are keyed by everything that shapes the run, so rerunning an interrupted one resumes it
    # (`work_key` names the teacher labels: the store, or the online teacher at its calibration).
    work_dir = root / "checkpoints" / content_hash(
        role, init_key, training_key(data_dir), train_cfg.model_dump_json(), str(alpha),
        distill.student_key() if alpha else "", work_key)[:16]
    parameters = count_parameters(model)  # before LoRA adds adapters or FSDP shards the weights
    examples = train_examples(tokenizer, data_dir, train_cfg)
    cross = teacher_pad = None
    if teacher is not None and teacher_tokenizer_ref:
        examples, cross, teacher_pad = paired_with_teacher(
            examples, tokenizer, data_dir, train_cfg, teacher, teacher_tokenizer_ref, teacher_cfg)
    with intra_op_threads(train_cfg.threads):
        result = finetune(model, tokenizer, examples, train_cfg, out,
                          device=device, alpha=alpha, distill=distill, label_store=store, teacher=teacher,
                          work_dir=work_dir, lora=model_cfg.lora,
                          teacher_scale=calibration.logit_scale / calibration.taught_temperature(
                              calibration_temperature),
                          desc=f"train {role}", cross=cross, teacher_pad_token_id=teacher_pad)
    artifact = ModelArtifact(
        path=str(out), role=role, parameters=parameters, train_steps=result.steps,
        train_seconds=result.seconds, train_tokens_per_second=result.tokens_per_second,
        loss_history=result.loss_history, runtime=runtime_record(train_cfg.threads),
    )
    if result.main_process:
        write_json(out / TRAIN_RECORD, artifact.to_dict())
    return artifact


def shared_tokenizer(tokenizer_ref: str | Path, teacher: ModelConfig, student: ModelConfig):
    """The teacher's tokenizer, after checking that the student's is the same (TokenizerMismatchError)."""
    tokenizer = load_run_tokenizer(tokenizer_ref, teacher)
    other = load_run_tokenizer(student.name_or_path or tokenizer_ref, student)
    check_tokenizers_agree(tokenizer, other)
    return tokenizer


def precompute_teacher_labels(data_dir: str | Path, tokenizer_ref: str | Path, teacher_path: str, *,
                              teacher: TeacherConfig, student: StudentConfig, distill: DistillConfig,
                              calibration: CalibrationConfig, root: str | Path, device: str,
                              calibration_temperature: float | None = None, progress: bool = True,
                              teacher_tokenizer_ref: str | None = None) -> PrecomputeResult:
    """The teacher's top-k labels on the training split (encoded as the student trains on it), stored
    under `<root>/labels` (reused when an identical store exists); inside a launched world every rank
    computes its share of the shards. With `teacher_tokenizer_ref` (a teacher with its own tokenizer) the
    teacher reads its own encoding and the labels are its targets projected onto the student's ids."""
    d = distill
    if teacher_tokenizer_ref:
        tokenizer = load_run_tokenizer(tokenizer_ref, student)
    else:
        tokenizer = shared_tokenizer(tokenizer_ref, teacher, student)
    spec = LabelSpec(top_k=d.top_k, calibration_temperature=calibration.taught_temperature(
                         calibration_temperature), logit_scale=calibration.logit_scale,
                     encoding=d.encoding, shard_size=d.shard_size, labels=d.labels, samples=d.samples)
    identity = {
        "teacher": model_identity(teacher_path),
        "tokenizer": directory_identity(tokenizer_ref, TOKENIZER_IDENTITY_FILES),
        "vocab_size": len(tokenizer),  # teacher logits cut to the shared vocabulary
    }
    model = load_causal_lm(teacher_path, teacher).to(resolve_device(device))
    examples = train_examples(tokenizer, data_dir, student.train)
    cross, pad = None, tokenizer.pad_token_id
    if teacher_tokenizer_ref:
        identity["teacher_tokenizer"] = directory_identity(teacher_tokenizer_ref, TOKENIZER_IDENTITY_FILES)
        identity["cross_tokenizer"] = METHOD_VERSION
        examples, cross, pad = paired_with_teacher(
            examples, tokenizer, data_dir, student.train, model, teacher_tokenizer_ref, teacher)
    return precompute_labels(model, examples, Path(root) / "labels", spec, identity, pad,
                             d.precompute_batch_size, progress, len(tokenizer), cross)
