"""Per-example hallucination localisation: which summaries state which unsupported facts.

One row per evaluated example: id, generated summary, reference, ROUGE-Lsum, factual-consistency score,
the summary's unsupported facts with their types, and any further per-example scores (`factual_rate`,
`lookback_ratio`, ...). `write_localization` writes the table as CSV, JSON and a self-contained HTML page
in which unsupported facts are highlighted inside the summary.
"""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from smoothkd.evaluation.facts import FactCheck
from smoothkd.io import atomic_write_text, write_json

FILES = {"csv": "localization.csv", "json": "localization.json", "html": "localization.html"}


@dataclass
class LocalizationRow:
    """One evaluated example. `facts` comes from `score_facts`; `scores` holds extra per-example columns."""

    id: str
    summary: str
    reference: str
    rougeLsum: float
    consistency: float
    facts: FactCheck = field(default_factory=FactCheck)
    source: str = ""
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def unsupported(self) -> list[tuple[str, str]]:
        """(type, value) of each unsupported fact, in summary order."""
        return [(f.type, f.value) for f in self.facts.unsupported]


def localization_rows(ids: list[str], summaries: list[str], references: list[str], rouge_lsum: list[float],
                      consistency: list[float], fact_checks: list[FactCheck] | None = None,
                      sources: list[str] | None = None, scores: dict[str, list[float]] | None = None
                      ) -> list[LocalizationRow]:
    """Zip per-example columns into rows; `scores` maps a column name to one value per example."""
    n = len(ids)
    columns = {"summaries": summaries, "references": references, "rouge_lsum": rouge_lsum,
               "consistency": consistency, "fact_checks": fact_checks or [FactCheck() for _ in range(n)],
               "sources": sources or [""] * n, **(scores or {})}
    for name, column in columns.items():
        if len(column) != n:
            raise ValueError(f"localization column {name} has {len(column)} values for {n} ids")
    return [
        LocalizationRow(id=ids[i], summary=summaries[i], reference=references[i], rougeLsum=rouge_lsum[i],
                        consistency=consistency[i], facts=columns["fact_checks"][i],
                        source=columns["sources"][i], scores={k: v[i] for k, v in (scores or {}).items()})
        for i in range(n)
    ]


def _score_names(rows: list[LocalizationRow]) -> list[str]:
    return sorted({name for row in rows for name in row.scores})


def _csv(rows: list[LocalizationRow]) -> str:
    extra = _score_names(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "summary", "reference", "rougeLsum", "consistency", "n_unsupported",
                     "unsupported", *extra])
    for row in rows:
        unsupported = "; ".join(f"{kind}: {value}" for kind, value in row.unsupported)
        writer.writerow([row.id, row.summary, row.reference, row.rougeLsum, row.consistency,
                         len(row.unsupported), unsupported, *(row.scores.get(name, "") for name in extra)])
    return buffer.getvalue()


def _json(rows: list[LocalizationRow]) -> list[dict]:
    return [{
        "id": row.id, "summary": row.summary, "reference": row.reference, "source": row.source,
        "rougeLsum": row.rougeLsum, "consistency": row.consistency, "scores": row.scores,
        "facts": [{"type": f.type, "value": f.value, "supported": f.supported, "trap": f.trap,
                   "spans": [list(s) for s in f.spans]} for f in row.facts.facts],
    } for row in rows]


def _highlighted(row: LocalizationRow) -> str:
    """The summary as HTML: unsupported facts in <mark>, supported ones underlined, the rest escaped."""
    marks = sorted((start, end, fact) for fact in row.facts.facts for start, end in fact.spans)
    parts, cursor = [], 0
    for start, end, fact in marks:
        if start < cursor:
            continue
        parts.append(html.escape(row.summary[cursor:start]))
        label = html.escape(f"{fact.type}{' (prior trap)' if fact.trap else ''}", quote=True)
        tag, css = ("mark", "unsupported") if not fact.supported else ("span", "supported")
        parts.append(f'<{tag} class="{css}" title="{label}">{html.escape(row.summary[start:end])}</{tag}>')
        cursor = end
    parts.append(html.escape(row.summary[cursor:]))
    return "".join(parts)


def _number(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.4em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
mark.unsupported { background: #ffb3b3; }
span.supported { text-decoration: underline dotted #2a7; }
td.num { text-align: right; white-space: nowrap; }
details { color: #555; }
"""


def _html(rows: list[LocalizationRow], title: str) -> str:
    extra = _score_names(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["id", "summary (unsupported facts highlighted)", "reference", "ROUGE-Lsum", "consistency",
                    "unsupported facts", *extra])
    body = []
    for row in rows:
        unsupported = "<br>".join(html.escape(f"{kind}: {value}") for kind, value in row.unsupported)
        source = ""
        if row.source:
            source = f"<details><summary>source</summary>{html.escape(row.source)}</details>"
        cells = [
            f"<td>{html.escape(row.id)}</td>",
            f"<td>{_highlighted(row)}{source}</td>",
            f"<td>{html.escape(row.reference).replace(chr(10), '<br>')}</td>",
            f'<td class="num">{_number(row.rougeLsum)}</td>',
            f'<td class="num">{_number(row.consistency)}</td>',
            f"<td>{unsupported}</td>",
            *(f'<td class="num">{_number(row.scores.get(name))}</td>' for name in extra),
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    n_flagged = sum(1 for row in rows if row.unsupported)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(rows)} examples, {n_flagged} with at least one unsupported fact.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>\n"
    )


def write_localization(rows: list[LocalizationRow], out_dir: str | Path, title: str) -> dict[str, Path]:
    """Write `localization.{csv,json,html}` into `out_dir` atomically; return their paths by format."""
    out = Path(out_dir)
    return {
        "csv": atomic_write_text(out / FILES["csv"], _csv(rows)),
        "json": write_json(out / FILES["json"], {"title": title, "rows": _json(rows)}),
        "html": atomic_write_text(out / FILES["html"], _html(rows, title)),
    }
