"""The `smoothkd` command. Heavy libraries (torch, ZenML, MLflow) load inside commands so --help is fast."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from smoothkd.artifacts import Results

app = typer.Typer(help="Distil LLMs with soft labels and ship only faithful students.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Corpus and dataset commands.", no_args_is_help=True)
app.add_typer(data_app, name="data")
teacher_app = typer.Typer(help="Teacher commands.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
stack_app = typer.Typer(help="ZenML stacks defined in infra/stacks.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")

DEFAULT_CONFIG = Path("configs/demo.yaml")
DEFAULT_HELP = f" (default: {DEFAULT_CONFIG} where it exists, else the built-in defaults)"

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config, e.g. configs/demo.yaml")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: a.b=c (repeatable)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Show library logs and tracebacks (default: a log file)")]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code)


def _named_or_default(config: Path | None) -> Path | None:
    """The config a `--config` option names; not named: DEFAULT_CONFIG where it exists (a checkout), else
    None, the built-in defaults. A named file that is missing fails in `_load`, never falls back."""
    if config is not None:
        return config
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _load(config: Path | None, overrides: list[str] | None):
    from smoothkd.config import ConfigError, load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        _fail(str(err))


def _user_error(exc: BaseException) -> str | None:
    """The one-line message of a known input problem anywhere in the exception chain, else None."""
    from smoothkd.errors import USER_ERRORS, one_line

    seen = exc
    while seen is not None:
        if isinstance(seen, USER_ERRORS):
            return one_line(seen)
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def _one_line_errors(log: Path | None = None, verbose: bool = False):
    """Report a known input problem as one line (exit 2). Anything else keeps its traceback, unless a log
    file takes it (`_console`): then it is one line pointing there (exit 1). A log file gets the traceback
    either way; `verbose` prints it."""
    import logging
    import traceback

    from smoothkd.errors import one_line

    try:
        yield
    except Exception as exc:
        message = _user_error(exc)
        if verbose and message is not None:
            traceback.print_exc()
        if message is not None:
            if log is not None and not verbose:  # the console gets one line, the log the whole story
                logging.getLogger("smoothkd.cli").error("the command stopped", exc_info=exc)
            _fail(message)
        if verbose or log is None:
            raise
        logging.getLogger("smoothkd.cli").error("the command failed", exc_info=exc)
        _fail(f"{type(exc).__name__}: {one_line(exc)} (traceback in {log}; --verbose shows it)", code=1)


def _console(cfg, command: str, verbose: bool, zenml: bool = False) -> Path | None:
    """Unless `verbose`: library logs to a file under the output dir (its path printed), a quiet console."""
    if verbose:
        return None
    from smoothkd.config import output_root
    from smoothkd.logs import log_path, quiet_console

    log = quiet_console(log_path(output_root(cfg), command), zenml=zenml)
    typer.echo(f"log: {log}", err=True)
    return log


def evidence_hint(config: str, cfg) -> str:
    """What a run's one seed is and is not, and the sweep that compares its own KD students over seeds."""
    # One student seed on one corpus draw is an anecdote; the sweep is the evidence (docs/evidence.md).
    alphas = ",".join(f"{alpha:g}" for alpha in cfg.distill.alphas)
    sweep = f"smoothkd sweep {config} --seeds 10" + (f" --alphas {alphas}" if alphas else "")
    return (f"one student seed ({cfg.student.train.seed}) on one corpus draw (data.seed {cfg.data.seed}), "
            f"not evidence: `{sweep}` compares KD students with SFT over seeds")


