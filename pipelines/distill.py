"""The `distill` pipeline: data → tokenizer → teacher → student → report. Wiring only."""

from zenml import pipeline

from steps.data import build_tokenizer, load_data
from steps.models import student, teacher
from steps.report import report


@pipeline(enable_cache=False)
def distill(config: dict) -> None:
    """Run the whole flow for one validated RunConfig (passed as a plain dict)."""
    dataset_dir = load_data(config)
    tokenizer = build_tokenizer(config, dataset_dir)
    teacher_summary = teacher(config, dataset_dir, tokenizer)
    student_summary = student(config, dataset_dir, tokenizer, name="sft", id="student_sft")
    report(config, teacher_summary, student_summary)
