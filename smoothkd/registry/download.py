"""A registered model as a local directory: what `smoothkd eval --model models:/…` evaluates."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from smoothkd.errors import EvaluationModelError, ModelReferenceError, one_line
from smoothkd.io import atomic_dir


def resolve_model_ref(ref: str, tracking_uri: str, cache_dir: Path) -> Path:
    """A local model directory for `ref`: a path as is, or a registry reference (`models:/NAME@ALIAS`,
    `models:/NAME/VERSION`) loaded from the MLflow store at `tracking_uri` and saved once under
    `cache_dir`."""
    if not ref.startswith("models:/"):
        from smoothkd.modeling.compat import check_model_ref

        if not Path(ref).is_dir():
            raise EvaluationModelError(f"--model {ref}: not a model directory; give a directory written by "
                                       "save_pretrained or models:/NAME@ALIAS")
        check_model_ref("--model", ref)  # config.json, safetensors weights, no remote code
        return Path(ref)
    import mlflow  # a local --model needs neither MLflow nor the pyfunc module (pandas)

    from smoothkd.registry.serving import weights_dir

    name, version = registered_version(ref, tracking_uri)
    out = cache_dir / f"{name}-v{version}"
    if not (out / "config.json").exists():
        # Fetched through this config's store, leaving the process-wide tracking URI alone.
        client = mlflow.MlflowClient(tracking_uri)
        with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as download:
            local = Path(mlflow.artifacts.download_artifacts(
                client.get_model_version_download_uri(name, version), dst_path=download,
                tracking_uri=tracking_uri))
            weights = weights_dir(local)
            if weights is not None:
                shutil.copytree(weights, tmp, dirs_exist_ok=True)
            else:  # a version logged with the transformers flavor
                components = mlflow.transformers.load_model(str(local), return_type="components")
                components["model"].save_pretrained(tmp)
                components["tokenizer"].save_pretrained(tmp)
    return out


def registered_version(ref: str, tracking_uri: str) -> tuple[str, str]:
    """(name, version) that `models:/NAME@ALIAS` or `models:/NAME/VERSION` names in the registry at
    `tracking_uri`; ModelReferenceError, one line, when the alias or version is not there."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    name, _, selector = ref.removeprefix("models:/").partition("@")
    try:
        if selector:
            return name, str(client.get_model_version_by_alias(name, selector).version)
        name, _, version = name.partition("/")
        return name, str(client.get_model_version(name, version).version)
    except mlflow.exceptions.MlflowException as err:
        raise ModelReferenceError(f"{ref}: not in the registry at {tracking_uri} ({one_line(err)})") from err