@app.command()
def run(config: ConfigArg, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Run the distill pipeline (ZenML, MLflow tracking) for CONFIG."""
    cfg = _load(config, set_)
    log = _console(cfg, "run", verbose, zenml=True)
    with _one_line_errors(log, verbose):
        from pipelines.runner import run_distill

        results = run_distill(cfg)
    from rich.console import Console

    from smoothkd.report import gate_lines

    # Piped into a file or a pager, Rich would wrap at 80 columns and triple every table row; a terminal
    # (or COLUMNS) keeps its own width.
    console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)
    for line in gate_lines(results.gates):
        console.print(line, highlight=False)
    _print_summary(console, results, cfg.eval.splits)
    console.print(evidence_hint(config, cfg), highlight=False, soft_wrap=True)
    console.print(f"pipeline wall time: {results.pipeline_seconds:.1f} s (run {results.run_name})")
    ui_cmd = "smoothkd ui" if config == DEFAULT_CONFIG else f"smoothkd ui --config {config}"
    console.print(f"runs, charts, registry: {ui_cmd}   (MLflow store {results.tracking_uri})",
                  soft_wrap=True)


def _print_summary(console, results: Results, splits: list[str]) -> None:
    """The results record's tables (models, general capability, KD − SFT, promotion) and its champion."""
    from smoothkd.report import champion_text, decisions_grid, deltas_grid, general_grid, results_grid

    console.print(results_grid(results.models, splits).rich())
    console.print(general_grid(results.models).rich())
    if results.deltas:
        console.print(deltas_grid(results.deltas, splits).rich())
    if results.decisions:
        console.print(decisions_grid(results.decisions).rich())
    console.print(f"champion: {champion_text(results.champion)}", highlight=False)


def _parse_alphas(text: str) -> list[float]:
    """`0,0.1,0.5,1.0` as floats in [0, 1], at least one of them a KD weight (> 0)."""
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        _fail(f"--alphas {text!r}: expected comma-separated numbers, e.g. 0,0.1,0.5,1.0")
    bad = [a for a in alphas if not 0 <= a <= 1]
    if bad:
        _fail(f"--alphas: {bad[0]:g} is outside [0, 1] (α weighs the KD term; 0 is the SFT baseline)")
    if not any(alphas):
        _fail("--alphas: give at least one KD weight > 0 to compare with the SFT baseline (α = 0)")
    return alphas


@app.command()
def sweep(
    config: ConfigArg,
    seeds: Annotated[int, typer.Option(min=1, help="Student seeds: student.train.seed and the next N-1")],
    alphas: Annotated[str, typer.Option(help="KD weights, comma-separated; the SFT baseline (0) always runs")
                      ] = "0,0.1,0.5,1.0",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (progress on stderr)")
                       ] = False,
    null: Annotated[bool, typer.Option("--null", help="A/A check: a second SFT arm from its own seeds in "
                                                      "place of the KD arms; it must resolve no difference")
                    ] = False,
    teacher_seeds: Annotated[int, typer.Option(
        "--teacher-seeds", min=1, help="Teachers: teacher.train.seed and the next K-1, each gated; the KD "
                                       "students of the i-th seed learn from teacher i mod K")] = 1,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The α ablation (a ZenML pipeline): KD − SFT per α and split, mean over seeds, CI over seeds and
    examples."""
    cfg = _load(config, set_)
    kd_alphas = _parse_alphas(alphas)
    if not sys.stderr.isatty():  # a file or pipe gets one line per model, not every frame of every bar
        os.environ.setdefault("TQDM_DISABLE", "1")
    import json

    from rich.console import Console

    from pipelines.sweep import null_arms, run_sweep, sweep_arms
    from smoothkd.evaluation.sweep import baseline_lines, differences_table

    log = _console(cfg, "sweep", verbose, zenml=True)
    # With --json, stdout carries the JSON alone: progress and the libraries' chatter go to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with _one_line_errors(log, verbose), quiet:
        summary = run_sweep(cfg, seeds, null_arms() if null else sweep_arms(kd_alphas),
                            echo=lambda line: typer.echo(line, err=as_json), teachers=teacher_seeds)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=1))
        return
    console = Console(soft_wrap=True)
    for line in baseline_lines(summary.baseline, summary.confidence) if summary.baseline else []:
        console.print(line, highlight=False)
    console.print(differences_table(summary))
    for kd, per_split in summary.conclusions.items():
        for split, text in per_split.items():
            console.print(f"{kd} {split}: {text}", highlight=False)
    console.print(f"chart: {summary.chart}\nsummary: {summary.summary_file}", highlight=False)
    ui_cmd = "smoothkd ui" if config == DEFAULT_CONFIG else f"smoothkd ui --config {config}"
    console.print(f"sweep wall time: {summary.seconds:.1f} s; MLflow run {summary.run_name}: {ui_cmd}",
                  highlight=False)


@app.command()
def ui(
    config: Annotated[Path | None, typer.Option(help=f"Config whose MLflow store to serve{DEFAULT_HELP}")
                      ] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind (keep 127.0.0.1 unless you mean it)")
                    ] = "127.0.0.1",
    set_: SetOpt = None,
) -> None:
    """Serve the MLflow UI on the store the pipeline wrote to."""
    from smoothkd.config import output_root, tracking_uri

    cfg = _load(_named_or_default(config), set_)
    uri = tracking_uri(cfg)
    typer.echo(f"MLflow UI for {uri} at http://{host}:{port}  (Ctrl-C to stop)")
    sys.stdout.flush()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--default-artifact-root", (output_root(cfg) / "mlartifacts").as_uri(),
           "--workers", "1"]
    # Become the server, so that stopping this command (Ctrl-C, SIGTERM) stops the server, not just a parent.
    os.execv(sys.executable, cmd)


ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help=f"Config giving the MLflow store and gate{DEFAULT_HELP}")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store (default: config's)")]


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(
        help="models:/NAME@ALIAS or models:/NAME/VERSION (default: models:/<promotion.registered_model_name>"
             "@champion of the config)")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1")] = 5001,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Serve a registered student (the champion by default) with MLflow's scoring server on 127.0.0.1:
    POST {"inputs": [PROMPT]} to /invocations for its greedy completion, cut at the first newline."""
    from smoothkd.config import tracking_uri as store_of

    cfg = _load(_named_or_default(config), set_)
    uri = tracking_uri or store_of(cfg)
    ref = model or f"models:/{cfg.promotion.registered_model_name}@champion"
    with _one_line_errors():
        from smoothkd.registry.download import registered_version

        name, version = registered_version(ref, uri)
    typer.echo(f"serving {ref} ({name} v{version}) at http://127.0.0.1:{port}/invocations  (Ctrl-C to stop)")
    served = f"models:/{name}/{version}"  # the version just named, even if the alias moves meanwhile
    sys.stdout.flush()
    # MLflow's scoring server starts `uvicorn` by name: the interpreter's bin directory (the venv's) must be
    # on PATH, whether or not the venv is activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if not sys.stderr.isatty():  # a log file gets no frame of MLflow's per-artifact download bar
        from smoothkd.logs import quiet_downloads

        quiet_downloads()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", served, "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port)]
    # Become the server, so that stopping this command (Ctrl-C, SIGTERM) stops the server, not just a parent.
    os.execve(sys.executable, cmd, env)


