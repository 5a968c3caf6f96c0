"""The `smoothkd` command. Heavy libraries (torch, ZenML, MLflow) load inside commands so --help is fast."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Distil LLMs with soft labels and ship only faithful students.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Corpus and dataset commands.", no_args_is_help=True)
app.add_typer(data_app, name="data")
teacher_app = typer.Typer(help="Teacher commands.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")

DEFAULT_CONFIG = Path("configs/demo.yaml")

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config, e.g. configs/demo.yaml")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: a.b=c (repeatable)")]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code)


def _load(config: Path | None, overrides: list[str] | None):
    from smoothkd.config import ConfigError, load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        _fail(str(err))


def _user_error(exc: BaseException) -> str | None:
    """The one-line message of a known input problem anywhere in the exception chain, else None."""
    from smoothkd.errors import USER_ERRORS

    seen = exc
    while seen is not None:
        if isinstance(seen, USER_ERRORS):
            return str(seen).splitlines()[0]
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def _one_line_errors():
    """Report a known input problem as one line (exit 2); anything else keeps its traceback."""
    try:
        yield
    except Exception as exc:
        message = _user_error(exc)
        if message is None:
            raise
        _fail(message)


@app.command()
def run(config: ConfigArg, set_: SetOpt = None) -> None:
    """Run the distill pipeline (ZenML, MLflow tracking) for CONFIG."""
    cfg = _load(config, set_)
    from rich.console import Console

    from pipelines.runner import run_distill
    from smoothkd.report import results_table

    with _one_line_errors():
        results = run_distill(cfg)
    console = Console()
    console.print(results_table(results))
    console.print(f"pipeline wall time: {results['pipeline_seconds']:.1f} s (run {results['run_name']})")
    ui_cmd = "smoothkd ui" if config == DEFAULT_CONFIG else f"smoothkd ui --config {config}"
    console.print(f"browse runs and metrics: {ui_cmd}   (MLflow store {results['tracking_uri']})")


@app.command()
def ui(
    config: Annotated[Path, typer.Option(help="Config whose MLflow store to serve")] = DEFAULT_CONFIG,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind (keep 127.0.0.1 unless you mean it)")
                    ] = "127.0.0.1",
) -> None:
    """Serve the MLflow UI on the store the pipeline wrote to."""
    import subprocess

    from smoothkd.stages import output_root, tracking_uri

    cfg = _load(config if config.exists() else None, None)
    uri = tracking_uri(cfg)
    typer.echo(f"MLflow UI for {uri} at http://{host}:{port}  (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--default-artifact-root", (output_root(cfg) / "mlartifacts").as_uri(),
           "--workers", "1"]
    try:
        raise typer.Exit(subprocess.call(cmd))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Argument(help="Directory to write the corpus into")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives identical bytes")] = 10,
    n_instruction: Annotated[int, typer.Option(help="Instruction rows (Dolly schema)")] = 3000,
    n_cnndm: Annotated[int, typer.Option(help="CNN/DailyMail-like rows")] = 200,
    n_xsum: Annotated[int, typer.Option(help="XSum-like rows")] = 200,
) -> None:
    """Write the embedded grounded-news corpus (instruction, cnndm, xsum splits + gold facts)."""
    from smoothkd.data.corpus import generate_corpus

    manifest = generate_corpus(out, seed=seed, n_instruction=n_instruction, n_cnndm=n_cnndm, n_xsum=n_xsum)
    counts = ", ".join(f"{k}={v}" for k, v in manifest["counts"].items())
    typer.echo(f"wrote {out} ({counts})")


@data_app.command("validate")
def data_validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Validate every split of CONFIG (Great Expectations): table, Data Docs path, exit 1 on failure."""
    cfg = _load(config, set_)
    from rich.console import Console

    from smoothkd.stages import prepare_data
    from smoothkd.validation.report import validation_table
    from smoothkd.validation.validate import validate_dataset

    with _one_line_errors():
        report = validate_dataset(cfg, prepare_data(cfg))
    console = Console()
    console.print(validation_table(report))
    console.print(f"Data Docs: {report.docs_index}", highlight=False)
    console.print(report.message(), style="red" if report.failures else "green", highlight=False)
    raise typer.Exit(1 if report.failures else 0)


@teacher_app.command("check")
def teacher_check(config: ConfigArg, set_: SetOpt = None) -> None:
    """Run only the teacher calibration gate for CONFIG: metrics table and verdict (exit 1 on reject)."""
    cfg = _load(config, set_)
    from rich.console import Console

    from smoothkd.calibration.gate import calibrate_teacher, calibration_table
    from smoothkd.stages import output_root, prepare_data, prepare_teacher, prepare_tokenizer

    with _one_line_errors():
        data_dir = prepare_data(cfg)
        teacher = prepare_teacher(cfg, data_dir, prepare_tokenizer(cfg, data_dir))
        out_dir = output_root(cfg) / "calibration" / Path(teacher.path).name
        report = calibrate_teacher(cfg, data_dir, teacher.path, out_dir)
    console = Console(soft_wrap=True)  # the path and the verdict stay one line each, whatever the width
    console.print(calibration_table(report))
    console.print(f"reliability diagram: {report.diagram}")
    console.print(report.message(), style="green" if report.passed else "red", highlight=False)
    raise typer.Exit(0 if report.passed else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
