"""The pipeline's stages as plain functions: ZenML steps wrap these, tests call them directly.

Expensive artifacts (dataset, tokenizer, teacher) are content-addressed under `output_dir`: the key hashes
everything that determines them, so a rerun with unchanged inputs reuses them and a changed input
builds anew. Every artifact directory is written atomically, so a present directory is a complete one.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from smoothkd.config import ModelConfig, RunConfig, TrainConfig
from smoothkd.data.loaders import load_split
from smoothkd.data.prompts import build_prompt, eval_prompt, response_text
from smoothkd.data.schema import REFERENCE_COLUMN, SOURCE_COLUMN
from smoothkd.io import atomic_dir, read_json, sha256_file, write_json

EVAL_KINDS = ("cnndm", "xsum")


def _digest(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def output_root(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir).resolve()


def tracking_uri(cfg: RunConfig) -> str:
    """The MLflow store: the configured URI, or a sqlite file under output_dir."""
    return cfg.tracking.tracking_uri or f"sqlite:///{output_root(cfg) / 'mlflow.db'}"


# ---- data ----


def embedded_corpus_dir(cfg: RunConfig) -> Path:
    """Generate (once per seed and size) the embedded corpus and return its directory."""
    from smoothkd.data.corpus import corpus_is_complete, generate_corpus

    key = cfg.fingerprint("data.seed", "data.embedded")
    out = output_root(cfg) / "corpus" / key
    if not corpus_is_complete(out):
        e = cfg.data.embedded
        generate_corpus(out, seed=cfg.data.seed, n_instruction=e.n_instruction, n_cnndm=e.n_cnndm,
                        n_xsum=e.n_xsum, trap_rate=e.trap_rate)
    return out


def _uses_embedded(cfg: RunConfig) -> bool:
    return any(getattr(cfg.data, k).source == "embedded" for k in ("instruction", *EVAL_KINDS))


def prepare_data(cfg: RunConfig) -> Path:
    """Load every split, hold out an instruction validation split, write them as one dataset directory.

    Returns `<output_dir>/datasets/<hash>` holding train/validation/cnndm/xsum jsonl and a manifest.
    """
    import json

    embedded = embedded_corpus_dir(cfg) if _uses_embedded(cfg) else None
    splits = {"instruction": load_split("instruction", cfg.data.instruction, embedded)}
    for kind in EVAL_KINDS:
        splits[kind] = load_split(kind, getattr(cfg.data, kind), embedded)
        if cfg.eval.max_examples:
            splits[kind] = splits[kind][: cfg.eval.max_examples]
    rows = splits.pop("instruction")
    order = list(range(len(rows)))
    random.Random(cfg.data.seed).shuffle(order)
    n_val = int(round(len(rows) * cfg.data.validation_fraction))
    splits["validation"] = [rows[i] for i in sorted(order[:n_val])]
    splits["train"] = [rows[i] for i in sorted(order[n_val:])]

    texts = {name: "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in split)
             for name, split in sorted(splits.items())}
    key = _digest(*(f"{name}:{_digest(text)}" for name, text in texts.items()))
    out = output_root(cfg) / "datasets" / key
    if not (out / "manifest.json").exists():
        with atomic_dir(out) as tmp:
            for name, text in texts.items():
                (tmp / f"{name}.jsonl").write_text(text, encoding="utf-8")
            write_json(tmp / "manifest.json", {
                "key": key,
                "counts": {name: len(split) for name, split in splits.items()},
                "files": {f"{name}.jsonl": sha256_file(tmp / f"{name}.jsonl") for name in texts},
                "embedded_corpus": str(embedded) if embedded else None,
            })
    return out


def read_split(data_dir: str | Path, name: str) -> list[dict]:
    import json

    with open(Path(data_dir) / f"{name}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def dataset_key(data_dir: str | Path) -> str:
    return read_json(Path(data_dir) / "manifest.json")["key"]


# ---- tokenizer and models ----


def prepare_tokenizer(cfg: RunConfig, data_dir: str | Path) -> Path | str:
    """The tokenizer shared by teacher and student: configured, the teacher's, or BPE trained on the data."""
    from smoothkd.modeling.tokenizer import train_bpe_tokenizer

    configured = cfg.tokenizer.name_or_path or cfg.teacher.name_or_path
    if configured:
        return configured
    key = _digest(dataset_key(data_dir), str(cfg.tokenizer.vocab_size))
    out = output_root(cfg) / "tokenizers" / key
    if not out.exists():
        rows = read_split(data_dir, "train")
        texts = (build_prompt(r["instruction"], r["context"], r["category"]) + response_text(r["response"])
                 for r in rows)
        train_bpe_tokenizer(texts, out, cfg.tokenizer.vocab_size)
    return out


