"""The pipeline's stages as plain functions: ZenML steps wrap these, tests call them directly.

Expensive artifacts (dataset, tokenizer, teacher) are content-addressed under `output_dir`: the key hashes
everything that determines them, so a rerun with unchanged inputs reuses them and a changed input
builds anew. Every artifact directory is written atomically, so a present directory is a complete one.
"""

from __future__ import annotations

import functools
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from smoothkd.config import ModelConfig, RunConfig, TrainConfig
from smoothkd.data.loaders import load_split
from smoothkd.data.prompts import build_prompt, response_text
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


def _finetune(cfg: RunConfig, section: str, role: str, tokenizer_ref, data_dir, out: Path, alpha: float = 0.0,
              labels_dir: str | None = None, teacher_path: str | None = None,
              temperature: float | None = None, work_key: str = "") -> ModelArtifact:
    """Train `cfg.<section>` (teacher or student) into `out`.

    With `train.num_processes > 1` this starts that many processes through `accelerate launch`, each
    calling this same function, and returns what rank 0 recorded.
    """
    from smoothkd.distill.labels import LabelStore
    from smoothkd.distill.trainer import finetune, main_process_first, mixed_precision, world_size
    from smoothkd.modeling.models import count_parameters, load_causal_lm

    model_cfg = getattr(cfg, section)
    train_cfg = model_cfg.train
    if train_cfg.num_processes > 1 and world_size() == 1:
        from smoothkd.distill.launch import launch

        job = {"kind": "finetune", "section": section, "role": role, "tokenizer_ref": str(tokenizer_ref),
               "data_dir": str(data_dir), "out": str(out), "alpha": alpha, "labels_dir": labels_dir,
               "teacher_path": teacher_path, "temperature": temperature, "work_key": work_key}
        return ModelArtifact(**launch(cfg, job, train_cfg.num_processes,
                                      output_root(cfg) / "launch" / _digest(role, str(out)),
                                      mixed_precision(train_cfg, cfg.device), label=role))
    store = teacher = None
    if alpha > 0 and cfg.distill.mode == "online":
        teacher = load_causal_lm(teacher_path, cfg.teacher)
    elif alpha > 0:
        store = LabelStore(labels_dir)
    tokenizer = load_run_tokenizer(cfg, tokenizer_ref, model_cfg)
    init_key = _digest(str(tokenizer_ref), model_cfg.model_dump_json(), str(train_cfg.seed))
    with main_process_first():  # a tiny model is built once, by rank 0, and loaded by every rank
        model = _initial_model(model_cfg, tokenizer, output_root(cfg) / "init" / init_key, train_cfg.seed)
    distill = cfg.distill.model_copy(update={"temperature": temperature or cfg.distill.temperature})
    # Checkpoints are keyed by everything that shapes the run, so rerunning an interrupted one resumes it.
    work_dir = output_root(cfg) / "checkpoints" / _digest(
        role, init_key, dataset_key(data_dir), train_cfg.model_dump_json(), str(alpha),
        distill.model_dump_json() if alpha else "", work_key)
    parameters = count_parameters(model)  # before LoRA adds adapters or FSDP shards the weights
    result = finetune(model, tokenizer, _train_examples(tokenizer, data_dir, train_cfg), train_cfg, out,
                      device=cfg.device, alpha=alpha, distill=distill, label_store=store, teacher=teacher,
                      work_dir=work_dir, lora=model_cfg.lora)
    artifact = ModelArtifact(
        path=str(out), role=role, parameters=parameters, train_steps=result.steps,
        train_seconds=result.seconds, train_tokens_per_second=result.tokens_per_second,
        loss_history=result.loss_history,
    )
    if result.main_process:
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
    return _finetune(cfg, "teacher", "teacher", tokenizer_ref, data_dir, out)


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
    """Precompute (or reuse) the teacher's top-k labels on the training split; returns PrecomputeResult.

    With `student.train.num_processes > 1` the shards are split over that many processes (one teacher per
    device), started through `accelerate launch` like the students' training.
    """
    from smoothkd.distill.labels import LabelSpec, PrecomputeResult, directory_identity, precompute_labels
    from smoothkd.distill.trainer import world_size
    from smoothkd.modeling.models import load_causal_lm, resolve_device

    d = cfg.distill
    tokenizer = load_run_tokenizer(cfg, tokenizer_ref)
    check_tokenizers_agree(tokenizer, load_run_tokenizer(cfg, cfg.student.name_or_path or tokenizer_ref,
                                                     cfg.student))
    n = cfg.student.train.num_processes
    if n > 1 and world_size() == 1:
        from smoothkd.distill.launch import launch

        job = {"kind": "labels", "data_dir": str(data_dir), "tokenizer_ref": str(tokenizer_ref),
               "teacher_path": str(teacher_path), "temperature": temperature, "progress": progress}
        job_dir = output_root(cfg) / "launch" / _digest("labels", str(data_dir), str(teacher_path))
        return PrecomputeResult(**launch(cfg, job, n, job_dir, label="teacher_labels"))
    spec = LabelSpec(top_k=d.top_k, temperature=temperature or d.temperature, encoding=d.encoding,
                     shard_size=d.shard_size)
    identity = {
        "teacher": model_identity(teacher_path),
        "tokenizer": directory_identity(tokenizer_ref, ("tokenizer.json", "tokenizer_config.json")),
    }
    model = load_causal_lm(teacher_path, cfg.teacher).to(resolve_device(cfg.device))
    examples = _train_examples(tokenizer, data_dir, cfg.student.train)
    return precompute_labels(model, examples, output_root(cfg) / "labels", spec, identity,
                             tokenizer.pad_token_id, d.precompute_batch_size, progress)


