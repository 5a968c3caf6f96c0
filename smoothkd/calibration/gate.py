"""The teacher calibration gate: measure the teacher on held-out response tokens, compare with thresholds.

A teacher whose confidence outruns its accuracy hands that overconfidence to the student through its soft
labels, so the run stops here, before any label is made, unless the remedy (a calibration temperature,
given or fitted, dividing the teacher's logits alone) brings it within the thresholds. The remedy then
defines the labels themselves, so what passed the gate is what the student is taught.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from smoothkd.artifacts import CalibrationVerdict
from smoothkd.calibration.metrics import CalibrationAccumulator, CalibrationMetrics
from smoothkd.calibration.plot import reliability_diagram
from smoothkd.calibration.temperature import fit_temperature
from smoothkd.config import CalibrationConfig, ConfigError, ModelConfig
from smoothkd.data.tokenize import IGNORE_INDEX, CausalLMCollator, encode_instruction_rows
from smoothkd.io import atomic_dir, write_json
from smoothkd.modeling.models import load_causal_lm, resolve_device, response_logits

GATE_NAME = "teacher_calibration"


@dataclass
class GateCheck:
    """One metric against its maximum."""

    name: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value <= self.threshold

    def describe(self) -> str:
        return f"{self.name} {self.value:.4f} {'<=' if self.passed else '>'} max {self.threshold:.4f}"


@dataclass
class CalibrationReport:
    """The gate's verdict, the metrics it judged, and the calibration temperature labels are made at."""

    metrics: CalibrationMetrics
    checks: list[GateCheck]
    temperature: float
    diagram: str
    before: CalibrationMetrics | None = None  # the teacher as it is (T = 1), when a temperature was fitted

    @property
    def fitted(self) -> bool:
        return self.before is not None

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "reject"

    def message(self) -> str:
        """One line: verdict, then each metric against its threshold."""
        state = "passed" if self.passed else "rejected the teacher"
        fitted = " fitted" if self.fitted else ""
        checks = "; ".join(check.describe() for check in self.checks)
        return (f"calibration gate {state} ({self.metrics.n_tokens} held-out tokens,{fitted} temperature "
                f"{self.temperature:.3g}): {checks}")

    def record(self) -> CalibrationVerdict:
        """The verdict as the gate's step hands it on to the report."""
        return CalibrationVerdict(verdict=self.verdict, message=self.message(), temperature=self.temperature,
                                  fitted=self.fitted, diagram=self.diagram, metrics=self.metrics.scalars())

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "temperature": self.temperature, "fitted": self.fitted,
                "diagram": self.diagram, "metrics": asdict(self.metrics),
                "before": asdict(self.before) if self.before else None,
                "checks": [{**asdict(c), "passed": c.passed} for c in self.checks]}


def gate_checks(metrics: CalibrationMetrics, cfg: CalibrationConfig) -> list[GateCheck]:
    """The configured thresholds applied to `metrics` (unset optional thresholds are skipped)."""
    limits = {"ece": cfg.max_ece, "nll": cfg.max_nll, "overconfidence": cfg.max_overconfidence}
    return [GateCheck(name, getattr(metrics, name), limit) for name, limit in limits.items()
            if limit is not None]


def tokens_in_window(examples: list[dict[str, list[int]]], max_length: int) -> int:
    """Response tokens within the first `max_length` positions. A prompt that fills the window leaves its
    response only the one token `encode_pair` keeps past it: a measure of the cut, not of the response."""
    return sum(label != IGNORE_INDEX for e in examples for label in e["labels"][:max_length])


