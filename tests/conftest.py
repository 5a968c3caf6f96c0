"""Test-session isolation: no network, no writes to the user's ZenML/HF state.

Set before any test module imports `datasets`, `transformers` or `zenml`, which read these at import.
"""

import os
import tempfile
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="smoothkd-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_STATE / "hf")
os.environ["ZENML_CONFIG_PATH"] = str(_STATE / "zenml")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_LOGGING_VERBOSITY"] = "WARN"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["MLFLOW_ENABLE_TELEMETRY"] = "false"