def student_name(alpha: float) -> str:
    return "sft" if alpha == 0 else f"kd_a{alpha:g}"


def train_student(cfg: RunConfig, data_dir: str | Path, tokenizer_ref: str | Path, alpha: float = 0.0,
                  labels_dir: str | None = None, teacher_path: str | None = None,
                  temperature: float | None = None) -> ModelArtifact:
    """Finetune one student: the SFT baseline (α = 0) or a KD student on stored or online teacher labels.

    Cached like the teacher: the same data, tokenizer, student config, α, distillation settings and label
    store (or online teacher) give the same student directory, and a rerun reuses it.
    """
    name = student_name(alpha)
    teacher_ref = str(labels_dir or teacher_path) if alpha else ""
    distill = cfg.distill.model_copy(update={"temperature": temperature or cfg.distill.temperature})
    key = _digest(name, dataset_key(data_dir), str(tokenizer_ref), cfg.student.model_dump_json(), cfg.device,
                  distill.model_dump_json() if alpha else "", teacher_ref)
    out = output_root(cfg) / "students" / key
    record = out / "smoothkd_train.json"
    if record.exists():
        return ModelArtifact(**{**read_json(record), "cached": True})
    return _finetune(cfg, "student", f"student_{name}", tokenizer_ref, data_dir, out, alpha=alpha,
                     labels_dir=labels_dir, teacher_path=teacher_path, temperature=temperature,
                     work_key=teacher_ref)


# ---- evaluation ----


def dataset_lexicon(data_dir: str | Path) -> dict[str, list[str]] | None:
    """The embedded corpus's entity lexicon for fact matching; None for datasets from elsewhere."""
    from smoothkd.data.corpus import load_lexicon

    corpus = read_json(Path(data_dir) / "manifest.json").get("embedded_corpus")
    return load_lexicon(corpus) if corpus and (Path(corpus) / "lexicon.json").exists() else None


MODEL_FILES = ("*.safetensors", "config.json")