def load_run_tokenizer(cfg: RunConfig, tokenizer_ref: str | Path, model_cfg: ModelConfig | None = None):
    """The run's tokenizer, loaded with a model section's revision and remote-code setting (the teacher's)."""
    from smoothkd.modeling.tokenizer import load_tokenizer

    model_cfg = model_cfg or cfg.teacher
    return load_tokenizer(str(tokenizer_ref), revision=model_cfg.revision if model_cfg.name_or_path else None,
                          trust_remote_code=model_cfg.trust_remote_code)


def _initial_model(model_cfg: ModelConfig, tokenizer, init_dir: Path, seed: int):
    """Load the configured model, or build a tiny Llama of the configured shape and load it back."""
    from smoothkd.modeling.models import build_tiny_llama, load_causal_lm

    if model_cfg.name_or_path:
        return load_causal_lm(model_cfg.name_or_path, model_cfg)
    if not init_dir.exists():
        build_tiny_llama(tokenizer, model_cfg.tiny, init_dir, seed=seed)
    return load_causal_lm(init_dir, model_cfg)


@dataclass
class ModelArtifact:
    """A trained (or loaded) model directory plus what its training recorded."""

    path: str
    role: str
    parameters: int
    cached: bool = False
    train_steps: int = 0
    train_seconds: float = 0.0
    train_tokens_per_second: float = 0.0
    loss_history: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _train_examples(tokenizer, data_dir, train_cfg: TrainConfig) -> list[dict]:
    from smoothkd.data.tokenize import encode_instruction_rows

    return encode_instruction_rows(tokenizer, read_split(data_dir, "train"), train_cfg.max_length,
                                   train_cfg.max_prompt_length)


def _finetune(cfg: RunConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, role: str, tokenizer_ref,
              data_dir, out: Path, alpha: float = 0.0, label_store=None, teacher=None,
              temperature: float | None = None, work_key: str = "") -> ModelArtifact:
    from smoothkd.distill.trainer import finetune
    from smoothkd.modeling.models import count_parameters

    tokenizer = load_run_tokenizer(cfg, tokenizer_ref, model_cfg)
    init_key = _digest(str(tokenizer_ref), model_cfg.model_dump_json(), str(train_cfg.seed))
    model = _initial_model(model_cfg, tokenizer, output_root(cfg) / "init" / init_key, train_cfg.seed)
    distill = cfg.distill.model_copy(update={"temperature": temperature or cfg.distill.temperature})
    # Checkpoints are keyed by everything that shapes the run, so rerunning an interrupted one resumes it.
    work_dir = output_root(cfg) / "checkpoints" / _digest(
        role, init_key, dataset_key(data_dir), train_cfg.model_dump_json(), str(alpha),
        distill.model_dump_json() if alpha else "", work_key)
    result = finetune(model, tokenizer, _train_examples(tokenizer, data_dir, train_cfg), train_cfg, out,
                      device=cfg.device, alpha=alpha, distill=distill, label_store=label_store,
                      teacher=teacher, work_dir=work_dir)
    artifact = ModelArtifact(
        path=str(out), role=role, parameters=count_parameters(model), train_steps=result.steps,
        train_seconds=result.seconds, train_tokens_per_second=result.tokens_per_second,
        loss_history=result.loss_history,
    )
    write_json(out / "smoothkd_train.json", artifact.to_dict())
    return artifact


def prepare_teacher(cfg: RunConfig, data_dir: str | Path, tokenizer_ref: str | Path) -> ModelArtifact:
    """The teacher: loaded as is, or finetuned on the instruction split (cached by its inputs)."""
    from smoothkd.modeling.models import count_parameters, load_causal_lm

    t = cfg.teacher
    if t.name_or_path and not t.finetune:
        return ModelArtifact(path=t.name_or_path, role="teacher",
                             parameters=count_parameters(load_causal_lm(t.name_or_path, t)))
    key = _digest(dataset_key(data_dir), str(tokenizer_ref), t.model_dump_json(), cfg.device)
    out = output_root(cfg) / "teachers" / key
    record = out / "smoothkd_train.json"
    if record.exists():
        return ModelArtifact(**{**read_json(record), "cached": True})
    return _finetune(cfg, t, t.train, "teacher", tokenizer_ref, data_dir, out)


