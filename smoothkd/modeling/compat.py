"""Teacher, student and tokenizer checked against each other before anything trains.

Everything here reads configs and tokenizer files only (`AutoConfig`, `AutoTokenizer`), never weights, so
the checks take seconds even for 70B models. Each problem is one line naming the config key and the fix:
a missing path, an unreachable hub id, a directory without safetensors weights, remote code without
`trust_remote_code`, a vocabulary the models cannot embed, too few positions, a missing pad or eos token.

A teacher whose tokenizer differs from the run's is distilled across tokenizers (`distill.cross_tokenizer`):
then its embedding rows are checked against its own tokenizer, and both tokenizers must spell a probe text
byte for byte, which the alignment by byte offsets needs.

Models may carry more embedding rows than their tokenizer has tokens (Qwen2.5-7B: 152,064 rows for a
151,665-token tokenizer); those rows are padding. The run's shared vocabulary is the tokenizer's length,
and teacher logits are cut to it wherever they are read (`shared_vocab_size`).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smoothkd.config import (
    DistillConfig,
    EvalConfig,
    ModelConfig,
    StudentConfig,
    TeacherConfig,
    TokenizerConfig,
)
from smoothkd.errors import IncompatibleModelsError, ModelReferenceError, TokenizerMismatchError

# A hub id: `name` or `namespace/name` (letters, digits, `-`, `_`, `.`); anything else is taken for a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# What the preflight says a cross-tokenizer run does (the method: smoothkd.distill.crosstok).
CROSS_TOKENIZER_METHOD = ("distilled across tokenizers: positions aligned by byte offsets, the teacher's "
                          "next-token mass projected onto the longest student token each candidate's text "
                          "begins with, observed multi-token spans followed along the teacher's own pass")
# Multi-byte characters, digits, punctuation, a newline: what a lossless tokenizer spells back exactly.
_PROBE_TEXT = "Café déjà vu: 5 € in 東京, said \"O'Neil\" (12.5 percent)\n  ok"


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


def ships_tokenizer(ref: str) -> bool:
    """Whether the model `ref` names comes with a tokenizer: a hub id is taken to, a local directory when it
    holds tokenizer files (TOKENIZER_FILES)."""
    local = Path(ref).expanduser()
    return not local.is_dir() or any((local / name).is_file() for name in TOKENIZER_FILES)


def load_checked_tokenizer(key: str, ref: str, revision: str | None = None, trust_remote_code: bool = False,
                           section: str | None = None):
    """Load a tokenizer (files only, through `load_tokenizer`), each failure one line naming `key`."""
    from smoothkd.modeling.tokenizer import load_tokenizer

    local = check_local_ref(key, ref, need_weights=False)
    if local is not None and not ships_tokenizer(ref):
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
    own = (load_checked_tokenizer(f"{section}.name_or_path", model.name_or_path, model.revision,
                                  model.trust_remote_code, section)
           if ships_tokenizer(model.name_or_path) else None)
    return ModelShape(section, int(text.vocab_size), _max_positions(text), own)


@dataclass(frozen=True)
class Compatibility:
    """The checked facts: the shared vocabulary and each model's embedding rows and positions; across
    tokenizers, the teacher's tokenizer (config key and length)."""

    vocab_size: int
    teacher: ModelShape
    student: ModelShape
    cross_tokenizer: tuple[str, int] | None = None

    def describe(self) -> str:
        def one(shape: ModelShape) -> str:
            # Across tokenizers the teacher's rows belong to its own tokenizer.
            own = self.cross_tokenizer[1] if self.cross_tokenizer and shape.section == "teacher" else None
            vocab = own or self.vocab_size
            pad = shape.embedding_rows - vocab
            padded = f" ({pad} padding rows, logits cut to {vocab})" if pad else ""
            positions = f", {shape.max_positions} positions" if shape.max_positions else ""
            return f"{shape.section} {shape.embedding_rows} embedding rows{padded}{positions}"

        cross = ""
        if self.cross_tokenizer:
            key, size = self.cross_tokenizer
            cross = f"; teacher tokenizer {key} ({size} tokens): {CROSS_TOKENIZER_METHOD}"
        return (f"models compatible: tokenizer of {self.vocab_size} tokens; {one(self.teacher)}; "
                f"{one(self.student)}{cross}")


def _check_lossless(tokenizer, key: str) -> None:
    from smoothkd.modeling.tokenizer import spells_text, token_bytes

    if not spells_text(tokenizer, token_bytes(tokenizer), _PROBE_TEXT):
        raise IncompatibleModelsError(
            f"{key}'s tokenizer does not spell text back byte for byte (normalisation or a prefix space): "
            "distill.cross_tokenizer aligns by byte offsets and needs lossless (e.g. byte-level BPE) "
            "tokenizers on both sides")


