"""Input problems that the CLI reports as one line (exit code 2) instead of a traceback.

Only the config is imported here: the CLI's error path and every module raising these stay cheap to load.
"""

from smoothkd.config import ConfigError


class DataLoadError(ValueError):
    """A data problem, with a one-line message naming the dataset, file or column and the config key."""


class DataValidationError(ValueError):
    """A stopping data-validation failure; the one-line message names each failed expectation."""


class TokenizerMismatchError(ValueError):
    """Teacher and student tokenizers differ, so soft labels cannot be shared."""


class ModelReferenceError(ValueError):
    """A model or tokenizer reference cannot be used: missing path, unreachable hub id, no safetensors,
    remote code not allowed. The message names the config key and the fix."""


class IncompatibleModelsError(ValueError):
    """Teacher, student and tokenizer do not fit each other (embedding rows, positions, special tokens)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message names the step."""


class CorruptLabelStoreError(RuntimeError):
    """A label shard is missing or its checksum does not match the manifest."""


class TeacherRejectedError(RuntimeError):
    """The teacher failed the calibration gate; the message lists each metric against its threshold."""


class EvaluationModelError(ValueError):
    """An evaluation model (e.g. the consistency scorer) cannot be loaded or used; names the config key."""


class StackError(RuntimeError):
    """A ZenML stack cannot serve a run: missing integration or secret, unregistered stack, name clash."""


class DetectorError(ValueError):
    """The factual-rate detector cannot be fitted, loaded or applied; the message says why in one line."""


class LaunchError(RuntimeError):
    """A multi-process stage failed; the one-line message names the rank, the error and the log."""


class RegistryLockError(RuntimeError):
    """The MLflow store offers no promotion lock, or it cannot be taken; names the store or config key."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataLoadError, TokenizerMismatchError, NonFiniteLossError, CorruptLabelStoreError,
    TeacherRejectedError, DataValidationError, EvaluationModelError, StackError, LaunchError,
    DetectorError, ModelReferenceError, IncompatibleModelsError,
    RegistryLockError,
)

# The failures that are a gate's verdict, not a crash, with the gate that gave it: a run they stop is
# recorded as rejected (smoothkd.tracking.record_stop).
GATE_REJECTIONS: dict[type[BaseException], str] = {
    DataValidationError: "data validation", TeacherRejectedError: "teacher calibration",
}


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first non-blank line of `error`'s message (or of a text), stripped; "" when there is none.

    Library messages run on (SQL, a worker's traceback, GX's exception text): a one-line report keeps
    their first line. Past `limit` characters it is cut, ending in "...".
    """
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
