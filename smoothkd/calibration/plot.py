"""Reliability diagram with the confidence histogram under it (PNG, Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

from smoothkd.calibration.metrics import CalibrationMetrics


def reliability_diagram(metrics: CalibrationMetrics, path: str | Path, title: str = "teacher calibration"
                        ) -> Path:
    """Draw accuracy per confidence bin against the diagonal, and how many tokens fall in each bin."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_bins = len(metrics.bin_counts)
    width = 1.0 / n_bins
    lefts = [i * width for i in range(n_bins)]
    filled = [c > 0 for c in metrics.bin_counts]
    fig = Figure(figsize=(5, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    acc = [a if f else 0.0 for a, f in zip(metrics.bin_accuracy, filled, strict=True)]
    conf = [c if f else 0.0 for c, f in zip(metrics.bin_confidence, filled, strict=True)]
    top.bar(lefts, acc, width=width, align="edge", color="tab:blue", edgecolor="black", label="accuracy")
    # The gap to each bin's mean confidence: red above the bar means overconfident.
    gap_bottom = [min(a, c) for a, c in zip(acc, conf, strict=True)]
    gap = [abs(c - a) for a, c in zip(acc, conf, strict=True)]
    top.bar(lefts, gap, bottom=gap_bottom, width=width, align="edge", color="tab:red", alpha=0.35,
            edgecolor="tab:red", hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}\nECE {metrics.ece:.3f}  adaptive ECE {metrics.adaptive_ece:.3f}  "
                  f"NLL {metrics.nll:.2f}  T {metrics.temperature:.2f}", fontsize=9)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lefts, metrics.bin_counts, width=width, align="edge", color="tab:gray", edgecolor="black")
    bottom.axvline(metrics.accuracy, color="tab:blue", linestyle="--",
                   label=f"accuracy {metrics.accuracy:.2f}")
    bottom.axvline(metrics.confidence, color="tab:red", linestyle="--",
                   label=f"mean confidence {metrics.confidence:.2f}")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("tokens")
    bottom.legend(loc="upper left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
