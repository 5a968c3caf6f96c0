"""Teacher, student and tokenizer checked against each other before anything trains.

Everything here reads configs and tokenizer files only (`AutoConfig`, `AutoTokenizer`), never weights, so
the checks take seconds even for 70B models. Each problem is one line naming the config key and the fix:
a missing path, an unreachable hub id, a directory without safetensors weights, remote code without
`trust_remote_code`, a vocabulary the models cannot embed, too few positions, a missing pad or eos token.

Models may carry more embedding rows than their tokenizer has tokens (Qwen2.5-7B: 152,064 rows for a
151,665-token tokenizer); those rows are padding. The run's shared vocabulary is the tokenizer's length,
and teacher logits are cut to it wherever they are read (`shared_vocab_size`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from smoothkd.config import EvalConfig, ModelConfig, StudentConfig, TeacherConfig, TokenizerConfig
from smoothkd.errors import IncompatibleModelsError, ModelReferenceError, TokenizerMismatchError

# A hub id: `name` or `namespace/name` (letters, digits, `-`, `_`, `.`); anything else is taken for a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def shared_vocab_size(tokenizer) -> int:
    """The ids every model of the run can index: the tokenizer's length (embedding rows beyond it pad)."""
    return len(tokenizer)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "") in ("1", "true")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def check_local_ref(key: str, ref: str, need_weights: bool = True) -> Path | None:
    """The local directory `ref` names (None for a hub id); ModelReferenceError for a bad local path."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and need_weights:
            raise ModelReferenceError(f"{key}={ref}: not a model directory (no config.json); point {key} "
                                      "at a directory written by save_pretrained")
        if need_weights and not any(path.glob("*.safetensors")):
            raise ModelReferenceError(
                f"{key}={ref}: no *.safetensors weights (only safetensors are loaded); convert once with "
                "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
        return path
    if path.exists():
        raise ModelReferenceError(f"{key}={ref}: a file, not a model directory; point {key} at the directory")
    if not _HUB_ID.match(ref) or ref.startswith((".", "~")):
        raise ModelReferenceError(f"{key}={ref}: no such model directory; fix the path, or give a hub id "
                                  "such as Qwen/Qwen2.5-0.5B")
    return None


def _hub_failure(key: str, ref: str, exc: BaseException) -> ModelReferenceError:
    if _offline():
        return ModelReferenceError(
            f"{key}={ref}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; download it once online "
            f"(`hf download {ref}`) or set {key} to a local directory")
    return ModelReferenceError(f"{key}={ref}: not found on the Hugging Face Hub or not reachable "
                               f"({_first_line(exc)}); check the id and the network, and set HF_TOKEN for "
                               "gated models")


def _remote_code(section: str, key: str, ref: str, exc: BaseException) -> ModelReferenceError | None:
    if "trust_remote_code" not in str(exc):
        return None
    return ModelReferenceError(f"{key}={ref}: the model needs its own (remote) code; set "
                               f"{section}.trust_remote_code: true if you trust its repository")


def model_config(section: str, model: ModelConfig):
    """`model`'s transformers config (config.json only); errors name `<section>.name_or_path`."""
    return check_model_ref(f"{section}.name_or_path", model.name_or_path, model.revision,
                           model.trust_remote_code, section)


def check_model_ref(key: str, ref: str, revision: str | None = None, trust_remote_code: bool = False,
                    section: str | None = None):
    """The transformers config of the model `ref` names (config.json only, no weights), or one
    ModelReferenceError naming `key` (and `<section>.trust_remote_code` when remote code is needed)."""
    from transformers import AutoConfig

    local = check_local_ref(key, ref)
    try:
        return AutoConfig.from_pretrained(str(local or ref), revision=revision,
                                          trust_remote_code=trust_remote_code)
    except ValueError as exc:
        remote = _remote_code(section or key.split(".")[0], key, ref, exc)
        if remote:
            raise remote from None
        raise ModelReferenceError(f"{key}={ref}: unreadable model config ({_first_line(exc)}); a newer "
                                  "transformers may know this architecture") from None
    except OSError as exc:
        if local is not None:
            raise ModelReferenceError(f"{key}={ref}: unreadable config.json ({_first_line(exc)})") from None
        raise _hub_failure(key, ref, exc) from None


