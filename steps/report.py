"""Report step: the run's results record, headline metrics, paired KD − SFT deltas, charts and the markdown
note that tells the run's story, all on the pipeline's own run."""

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import get_step_context, log_metadata, step
from zenml.client import Client

from smoothkd.artifacts import EvaluatedModel, GateDecision, model_label
from smoothkd.charts import comparison_chart, loss_curves_chart
from smoothkd.config import RunConfig
from smoothkd.evaluation.localization import FILES
from smoothkd.report import build_results, champion_text, headline_metrics, run_note
from smoothkd.tracking import (
    MAX_TAG_CHARS,
    NOTE_TAG,
    OUTCOME_TAG,
    RESULTS_ARTIFACT,
    RESULTS_TAG,
    artifact_source,
    child_runs,
    log_metrics,
    run_link,
)
from steps.tracking import ON_PIPELINE_RUN

# The steps whose ZenML metadata holds a gate's verdict, under the names `report.gate_lines` reads.
GATE_STEPS = {"data": "validate_data", "calibration": "check_teacher_calibration",
              "teacher detector": "detector_teacher", "student detector": "detector_student"}
CHARTS = {"sft_vs_kd.png": "SFT vs KD", "loss_curves.png": "loss curves"}
PAGE = FILES["html"]  # the localization page of one split


def _gate_verdicts() -> dict[str, dict]:
    """What the data, calibration and detector steps of this run recorded as ZenML metadata."""
    steps = Client().get_pipeline_run(get_step_context().pipeline_run.id).steps
    return {label: dict(steps[name].run_metadata) for label, name in GATE_STEPS.items() if name in steps}


def _evidence(results: dict, splits: list[str], experiment: str, run_id: str
              ) -> tuple[list[str], list[tuple[str, str]]]:
    """Links (markdown) to the charts, the reliability diagram, the Data Docs and every model's run and
    localization pages; the images to show in the note (alt text, source)."""
    children = child_runs(mlflow.MlflowClient(), experiment, run_id)
    links = [" · ".join(f"[{label}]({run_link(experiment, run_id, f'charts/{file}')})"
                        for file, label in CHARTS.items())]
    images = [(label, artifact_source(run_id, f"charts/{file}")) for file, label in CHARTS.items()]
    calibration = children.get(GATE_STEPS["calibration"])
    if calibration is not None:
        diagram = "calibration/reliability.png"
        links.append(f"teacher calibration: [reliability diagram]"
                     f"({run_link(experiment, calibration.info.run_id, diagram)}) "
                     f"(local: `{results['gates']['calibration']['diagram']}`)")
        images.append(("reliability diagram", artifact_source(calibration.info.run_id, diagram)))
    validation = children.get(GATE_STEPS["data"])
    if validation is not None:
        links.append(f"data validation: [Data Docs]"
                     f"({run_link(experiment, validation.info.run_id, 'validation/data_docs/index.html')}) "
                     f"(local: `{results['gates']['data']['validation.data_docs']}`)")
    for model in results["models"]:
        name, model_run = model_label(model["role"]), model["run_id"]
        pages = " · ".join(f"[{split}]({run_link(experiment, model_run, f'evaluation/{split}/{PAGE}')})"
                           for split in splits)
        links.append(f"{name}: [run]({run_link(experiment, model_run)}); localization {pages}")
    return links, images


@step(experiment_tracker=True, settings=ON_PIPELINE_RUN)
def report(config: dict, teacher_summary: EvaluatedModel, student_summaries: list[EvaluatedModel],
           gate_decisions: list[GateDecision]) -> Annotated[dict, "results"]:
    """Collect per-model metrics, KD − SFT deltas, gate verdicts and decisions; draw the comparison and loss
    charts; write the pipeline run's note."""
    cfg = RunConfig.model_validate(config)
    results = {**build_results(teacher_summary, student_summaries, gate_decisions, cfg.eval),
               "gates": _gate_verdicts()}
    mlflow.log_dict(results, RESULTS_ARTIFACT)
    log_metrics(headline_metrics(results))
    for comparison, flat in results["deltas"].items():
        log_metrics({f"delta/{comparison.replace(' ', '')}/{name}": v for name, v in flat.items()})
    curves = {s.role: s.loss_history or [] for s in [teacher_summary, *student_summaries]}
    with tempfile.TemporaryDirectory() as tmp:
        comparison_chart(results["models"], cfg.eval.splits, Path(tmp) / "sft_vs_kd.png")
        loss_curves_chart(curves, Path(tmp) / "loss_curves.png")
        mlflow.log_artifacts(tmp, "charts")
    run = mlflow.active_run().info
    links, images = _evidence(results, cfg.eval.splits, run.experiment_id, run.run_id)
    mlflow.set_tags({NOTE_TAG: run_note(results, cfg.eval.splits, links, images, MAX_TAG_CHARS),
                     "smoothkd.champion": champion_text(results),
                     OUTCOME_TAG: "completed", RESULTS_TAG: RESULTS_ARTIFACT})
    log_metadata(metadata={"deltas": results["deltas"], "champion": results["champion"] or "none"})
    return results
