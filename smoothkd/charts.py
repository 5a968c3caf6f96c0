"""The run's pictures: SFT-vs-KD metrics with confidence intervals (and held-out calibration), and the
training loss curves."""

from __future__ import annotations

from pathlib import Path

from smoothkd.artifacts import ModelResult, model_label

COMPARED = (("rougeLsum", "ROUGE-Lsum"), ("factual_consistency", "factual consistency (%)"),
            ("factual_rate", "factual rate (%)"), ("prior_trap_rate", "prior-trap rate (%)"))
# The last row: held-out calibration of each model's next-token predictions (one value, no CI).
CALIBRATION = (("general/ece", "held-out ECE"), ("general/overconfidence", "held-out overconfidence"))


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def comparison_chart(models: list[ModelResult], splits: list[str], path: str | Path) -> Path:
    """One panel per (split, metric): a bar per model with its bootstrap CI as an error bar; a last row
    with each model's held-out calibration."""
    fig = _figure((4 * len(COMPARED), 3.2 * (len(splits) + 1)))
    axes = fig.subplots(len(splits) + 1, len(COMPARED), squeeze=False)
    roles = [m.role for m in models]
    colors = ["0.55" if r == "teacher" else "tab:orange" if r.endswith("sft") else "tab:blue" for r in roles]
    panels = [(axes[row][col], f"{split}/{metric}", f"{split}: {label}")
              for row, split in enumerate(splits) for col, (metric, label) in enumerate(COMPARED)]
    panels += [(axes[-1][col], name, label) for col, (name, label) in enumerate(CALIBRATION)]
    for ax in axes[-1][len(CALIBRATION):]:
        ax.set_axis_off()
    for ax, name, title in panels:
        values = [m.metrics.get(name, float("nan")) for m in models]
        low = [v - m.metrics.get(f"{name}_ci_low", v) for v, m in zip(values, models, strict=True)]
        high = [m.metrics.get(f"{name}_ci_high", v) - v for v, m in zip(values, models, strict=True)]
        ax.bar(range(len(models)), values, yerr=[low, high], capsize=4, color=colors)
        ax.set_xticks(range(len(models)), [m.name for m in models], rotation=20)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("SFT baseline vs KD students (bars: mean, whiskers: 95% bootstrap CI)")
    fig.savefig(path, dpi=110)
    return Path(path)


def loss_curves_chart(curves: dict[str, list], path: str | Path) -> Path:
    """Training loss against step, one line per model."""
    fig = _figure((6.5, 4))
    ax = fig.subplots()
    for role, points in curves.items():
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, label=model_label(role))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss (KD students: (1−α)·NLL + α·KD)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    return Path(path)


def sweep_chart(differences: list[dict], labels: dict[str, str], confidence: float, path: str | Path
                ) -> Path:
    """The α ablation: one panel per (split, metric), each arm (a KD α, or an A/A arm) − SFT with its CI as
    whiskers and each seed's own difference as a dot, so seed-to-seed spread stays visible. `differences`
    are records with arm, alpha, split, metric, mean, low, high and per_seed; `labels` names the metrics in
    panel order."""
    splits = list(dict.fromkeys(d["split"] for d in differences))
    metrics = [m for m in labels if any(d["metric"] == m for d in differences)]
    fig = _figure((3.6 * max(len(metrics), 1), 3.0 * max(len(splits), 1)))
    axes = fig.subplots(max(len(splits), 1), max(len(metrics), 1), squeeze=False)
    for row, split in enumerate(splits):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            cells = sorted((d for d in differences if d["split"] == split and d["metric"] == metric),
                           key=lambda d: (d["alpha"], d["arm"]))
            if not cells:  # e.g. a calibration metric of the held-out split only: no panel for cnndm
                ax.set_axis_off()
                continue
            ax.axhline(0.0, color="0.5", linewidth=0.8)
            for x, d in enumerate(cells):
                ax.errorbar([x], [d["mean"]], yerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]],
                            fmt="o", color="tab:blue", capsize=4)
                seeds = list(d["per_seed"].values())
                ax.scatter([x + 0.15] * len(seeds), seeds, s=10, color="tab:orange", zorder=3)
            ax.set_xticks(range(len(cells)), [d["arm"] for d in cells])
            ax.set_xlim(-0.5, len(cells) - 0.5)
            ax.set_title(f"{split}: {labels[metric]}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"arm − SFT (same seed, same examples): mean and {confidence:.0%} CI; dots: one seed each")
    fig.savefig(path, dpi=110)
    return Path(path)