def response_logit_batches(model, examples: list[dict], pad_token_id: int, batch_size: int,
                           max_tokens: int | None = None, logit_scale: float = 1.0,
                           vocab_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (logits, next-token targets) for the response tokens of each batch, at most `max_tokens`.

    `vocab_size` cuts the logits to the shared tokenizer's ids: padded embedding rows are no outcome.
    """
    collate = CausalLMCollator(pad_token_id)
    seen = 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size])
        with torch.no_grad():  # not inference_mode: fitting T backpropagates through these
            logits, targets = response_logits(model, batch)
        logits = logits[..., :vocab_size]
        if max_tokens is not None:
            logits, targets = logits[: max_tokens - seen], targets[: max_tokens - seen]
        seen += targets.numel()
        yield (logits * logit_scale if logit_scale != 1.0 else logits), targets
        if max_tokens is not None and seen >= max_tokens:
            return


def calibrate_teacher(c: CalibrationConfig, t: ModelConfig, held_out: list[dict], tokenizer,
                      teacher_dir: str | Path, out_dir: str | Path, device: str = "auto"
                      ) -> CalibrationReport:
    """Measure the teacher (section `t`, weights in `teacher_dir`) on the held-out instruction rows, draw
    the diagram, and judge it.

    The gate judges the distribution the student will be taught: the teacher's logits × logit_scale ÷ the
    calibration temperature, `calibration.temperature`, or with `calibration.fit_temperature` the T fitted
    on one half of the split (alternate rows), judged on the other half. `distill.temperature` only
    shapes the KD loss and plays no part here. The report's temperature is the one labels are made at.
    """
    rows = held_out[: c.max_examples]
    if len(rows) < (2 if c.fit_temperature else 1):
        raise ConfigError(f"calibration: the held-out (validation) split has {len(rows)} rows; raise "
                          "data.validation_fraction")
    train = t.train
    examples = encode_instruction_rows(tokenizer, rows, train.max_length, train.max_prompt_length)
    if tokens_in_window(examples, train.max_length) == 0:  # else the gate would judge nothing and pass
        raise ConfigError(f"calibration: no response token of the {len(rows)} held-out (validation) rows "
                          f"is within teacher.train.max_length={train.max_length}: their prompts fill it "
                          f"(teacher.train.max_prompt_length={train.max_prompt_length}); raise max_length "
                          f"above the prompts or lower max_prompt_length")
    model = load_causal_lm(teacher_dir, t).to(resolve_device(device)).eval()

    def batches(part: list[dict], max_tokens: int | None):
        return response_logit_batches(model, part, tokenizer.pad_token_id, c.batch_size, max_tokens,
                                      c.logit_scale, len(tokenizer))

    given = CalibrationAccumulator(c.n_bins, c.temperature)
    before = None
    if c.fit_temperature:
        fit_part, check_part = examples[0::2], examples[1::2]
        fit_logits, fit_targets = zip(*batches(fit_part, c.fit_max_tokens), strict=True)
        temperature = fit_temperature(torch.cat(fit_logits), torch.cat(fit_targets))
        fitted = CalibrationAccumulator(c.n_bins, temperature)
        for logits, targets in batches(check_part, c.max_tokens):
            given.update(logits, targets)
            fitted.update(logits, targets)
        before, metrics = given.compute(), fitted.compute()
    else:
        temperature = c.temperature
        for logits, targets in batches(examples, c.max_tokens):
            given.update(logits, targets)
        metrics = given.compute()
    report = CalibrationReport(metrics=metrics, checks=gate_checks(metrics, c), temperature=temperature,
                               diagram=str(Path(out_dir) / "reliability.png"), before=before)
    # Written as one directory, so a rerun into the same place leaves no stale picture behind.
    with atomic_dir(out_dir) as tmp:
        reliability_diagram(metrics, tmp / "reliability.png", "teacher calibration (held-out)")
        if before is not None:
            reliability_diagram(before, tmp / "reliability_before_fit.png", "teacher before temperature fit")
        write_json(tmp / "calibration.json", report.to_dict())
    return report


def calibration_table(report: CalibrationReport):
    """A rich Table: each metric, its maximum when the gate checks it, and the verdict per check."""
    from rich.table import Table

    limits = {check.name: check for check in report.checks}
    table = Table(title=f"teacher calibration (held-out response tokens, T={report.temperature:.3g})")
    columns = ["metric", *(["before fit"] if report.before else []), "value", "max", "check"]
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    before = report.before.scalars() if report.before else None
    for name, value in report.metrics.scalars().items():
        check = limits.get(name)
        cells = [f"{before[name]:.4g}"] if before else []
        verdict = "" if check is None else ("[green]ok[/]" if check.passed else "[red]FAIL[/]")
        table.add_row(name, *cells, f"{value:.4g}", f"{check.threshold:.4g}" if check else "", verdict)
    return table