def _crosses_tokenizers(differs: str | None, setting: Literal["auto"] | bool, key: str, tokenizer_key: str
                        ) -> bool:
    """Whether the teacher is distilled across tokenizers: `distill.cross_tokenizer` (`setting`) true, or
    auto and the teacher's tokenizer (config key `key`) differs from the run's (`differs`, as
    `vocab_difference` says it). TokenizerMismatchError when it differs and the setting is false."""
    if differs and setting is False:
        raise TokenizerMismatchError(
            f"{key}'s tokenizer differs from the run's ({tokenizer_key}): {differs}; set "
            "distill.cross_tokenizer: auto to distil across tokenizers, or pick a teacher of the "
            "student's family")
    return setting is True or bool(differs)


def check_compatibility(tokenizer, tokenizer_key: str, *, teacher: TeacherConfig, student: StudentConfig,
                        eval_cfg: EvalConfig, distill: DistillConfig | None = None) -> Compatibility:
    """Check teacher, student and the run's tokenizer against each other (configs only); `eval_cfg` gives
    the generation length both models must fit, `distill.cross_tokenizer` whether the teacher may have a
    tokenizer of its own (`teacher.tokenizer`, or the one its model directory ships).

    `tokenizer_key` names where the run's tokenizer comes from (e.g. `tokenizer.name_or_path`). Raises
    TokenizerMismatchError or IncompatibleModelsError (one line naming the config keys) on the first problem.
    """
    from smoothkd.modeling.tokenizer import vocab_difference

    cross_setting = (distill or DistillConfig()).cross_tokenizer
    vocab = shared_vocab_size(tokenizer)
    for token in ("eos", "pad"):
        if getattr(tokenizer, f"{token}_token_id") is None:
            raise IncompatibleModelsError(f"the run's tokenizer ({tokenizer_key}) has no {token} token: "
                                          "training ends each response with eos and pads batches; use a "
                                          "tokenizer that defines one")
    own = (load_checked_tokenizer("teacher.tokenizer", teacher.tokenizer, None, teacher.trust_remote_code,
                                  "teacher") if teacher.tokenizer else None)
    shapes = (model_shape("teacher", teacher, len(own) if own is not None else vocab),
              model_shape("student", student, vocab))
    cross = None
    for shape in shapes:
        mine = own if shape.section == "teacher" and own is not None else shape.tokenizer
        if shape.section == "teacher" and mine is None and cross_setting is True:
            mine = tokenizer  # the cross-tokenizer path asked for with the run's own tokenizer
        key = "teacher.tokenizer" if mine is own and own is not None else shape.key
        differs = vocab_difference(tokenizer, mine) if mine is not None else None
        if shape.section == "teacher" and _crosses_tokenizers(differs, cross_setting, key, tokenizer_key):
            for checked, checked_key in ((mine, key), (tokenizer, tokenizer_key)):
                _check_lossless(checked, checked_key)
                if checked.eos_token_id is None:
                    raise IncompatibleModelsError(f"{checked_key}'s tokenizer has no eos token: the "
                                                  "alignment ends each response with one")
            cross = (key, len(mine))
            rows_needed, rows_key = len(mine), key
        else:
            if differs:
                raise TokenizerMismatchError(
                    f"{shape.key}'s tokenizer differs from the run's ({tokenizer_key}): {differs}; KD needs "
                    "the student on the run's vocabulary: pick teacher and student of one family, or set "
                    "tokenizer.name_or_path to the student's tokenizer")
            rows_needed, rows_key = vocab, tokenizer_key
        if shape.embedding_rows < rows_needed:
            raise IncompatibleModelsError(
                f"{shape.key} has {shape.embedding_rows} embedding rows, fewer than the {rows_needed} tokens "
                f"of {rows_key}: ids >= {shape.embedding_rows} cannot be embedded; use the model's own "
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
    return Compatibility(vocab, *shapes, cross)


def tokenizer_source(tokenizer_cfg: TokenizerConfig, teacher: ModelConfig) -> tuple[str, str] | None:
    """(config key, reference) of a tokenizer known before the data is read; None when one is trained."""
    if tokenizer_cfg.name_or_path:
        return "tokenizer.name_or_path", tokenizer_cfg.name_or_path
    if teacher.name_or_path:
        return "teacher.name_or_path", teacher.name_or_path
    return None


def check_run_models(tokenizer_ref: str | Path, *, tokenizer_cfg: TokenizerConfig, teacher: TeacherConfig,
                     student: StudentConfig, eval_cfg: EvalConfig, distill: DistillConfig | None = None
                     ) -> Compatibility:
    """`check_compatibility` for the run's tokenizer at `tokenizer_ref` (loaded as the run loads it)."""
    source = tokenizer_source(tokenizer_cfg, teacher)
    key = source[0] if source else "the tokenizer trained on the data"
    tokenizer = load_checked_tokenizer(source[0] if source else "tokenizer", str(tokenizer_ref),
                                       teacher.revision if teacher.name_or_path else None,
                                       teacher.trust_remote_code, "teacher")
    return check_compatibility(tokenizer, key, teacher=teacher, student=student, eval_cfg=eval_cfg,
                               distill=distill)


def preflight(*, tokenizer_cfg: TokenizerConfig, teacher: TeacherConfig, student: StudentConfig,
              eval_cfg: EvalConfig, distill: DistillConfig | None = None) -> Compatibility | None:
    """Every model reference and, when the tokenizer is known up front, every compatibility check.

    Run before the pipeline starts, in seconds. A tokenizer trained from the data is checked by the
    pipeline's tokenizer step instead, still before the teacher trains; None is returned then.
    """
    for section, model in (("teacher", teacher), ("student", student)):
        if model.name_or_path:  # the references first: a bad one is the first thing to fix
            model_config(section, model)
    if teacher.tokenizer:
        load_checked_tokenizer("teacher.tokenizer", teacher.tokenizer, None, teacher.trust_remote_code,
                               "teacher")
    source = tokenizer_source(tokenizer_cfg, teacher)
    if source is not None:
        return check_run_models(source[1], tokenizer_cfg=tokenizer_cfg, teacher=teacher, student=student,
                                eval_cfg=eval_cfg, distill=distill)
    if student.name_or_path:
        raise IncompatibleModelsError(
            "student.name_or_path is set but the teacher is built from scratch on a tokenizer trained on the "
            f"data: set tokenizer.name_or_path to {student.name_or_path} (the student's tokenizer)")
    return None


def teacher_tokenizer_ref(tokenizer_ref: str | Path, teacher: TeacherConfig) -> str:
    """The teacher's own tokenizer: `teacher.tokenizer`, else the one `teacher.name_or_path` ships, else the
    run's (`tokenizer_ref`)."""
    if teacher.tokenizer:
        return teacher.tokenizer
    if teacher.name_or_path and ships_tokenizer(teacher.name_or_path):
        return teacher.name_or_path
    return str(tokenizer_ref)


@functools.lru_cache(maxsize=32)
def _teacher_vocab_difference(tokenizer_ref: str, key: str, ref: str, trust_remote_code: bool, stamps: tuple
                              ) -> str | None:
    # Every stage asks cross_tokenizer_ref, and again for each student of a sweep: the tokenizers are read
    # and compared once per process. `stamps` (both directories' files, sizes and times) is only the cache
    # key: a rewritten tokenizer is read again.
    from smoothkd.modeling.tokenizer import vocab_difference

    run = load_checked_tokenizer("tokenizer", tokenizer_ref)
    own = load_checked_tokenizer(key, ref, None, trust_remote_code, "teacher")
    return vocab_difference(run, own)


def cross_tokenizer_ref(tokenizer_ref: str | Path, teacher: TeacherConfig, distill: DistillConfig
                        ) -> str | None:
    """The teacher's tokenizer when the run distils across tokenizers (`distill.cross_tokenizer` true, or
    auto and the teacher's differs from the run's), else None: teacher and student share `tokenizer_ref`.
    TokenizerMismatchError when they differ and `distill.cross_tokenizer` is false."""
    from smoothkd.modeling.identity import files_stamp

    ref = teacher_tokenizer_ref(tokenizer_ref, teacher)
    key = "teacher.tokenizer" if teacher.tokenizer else "teacher.name_or_path"
    differs = None
    # Only auto and false read the tokenizers, and a teacher on the run's own reference cannot differ.
    if distill.cross_tokenizer is not True and ref != str(tokenizer_ref):
        stamps = tuple(files_stamp(Path(r).expanduser(), ("*",)) for r in (str(tokenizer_ref), ref))
        differs = _teacher_vocab_difference(str(tokenizer_ref), key, ref, teacher.trust_remote_code, stamps)
    return ref if _crosses_tokenizers(differs, distill.cross_tokenizer, key, str(tokenizer_ref)) else None
