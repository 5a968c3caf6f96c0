"""Input problems that the CLI reports as one line (exit code 2) instead of a traceback."""

from smoothkd.config import ConfigError
from smoothkd.data.loaders import DataLoadError
from smoothkd.validation.report import DataValidationError


class TokenizerMismatchError(ValueError):
    """Teacher and student tokenizers differ, so soft labels cannot be shared."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the message names the step."""


class CorruptLabelStoreError(RuntimeError):
    """A label shard is missing or its checksum does not match the manifest."""


class TeacherRejectedError(RuntimeError):
    """The teacher failed the calibration gate; the message lists each metric against its threshold."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataLoadError, TokenizerMismatchError, NonFiniteLossError, CorruptLabelStoreError,
    TeacherRejectedError, DataValidationError,
)
