"""The run's results record and its console rendering."""

from __future__ import annotations

from typing import Any


def build_results(summaries: list[dict]) -> dict[str, Any]:
    """One record per model: role, path, size, cache use and metrics (predictions left out)."""
    models = []
    for s in summaries:
        models.append({key: s[key] for key in ("role", "path", "parameters", "cached", "train_seconds")}
                      | {"metrics": dict(sorted(s["metrics"].items()))})
    return {"models": models}


def results_table(results: dict[str, Any]):
    """A rich Table: one row per model, one column per metric."""
    from rich.table import Table

    metric_names = sorted({name for m in results["models"] for name in m["metrics"]})
    table = Table(title="smoothkd results (ROUGE F1 ×100)")
    table.add_column("model")
    table.add_column("params", justify="right")
    for name in metric_names:
        table.add_column(name, justify="right")
    for m in results["models"]:
        cells = [f"{m['metrics'][n]:.2f}" if n in m["metrics"] else "-" for n in metric_names]
        tag = " (cached)" if m.get("cached") else ""
        table.add_row(m["role"] + tag, f"{m['parameters'] / 1e6:.2f}M", *cells)
    return table