def _registry_client(config: Path | None, set_: list[str] | None, uri: str | None):
    cfg = _load(_named_or_default(config), set_)  # a bad config stops before MLflow loads
    from mlflow import MlflowClient

    from smoothkd.config import tracking_uri

    return cfg, MlflowClient(uri or tracking_uri(cfg))


@contextlib.contextmanager
def _registry_errors(what: str):
    """An unknown model or version (or an unreachable store) is one line, not a traceback."""
    from mlflow.exceptions import MlflowException

    from smoothkd.errors import one_line

    try:
        yield
    except MlflowException as err:
        _fail(f"{what}: {one_line(err.message)}")


@app.command()
def models(
    name: Annotated[str | None, typer.Argument(help="Registered model (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Registered versions with their aliases and gate verdicts, newest first (--json: every field)."""
    import json
    import shutil
    from dataclasses import asdict

    from smoothkd.logs import quiet_downloads
    from smoothkd.registry.store import list_versions, version_lines

    quiet_downloads()
    _, client = _registry_client(config, set_, tracking_uri)
    with _registry_errors(name or "registry"):
        rows = list_versions(client, name)
    if as_json:
        typer.echo(json.dumps([asdict(row) for row in rows], indent=1))
        return
    # Lines cut to the terminal (COLUMNS, else 80 when piped) rather than a table whose every cell wraps.
    width = shutil.get_terminal_size((80, 24)).columns
    typer.echo("\n".join(version_lines(rows, width)) if rows else "no registered model versions")


@app.command()
def results(
    as_json: Annotated[bool, typer.Option("--json", help="{run, models: {NAME: {SPLIT: {METRIC: mean}}}}")
                       ] = False,
    of_sweep: Annotated[bool, typer.Option("--sweep", help="The latest finished sweep (its sweep.json)")
                        ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """The latest finished pipeline run's (or sweep's) summary, read back from the config's MLflow store."""
    import json

    from rich.console import Console

    from smoothkd.config import tracking_uri as store_of
    from smoothkd.logs import quiet_downloads
    from smoothkd.report import means_by_split
    from smoothkd.tracking import latest_results

    quiet_downloads()
    config = _named_or_default(config)
    cfg = _load(config, set_)
    uri = tracking_uri or store_of(cfg)
    if of_sweep:
        _print_sweep(uri, cfg.tracking.experiment_name, config or DEFAULT_CONFIG, as_json)
        return
    with _registry_errors("results"):
        found = latest_results(uri, cfg.tracking.experiment_name)
    if found is None:
        _fail(f"no finished pipeline run in experiment {cfg.tracking.experiment_name} of {uri}: "
              f"run `smoothkd run {config or DEFAULT_CONFIG}` first", code=1)
    run_name, record = found
    if as_json:
        summary = {"run": run_name, "models": means_by_split(record.models)}
        typer.echo(json.dumps(summary, indent=1, sort_keys=True))
        return
    console = Console()
    console.print(f"run {run_name} (MLflow store {uri})", highlight=False, soft_wrap=True)
    _print_summary(console, record, cfg.eval.splits)


def _print_sweep(uri: str, experiment_name: str, config: Path, as_json: bool) -> None:
    """The latest finished sweep's summary: as JSON, or its conclusions and where its files are."""
    import json

    from pipelines.sweep import latest_sweep

    with _registry_errors("results --sweep"):
        summary = latest_sweep(uri, experiment_name)
    if summary is None:
        _fail(f"no finished sweep in experiment {experiment_name}-sweeps of {uri}: run `smoothkd sweep "
              f"{config} --seeds N` first", code=1)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    seeds = ", ".join(map(str, summary["seeds"]))
    typer.echo(f"sweep {summary['run_name']} (MLflow store {uri}): seeds {seeds}, "
               f"{len(summary['models'])} models, {summary['seconds']:.0f} s")
    if summary.get("baseline"):
        from smoothkd.evaluation.sweep import Baseline, baseline_lines

        for line in baseline_lines(Baseline(**summary["baseline"]), summary["confidence"]):
            typer.echo(line)
    for arm, per_split in summary["conclusions"].items():
        for split, text in per_split.items():
            typer.echo(f"{arm} {split}: {text}")
    typer.echo(f"chart: {summary['chart']}\nsummary: {summary['summary_file']}")


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model")],
    version: Annotated[str, typer.Argument(help="Version to judge and promote")],
    force: Annotated[bool, typer.Option(help="Promote even if the gate fails (recorded in tags)")] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded with --force)")] = "",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Re-run the promotion gate for an existing version; move `champion` to it if it passes."""
    from smoothkd.registry.promote import repromote
    from smoothkd.registry.store import figure
    from smoothkd.stages import champion_reevaluator

    cfg, client = _registry_client(config, set_, tracking_uri)
    if force and not reason:
        _fail("--force needs --reason: it is recorded on the version")
    # Reading the candidate and the champion from the registry (and re-evaluating one) is library chatter
    # and a download bar per artifact: the verdict is what the console shows.
    _console(cfg, "promote", verbose)
    store = client.tracking_uri
    with _registry_errors(f"{name} v{version}"):
        record = repromote(client, cfg.promotion, cfg.eval, name, version, store, force, reason,
                           champion_reevaluator(cfg, store, name))
    for c in record["criteria"]:
        value = figure(c["value"])
        typer.echo(f"  {c['verdict']:4}  {c['name']}: {value} (threshold {c['threshold']}) {c['detail']}")
    typer.echo(f"{name} v{version}: {record['outcome']}")
    raise typer.Exit(0 if record["outcome"].startswith("champion") else 1)


@app.command("eval")
def eval_(
    config: ConfigArg,
    model: Annotated[str, typer.Option(help="Model dir, or models:/NAME@ALIAS or models:/NAME/VERSION")],
    detector: Annotated[Path | None, typer.Option(
        help="Factual-rate detector (detector.json) fitted on a model of this shape; omitted: no factual rate"
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON")] = False,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate any model on CONFIG's evaluation data, outside the training pipeline."""
    import json

    cfg = _load(config, set_)
    log = _console(cfg, "eval", verbose)
    with _one_line_errors(log, verbose):
        from smoothkd.config import output_root, tracking_uri
        from smoothkd.registry.download import resolve_model_ref
        from smoothkd.stages import evaluate_model, prepare_data

        path = resolve_model_ref(model, tracking_uri(cfg), output_root(cfg) / "registry_models")
        result = evaluate_model(cfg, path, prepare_data(cfg), detector, label=model)
    if as_json:
        typer.echo(json.dumps(result.metrics, indent=1, sort_keys=True))
        return
    from rich.console import Console

    from smoothkd.report import metrics_grid

    Console().print(metrics_grid(result.metrics, f"{model}: mean (95% bootstrap CI)").rich())
    typer.echo(f"localization tables: {result.dir}")


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

    try:
        manifest = generate_corpus(out, seed=seed, n_instruction=n_instruction, n_cnndm=n_cnndm,
                                   n_xsum=n_xsum)
    except OSError as err:  # OUT is a file, or not writable
        _fail(f"cannot write the corpus into {out}: {err.strerror or err}")
    counts = ", ".join(f"{k}={v}" for k, v in manifest["counts"].items())
    typer.echo(f"wrote {out} ({counts})")


@data_app.command("validate")
def data_validate(config: ConfigArg, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Validate every split of CONFIG (Great Expectations): table, Data Docs path, exit 1 on failure."""
    cfg = _load(config, set_)
    log = _console(cfg, "data-validate", verbose)
    from rich.console import Console

    with _one_line_errors(log, verbose):
        from smoothkd.stages import preflight_models, prepare_data, validate_dataset
        from smoothkd.validation.report import validation_table

        # Token counts use the run's tokenizer (the teacher's, when configured): check it first.
        preflight_models(cfg)
        report = validate_dataset(cfg, prepare_data(cfg))
    console = Console()
    console.print(validation_table(report))
    console.print(f"Data Docs: {report.docs_index}", highlight=False)
    console.print(report.message(), style="red" if report.failures else "green", highlight=False)
    raise typer.Exit(1 if report.failures else 0)


@teacher_app.command("check")
def teacher_check(config: ConfigArg, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Run only the teacher calibration gate for CONFIG: metrics table and verdict (exit 1 on reject)."""
    cfg = _load(config, set_)
    log = _console(cfg, "teacher-check", verbose)
    from rich.console import Console

    with _one_line_errors(log, verbose):
        import time

        from smoothkd.calibration.gate import calibration_table
        from smoothkd.config import output_root
        from smoothkd.stages import front_half

        # The teacher is known only once built: its diagrams go under the time of the check.
        out_dir = output_root(cfg) / "calibration" / time.strftime("check-%Y%m%d-%H%M%S")
        report = front_half(cfg, out_dir, labels=False).gate
    console = Console(soft_wrap=True)  # the path and the verdict stay one line each, whatever the width
    console.print(calibration_table(report))
    console.print(f"reliability diagram: {report.diagram}")
    console.print(report.message(), style="green" if report.passed else "red", highlight=False)
    raise typer.Exit(0 if report.passed else 1)


StackSetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a definition key: components.TYPE.configuration.KEY=VALUE (repeatable)")]
StackConfigOpt = Annotated[Path | None, typer.Option(
    help=f"Run config whose output_dir holds the local stack's ZenML state and MLflow store{DEFAULT_HELP}")]


@stack_app.command("up")
def stack_up(
    name: Annotated[str, typer.Argument(help="A definition in infra/stacks (see `stack list`) or YAML file")],
    set_: StackSetOpt = None,
    config: StackConfigOpt = None,
) -> None:
    """Register missing components, update changed ones, create and activate stack NAME (idempotent)."""
    cfg = _load(_named_or_default(config), None)
    from pipelines.runner import configure_zenml_env
    from smoothkd.config import tracking_uri

    configure_zenml_env(cfg, stack=name)
    with _one_line_errors():
        from pipelines.stack import stack_up as apply

        report = apply(name, set_ or [], context={"SMOOTHKD_TRACKING_URI": tracking_uri(cfg)})
    done = [f"created {c}" for c in report.created] + [f"updated {c}" for c in report.updated]
    done += ["created the stack"] * report.stack_created + ["updated the stack"] * report.stack_updated
    typer.echo(f"stack {report.stack}: {'; '.join(done) or 'unchanged'}; "
               f"{'activated' if report.activated else 'active'}")


@stack_app.command("list")
def stack_list() -> None:
    """The stack definitions in infra/stacks: name, ZenML stack, component flavors."""
    from smoothkd.stackdef import available_stacks, load_stack_definition

    with _one_line_errors():
        for name in available_stacks():
            defn = load_stack_definition(name)
            typer.echo(f"{name}: {defn.name} - {defn.description}")
            typer.echo("    " + ", ".join(f"{t}={c.flavor}" for t, c in defn.components.items()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
