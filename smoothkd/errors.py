"""Input problems that the CLI reports as one line (exit code 2) instead of a traceback."""

from smoothkd.config import ConfigError
from smoothkd.data.loaders import DataLoadError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataLoadError)