def model_identity(model_path: str | Path) -> str:
    """sha256 over a model directory's weights and config (the id itself for a hub name).

    Label store, detectors, evaluations and the registry all key on it; within one process (the local
    orchestrator runs every step in one) the hash is computed once per unchanged set of files.
    """
    path = Path(model_path)
    files = sorted(p for pattern in MODEL_FILES for p in path.glob(pattern)) if path.is_dir() else []
    return _identity(str(model_path), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.lru_cache(maxsize=64)
def _identity(model_path: str, file_stats: tuple) -> str:
    # `file_stats` (path, size, mtime) is only the cache key: a rewritten file gets hashed again.
    from smoothkd.distill.labels import directory_identity

    return directory_identity(model_path, MODEL_FILES)


def detector_rows(cfg: RunConfig, data_dir: str | Path) -> list[dict]:
    """Held-out instruction rows with a context for the detector: the validation split's, topped up to
    `eval.detector_rows` from a second embedded corpus (another seed) when the data is embedded."""
    from smoothkd.data.corpus import corpus_is_complete, generate_corpus, read_jsonl

    rows = [r for r in read_split(data_dir, "validation") if r.get("context")]
    need = cfg.eval.detector_rows - len(rows)
    if need <= 0 or not _uses_embedded(cfg):
        return rows[: cfg.eval.detector_rows]
    seen = {r.get("context") or r.get("article") or r.get("document")
            for split in ("train", "validation", *EVAL_KINDS) for r in read_split(data_dir, split)}
    extra = output_root(cfg) / "corpus" / f"detector-{cfg.data.seed + 1}-{need}"
    if not corpus_is_complete(extra):
        # About 60% of instruction rows carry a context; twice the need leaves room for the filter.
        generate_corpus(extra, seed=cfg.data.seed + 1, n_instruction=2 * need, n_cnndm=1, n_xsum=1)
    fresh = [r for r in read_jsonl(extra / "instruction.jsonl") if r["context"] and r["context"] not in seen]
    return rows + fresh[:need]


def prepare_detector(cfg: RunConfig, data_dir: str | Path, model_paths: list[str], progress: bool = True
                     ) -> tuple[Path, bool]:
    """Fit (or reuse) a factual-rate detector on the pooled generations of `model_paths` for held-out rows.

    Lookback features are per (layer, head), so a detector only reads models of the shape it was fitted
    on: the pipeline fits one on the teacher, and one on all students together, so that every student is
    scored by a detector that has seen its kind of attention. Returns (detector.json, cached). Raises
    DetectorError when the generations hold only one class.
    """
    import numpy as np

    from smoothkd.evaluation.detector import detector_examples, fit_detector
    from smoothkd.modeling.models import load_causal_lm, resolve_device
    from smoothkd.modeling.tokenizer import load_tokenizer

    e, train = cfg.eval, cfg.student.train
    key = _digest(*map(model_identity, model_paths), dataset_key(data_dir), str(e.max_new_tokens),
                  str(train.max_prompt_length), str(cfg.data.seed), str(e.detector_rows), cfg.device)
    path = output_root(cfg) / "detectors" / key / "detector.json"
    if path.exists():
        return path, True
    rows, lexicon = detector_rows(cfg, data_dir), dataset_lexicon(data_dir)
    features, labels = [], []
    for model_path in model_paths:
        model = load_causal_lm(model_path).to(resolve_device(cfg.device))
        data = detector_examples(model, load_tokenizer(str(model_path)), rows, lexicon, e.batch_size,
                                 e.max_new_tokens, train.max_prompt_length, progress)
        features.append(data.features)
        labels.append(data.labels)
    fit_detector(np.concatenate(features), np.concatenate(labels), seed=cfg.data.seed).save(path)
    return path, False


def evaluate_model(cfg: RunConfig, model_path: str | Path, data_dir: str | Path,
                   detector_path: str | Path | None = None, progress: bool = True) -> dict:
    """Evaluate a model (see `smoothkd.evaluation.evaluate`), cached by model, data, eval config, detector.

    The result gains `dir`, the directory holding `result.json` and the per-split localization tables,
    and `identity`, what the scores depend on (`smoothkd.registry.identity`), as a dict.
    """
    from smoothkd.evaluation.evaluate import evaluate_model as evaluate
    from smoothkd.registry.identity import evaluation_identity

    key = _digest(model_identity(model_path), dataset_key(data_dir), cfg.eval.model_dump_json(),
                  str(cfg.student.train.max_prompt_length), cfg.device,
                  sha256_file(detector_path) if detector_path else "")
    out = output_root(cfg) / "evaluations" / key
    if not (out / "result.json").exists():
        with atomic_dir(out) as tmp:
            write_json(tmp / "result.json", evaluate(cfg, model_path, data_dir, tmp, detector_path,
                                                     progress=progress))
    identity = evaluation_identity(cfg.eval, data_dir, cfg.student.train.max_prompt_length, detector_path)
    return {**read_json(out / "result.json"), "dir": str(out), "identity": identity.to_dict()}


def resolve_model_ref(cfg: RunConfig, ref: str) -> Path:
    """A local model directory for `ref`: a path as is, or a registry reference (`models:/NAME@ALIAS`,
    `models:/NAME/VERSION`) loaded from the config's MLflow store and saved once under the output dir."""
    import mlflow

    from smoothkd.errors import EvaluationModelError

    if not ref.startswith("models:/"):
        if not (Path(ref) / "config.json").exists():
            raise EvaluationModelError(f"--model {ref}: not a model directory (no config.json)")
        return Path(ref)
    uri = tracking_uri(cfg)
    client = mlflow.MlflowClient(uri)
    name, _, selector = ref.removeprefix("models:/").partition("@")
    try:
        if selector:
            version = str(client.get_model_version_by_alias(name, selector).version)
        else:
            name, _, version = name.partition("/")
            client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as err:
        raise EvaluationModelError(f"--model {ref}: not in the registry at {uri} "
                                   f"({str(err).splitlines()[0]})") from err
    out = output_root(cfg) / "registry_models" / f"{name}-v{version}"
    if not (out / "config.json").exists():
        # Fetched through this config's store, leaving the process-wide tracking URI alone.
        with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as download:
            local = mlflow.artifacts.download_artifacts(client.get_model_version_download_uri(name, version),
                                                        dst_path=download, tracking_uri=uri)
            components = mlflow.transformers.load_model(local, return_type="components")
            components["model"].save_pretrained(tmp)
            components["tokenizer"].save_pretrained(tmp)
    return out
