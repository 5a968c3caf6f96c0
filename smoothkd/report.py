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
    """A rich Table: one row per (split, model), one column per metric."""
    from rich.table import Table

    by_split: dict[str, dict[str, dict[str, float]]] = {}
    for m in results["models"]:
        for name, value in m["metrics"].items():
            split, metric = name.split("/", 1)
            by_split.setdefault(split, {}).setdefault(m["role"], {})[metric] = value
    metric_names = sorted({metric for rows in by_split.values() for r in rows.values() for metric in r})
    table = Table(title="smoothkd results (ROUGE F1 ×100)")
    for column in ("split", "model", "params"):
        table.add_column(column)
    for name in metric_names:
        table.add_column(name, justify="right")
    params = {m["role"]: m["parameters"] for m in results["models"]}
    cached = {m["role"] for m in results["models"] if m.get("cached")}
    for split, rows in sorted(by_split.items()):
        for role, values in rows.items():
            cells = [f"{values[n]:.2f}" if n in values else "-" for n in metric_names]
            label = role + (" (cached)" if role in cached else "")
            table.add_row(split, label, f"{params[role] / 1e6:.2f}M", *cells)
        table.add_section()
    return table
