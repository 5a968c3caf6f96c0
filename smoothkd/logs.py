"""A quiet console for the CLI: library logs go to a file, the console keeps what a user came for.

Great Expectations, MLflow, ZenML, transformers and datasets log generously (registration notices, autolog
warnings, model-card lookups, per-step banners). `quiet_console` sends every log record to
`<output_dir>/logs/<command>-<time>.log` and lets through to the console only one status line per
pipeline step, this project's warnings and the progress bars; the summary is printed by the CLI.
`--verbose` skips all of this and leaves the libraries' own logging as it is.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

# The libraries that attach their own console handler (and stop propagation) when first imported.
_SELF_HANDLED = ("mlflow", "alembic", "sqlalchemy.engine", "huey", "transformers", "datasets", "accelerate",
                 "huggingface_hub", "absl")
_PROJECT = ("smoothkd", "steps", "pipelines")
_STEP_LAUNCHER = "zenml.orchestrators.step_launcher"
_FINISHED = re.compile(r"Step `(?P<step>[^`]+)` has finished in `(?P<seconds>[^`]+)`")
_CACHED = re.compile(r"Using cached version of step `(?P<step>[^`]+)`")


def status_line(record: logging.LogRecord) -> str | None:
    """What the console shows for `record`: a step's status line, a project warning, or nothing."""
    if record.exc_info:
        return None  # tracebacks belong to the file
    if record.name == _STEP_LAUNCHER:
        message = record.getMessage()
        if match := _FINISHED.search(message):
            return f"  ok   {match['step']} ({match['seconds']})"
        if match := _CACHED.search(message):
            return f"  ok   {match['step']} (cached)"
        if message.startswith("Failed to run step") and record.args:
            return f"  FAIL {record.args[0]}"
        return None
    if record.levelno >= logging.WARNING and record.name.split(".")[0] in _PROJECT:
        return f"  warning: {record.getMessage()}"
    return None


class StatusHandler(logging.Handler):
    """Writes `status_line`s to the console stream it was given (stderr by default)."""

    def __init__(self, stream=None):
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        line = status_line(record)
        if line is not None:
            stream = self.stream or sys.stderr  # beside the progress bars; stdout keeps results (--json)
            stream.write(line + "\n")
            stream.flush()


def quiet_downloads() -> None:
    """No "Downloading artifacts" bar per MLflow registry read (results, identities, gate records): noise
    for files this small, and carriage-return frames in a pipe or log. A value the user set is kept."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _silence_library_handlers() -> None:
    """Remove the console handlers libraries installed on their own loggers; their records propagate."""
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"  # mlflow imported later keeps its hands off
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    quiet_downloads()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards": one model load each
    for name in _SELF_HANDLED:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)
                           or isinstance(h, logging.FileHandler)]
        logger.propagate = True
        if name in ("sqlalchemy.engine", "alembic", "huey"):
            logger.setLevel(logging.WARNING)  # database chatter, even in the file


def log_path(output_dir: Path, command: str) -> Path:
    """Where a command's log goes: `<output_dir>/logs/<command>-<time>-<pid>.log`."""
    return output_dir / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def quiet_console(log_file: Path, zenml: bool = False) -> Path:
    """Route every log record (warnings included) to `log_file`; the console gets `status_line`s only.

    With `zenml`, ZenML is imported first so that its console handler, installed at import, is replaced.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if zenml:
        import zenml as _  # noqa: F401  (its import installs the handlers replaced below)
    root = logging.getLogger()
    # ZenML's own console handler writes every record to stdout; its log-store handler stays (step logs).
    # A second call in one process (tests) replaces the first one's file and status handlers.
    for handler in list(root.handlers):
        if type(handler).__name__ == "ZenMLConsoleHandler" or getattr(handler, "quiet_console", False) or (
                type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr)):
            root.removeHandler(handler)
            if isinstance(handler, logging.FileHandler):
                handler.close()
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for handler in (file_handler, StatusHandler()):
        handler.quiet_console = True
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    _silence_library_handlers()
    return log_file