def check_tokenizers_agree(teacher_tokenizer, student_tokenizer) -> None:
    """Soft labels index the teacher's vocabulary: the student's must be the same token for token."""
    from smoothkd.errors import TokenizerMismatchError

    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab != s_vocab:
        differing = sorted(set(t_vocab.items()) ^ set(s_vocab.items()))[:3]
        raise TokenizerMismatchError(
            f"teacher and student tokenizers differ ({len(t_vocab)} vs {len(s_vocab)} tokens; e.g. "
            f"{differing}); KD needs one shared vocabulary: pick a student of the teacher's family")


def teacher_labels(cfg: RunConfig, data_dir: str | Path, tokenizer_ref: str | Path, teacher_path: str,
                   temperature: float | None = None, progress: bool = True):
    """Precompute (or reuse) the teacher's top-k labels on the training split; returns PrecomputeResult."""
    from smoothkd.distill.labels import LabelSpec, directory_identity, precompute_labels
    from smoothkd.modeling.models import load_causal_lm, resolve_device

    d = cfg.distill
    tokenizer = load_run_tokenizer(cfg, tokenizer_ref)
    check_tokenizers_agree(tokenizer, load_run_tokenizer(cfg, cfg.student.name_or_path or tokenizer_ref,
                                                     cfg.student))
    spec = LabelSpec(top_k=d.top_k, temperature=temperature or d.temperature, encoding=d.encoding,
                     shard_size=d.shard_size)
    identity = {
        "teacher": directory_identity(teacher_path, ("*.safetensors", "config.json")),
        "tokenizer": directory_identity(tokenizer_ref, ("tokenizer.json", "tokenizer_config.json")),
    }
    model = load_causal_lm(teacher_path, cfg.teacher).to(resolve_device(cfg.device))
    examples = _train_examples(tokenizer, data_dir, cfg.student.train)
    return precompute_labels(model, examples, output_root(cfg) / "labels", spec, identity,
                             tokenizer.pad_token_id, d.precompute_batch_size, progress)


def student_name(alpha: float) -> str:
    return "sft" if alpha == 0 else f"kd_a{alpha:g}"


def train_student(cfg: RunConfig, data_dir: str | Path, tokenizer_ref: str | Path, run_dir: str | Path,
                  alpha: float = 0.0, labels_dir: str | None = None, teacher_path: str | None = None,
                  temperature: float | None = None) -> ModelArtifact:
    """Finetune one student: the SFT baseline (α = 0) or a KD student on stored or online teacher labels."""
    from smoothkd.distill.labels import LabelStore
    from smoothkd.modeling.models import load_causal_lm

    store = teacher = None
    if alpha > 0 and cfg.distill.mode == "online":
        teacher = load_causal_lm(teacher_path, cfg.teacher)
    elif alpha > 0:
        store = LabelStore(labels_dir)
    name = student_name(alpha)
    return _finetune(cfg, cfg.student, cfg.student.train, f"student_{name}", tokenizer_ref, data_dir,
                     Path(run_dir) / f"student_{name}", alpha=alpha, label_store=store, teacher=teacher,
                     temperature=temperature, work_key=str(labels_dir or teacher_path) if alpha else "")


# ---- evaluation ----


def evaluate_model(cfg: RunConfig, model_path: str | Path, data_dir: str | Path, tokenizer_ref=None,
                   progress: bool = True) -> dict:
    """Generate summaries on each evaluation split and score them with ROUGE.

    Returns `{"metrics": {"cnndm/rougeLsum": ..., ...}, "predictions": {"cnndm": [...], ...}}`.
    """
    from smoothkd.evaluation.generation import generate
    from smoothkd.evaluation.rouge import rouge
    from smoothkd.modeling.models import load_causal_lm, resolve_device
    from smoothkd.modeling.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_ref or model_path))
    model = load_causal_lm(model_path).to(resolve_device(cfg.device))
    metrics: dict[str, float] = {}
    predictions: dict[str, list[str]] = {}
    for kind in cfg.eval.splits:
        rows = read_split(data_dir, kind)
        prompts = [eval_prompt(kind, r[SOURCE_COLUMN[kind]]) for r in rows]
        preds = generate(model, tokenizer, prompts, batch_size=cfg.eval.batch_size,
                         max_new_tokens=cfg.eval.max_new_tokens,
                         max_prompt_length=cfg.student.train.max_prompt_length, progress=progress,
                         desc=f"generate {kind}")
        scores = rouge(preds, [r[REFERENCE_COLUMN[kind]] for r in rows], cfg.eval.use_stemmer)
        metrics.update({f"{kind}/{name}": value for name, value in scores.items()})
        predictions[kind] = preds
    return {"metrics": metrics, "predictions": predictions}