def load_checked_tokenizer(key: str, ref: str, revision: str | None = None, trust_remote_code: bool = False,
                           section: str | None = None):
    """Load a tokenizer (files only, through `load_tokenizer`), each failure one line naming `key`."""
    from smoothkd.modeling.tokenizer import load_tokenizer

    local = check_local_ref(key, ref, need_weights=False)
    if local is not None and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise ModelReferenceError(f"{key}={ref}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the "
                                  "tokenizer into the directory, or set tokenizer.name_or_path")
    try:
        return load_tokenizer(str(local or ref), revision=revision, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        remote = _remote_code(section or key.split(".")[0], key, ref, exc)
        if remote:
            raise remote from None
        raise ModelReferenceError(f"{key}={ref}: cannot load its tokenizer ({_first_line(exc)})") from None
    except OSError as exc:
        if local is not None:
            raise ModelReferenceError(f"{key}={ref}: cannot load its tokenizer ({_first_line(exc)})"
                                      ) from None
        raise _hub_failure(key, ref, exc) from None


@dataclass(frozen=True)
class ModelShape:
    """What the checks read from one model's config."""

    section: str  # teacher or student
    embedding_rows: int
    max_positions: int | None  # None: the config states no limit
    tokenizer: object | None = None  # the model's own tokenizer, when it ships one

    @property
    def key(self) -> str:
        return f"{self.section}.name_or_path"


def _max_positions(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_shape(section: str, model: ModelConfig, vocab_size: int) -> ModelShape:
    """Embedding rows and positions of `model`: from its config, or the tiny shape built for the tokenizer."""
    if not model.name_or_path:
        return ModelShape(section, vocab_size, model.tiny.max_position_embeddings)
    text = model_config(section, model).get_text_config()
    own = None
    local = Path(model.name_or_path).expanduser()
    if not local.is_dir() or any((local / name).is_file() for name in TOKENIZER_FILES):
        own = load_checked_tokenizer(f"{section}.name_or_path", model.name_or_path, model.revision,
                                     model.trust_remote_code, section)
    return ModelShape(section, int(text.vocab_size), _max_positions(text), own)


@dataclass(frozen=True)
class Compatibility:
    """The checked facts: the shared vocabulary and each model's embedding rows and positions."""

    vocab_size: int
    teacher: ModelShape
    student: ModelShape

    def describe(self) -> str:
        def one(shape: ModelShape) -> str:
            pad = shape.embedding_rows - self.vocab_size
            padded = f" ({pad} padding rows, logits cut to {self.vocab_size})" if pad else ""
            positions = f", {shape.max_positions} positions" if shape.max_positions else ""
            return f"{shape.section} {shape.embedding_rows} embedding rows{padded}{positions}"

        return (f"models compatible: tokenizer of {self.vocab_size} tokens; {one(self.teacher)}; "
                f"{one(self.student)}")


def check_compatibility(tokenizer, tokenizer_key: str, *, teacher: TeacherConfig, student: StudentConfig,
                        eval_cfg: EvalConfig) -> Compatibility:
    """Check teacher, student and the run's tokenizer against each other (configs only); `eval_cfg` gives
    the generation length both models must fit.

    `tokenizer_key` names where the run's tokenizer comes from (e.g. `tokenizer.name_or_path`). Raises
    TokenizerMismatchError or IncompatibleModelsError (one line naming the config keys) on the first problem.
    """
    from smoothkd.modeling.tokenizer import vocab_difference

    vocab = shared_vocab_size(tokenizer)
    for token in ("eos", "pad"):
        if getattr(tokenizer, f"{token}_token_id") is None:
            raise IncompatibleModelsError(f"the run's tokenizer ({tokenizer_key}) has no {token} token: "
                                          "training ends each response with eos and pads batches; use a "
                                          "tokenizer that defines one")
    shapes = model_shape("teacher", teacher, vocab), model_shape("student", student, vocab)
    for shape in shapes:
        if shape.tokenizer is not None:
            differs = vocab_difference(tokenizer, shape.tokenizer)
            if differs:
                raise TokenizerMismatchError(
                    f"{shape.key}'s tokenizer differs from the run's ({tokenizer_key}): {differs}; KD needs "
                    "one shared vocabulary: pick teacher and student of one family")
        if shape.embedding_rows < vocab:
            raise IncompatibleModelsError(
                f"{shape.key} has {shape.embedding_rows} embedding rows, fewer than the {vocab} tokens of "
                f"{tokenizer_key}: ids >= {shape.embedding_rows} cannot be embedded; use the model's own "
                "tokenizer")
    s, e = student.train, eval_cfg
    # The teacher reads the students' examples too (labels, online KD), and both generate in evaluation.
    needs = {"student": [("student.train.max_length", s.max_length),
                         ("student.train.max_prompt_length + eval.max_new_tokens",
                          s.max_prompt_length + e.max_new_tokens)]}
    needs["teacher"] = [*needs["student"], *([("teacher.train.max_length", teacher.train.max_length)]
                                             if teacher.finetune or not teacher.name_or_path else [])]
    for shape in shapes:
        if shape.max_positions is None:
            continue
        for what, length in needs[shape.section]:
            if length > shape.max_positions:
                raise IncompatibleModelsError(
                    f"{shape.key} takes at most {shape.max_positions} positions, but {what} is {length}: "
                    f"lower it to {shape.max_positions} or pick a model with a longer context")
    return Compatibility(vocab, *shapes)


def tokenizer_source(tokenizer_cfg: TokenizerConfig, teacher: ModelConfig) -> tuple[str, str] | None:
    """(config key, reference) of a tokenizer known before the data is read; None when one is trained."""
    if tokenizer_cfg.name_or_path:
        return "tokenizer.name_or_path", tokenizer_cfg.name_or_path
    if teacher.name_or_path:
        return "teacher.name_or_path", teacher.name_or_path
    return None


def check_run_models(tokenizer_ref: str | Path, *, tokenizer_cfg: TokenizerConfig, teacher: TeacherConfig,
                     student: StudentConfig, eval_cfg: EvalConfig) -> Compatibility:
    """`check_compatibility` for the run's tokenizer at `tokenizer_ref` (loaded as the run loads it)."""
    source = tokenizer_source(tokenizer_cfg, teacher)
    key = source[0] if source else "the tokenizer trained on the data"
    tokenizer = load_checked_tokenizer(source[0] if source else "tokenizer", str(tokenizer_ref),
                                       teacher.revision if teacher.name_or_path else None,
                                       teacher.trust_remote_code, "teacher")
    return check_compatibility(tokenizer, key, teacher=teacher, student=student, eval_cfg=eval_cfg)


def preflight(*, tokenizer_cfg: TokenizerConfig, teacher: TeacherConfig, student: StudentConfig,
              eval_cfg: EvalConfig) -> Compatibility | None:
    """Every model reference and, when the tokenizer is known up front, every compatibility check.

    Run before the pipeline starts, in seconds. A tokenizer trained from the data is checked by the
    pipeline's tokenizer step instead, still before the teacher trains; None is returned then.
    """
    for section, model in (("teacher", teacher), ("student", student)):
        if model.name_or_path:  # the references first: a bad one is the first thing to fix
            model_config(section, model)
    source = tokenizer_source(tokenizer_cfg, teacher)
    if source is not None:
        return check_run_models(source[1], tokenizer_cfg=tokenizer_cfg, teacher=teacher, student=student,
                                eval_cfg=eval_cfg)
    if student.name_or_path:
        raise IncompatibleModelsError(
            "student.name_or_path is set but the teacher is built from scratch on a tokenizer trained on the "
            f"data: set tokenizer.name_or_path to {student.name_or_path} (the student's tokenizer)")
    return None
