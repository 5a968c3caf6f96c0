"""Load one split (instruction, cnndm or xsum) from the embedded corpus, the Hugging Face hub or local files.

Every source ends up as a list of plain dicts holding the schema columns of the split kind as `str`
(renamed through `SplitSource.columns` when the source names them differently) plus whatever extra
columns the source carries. Hub and local files both go through `datasets.load_dataset`, so a local
copy exercises the same loading code as the hub. Every failure is a `DataLoadError` with a one-line
message naming the dataset or file, the column and the config key to fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

from smoothkd.config import SplitSource
from smoothkd.data.schema import COLUMNS, HUB_DEFAULTS, SplitKind
from smoothkd.errors import DataLoadError

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_FORMATS = "jsonl, json, parquet or csv"
_MAX_REASON = 200


def load_split(kind: SplitKind, source: SplitSource, embedded_dir: str | Path | None = None) -> list[dict]:
    """Load the rows of split `kind` from `source`, mapped to the schema columns and truncated.

    `embedded_dir` holds `<kind>.jsonl` files of the generated corpus; only the `embedded` source uses it.
    """
    if source.source == "embedded":
        rows, found, origin = _read_embedded(kind, source, embedded_dir)
    elif source.source == "hub":
        rows, found, origin = _read_hub(kind, source)
    else:
        rows, found, origin = _read_local(kind, source)
    if not rows:
        raise DataLoadError(f"{origin} has no rows (data.{kind})")
    return _to_schema(kind, rows, found, source.columns, origin)


def _read_embedded(
    kind: SplitKind, source: SplitSource, embedded_dir: str | Path | None
) -> tuple[list[dict], list[str], str]:
    if embedded_dir is None:
        raise DataLoadError(f"data.{kind} is embedded but no embedded corpus directory was given")
    file = Path(embedded_dir) / f"{kind}.jsonl"
    if not file.is_file():
        raise DataLoadError(f"embedded corpus file not found: {file} (data.{kind})")
    rows: list[dict] = []
    with file.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if source.max_examples is not None and len(rows) >= source.max_examples:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataLoadError(f"{file}:{line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataLoadError(f"{file}:{line_no}: expected a JSON object per line")
            rows.append(row)
    # Like the json builder of `datasets`: a key missing from some rows is a column whose value is None there.
    found = list(dict.fromkeys(key for row in rows for key in row))
    return rows, found, str(file)


def _read_hub(kind: SplitKind, source: SplitSource) -> tuple[list[dict], list[str], str]:
    default_path, default_name = HUB_DEFAULTS[kind]
    path = source.path or default_path
    # The default config name belongs to the default dataset; another dataset has its own configs.
    name = source.name if source.path else source.name or default_name
    details = ", ".join(
        part
        for part in (name, f"split {source.split}", source.revision and f"revision {source.revision}")
        if part
    )
    # Offline mode, no network, an unknown id and a broken dataset all have one fix: a local copy.
    try:
        ds = datasets.load_dataset(path, name, split=source.split, revision=source.revision)
    except Exception as exc:
        raise DataLoadError(
            f"cannot load hub dataset '{path}' ({details}): {_short_reason(exc)}. "
            f"Point data.{kind} at a local copy: source: local, path: /path/to/file.jsonl "
            f"({_FORMATS}; map columns with data.{kind}.columns)."
        ) from exc
    return _materialize(ds, source.max_examples), list(ds.column_names), f"hub dataset '{path}'"


def _read_local(kind: SplitKind, source: SplitSource) -> tuple[list[dict], list[str], str]:
    if not source.path:
        raise DataLoadError(f"data.{kind}.source is local but data.{kind}.path is not set")
    root = Path(source.path).expanduser()
    if not root.exists():
        raise DataLoadError(f"local data file not found: {root} (data.{kind}.path)")
    files = _data_files(root, kind)
    builders = {_BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise DataLoadError(
            f"{root} mixes file formats ({', '.join(sorted(builders))}); "
            f"keep one format per split (data.{kind}.path)"
        )
    builder = builders.pop()
    # Without this, pandas turns empty CSV cells into NaN floats, which would become the string "nan".
    options = {"keep_default_na": False} if builder == "csv" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **options)
    except Exception as exc:
        raise DataLoadError(
            f"cannot read {root} as {builder}: {_short_reason(exc)} (data.{kind}.path)"
        ) from exc
    return _materialize(ds, source.max_examples), list(ds.column_names), str(root)


def _data_files(root: Path, kind: SplitKind) -> list[Path]:
    if root.is_file():
        if root.suffix.lower() not in _BUILDERS:
            raise DataLoadError(
                f"{root}: unsupported file type '{root.suffix}', expected {_FORMATS} (data.{kind}.path)"
            )
        return [root]
    # Sorted so shards load in a stable order; hidden entries (e.g. a `.cache` folder) are not data.
    files = sorted(
        f
        for f in root.rglob("*")
        if f.is_file()
        and f.suffix.lower() in _BUILDERS
        and not any(p.startswith(".") for p in f.relative_to(root).parts)
    )
    if not files:
        raise DataLoadError(f"no {_FORMATS} files in directory {root} (data.{kind}.path)")
    return files


def _materialize(ds: datasets.Dataset, max_examples: int | None) -> list[dict]:
    if max_examples is not None and max_examples < len(ds):
        ds = ds.select(range(max_examples))
    return ds.to_list()


def _to_schema(
    kind: SplitKind, rows: list[dict], found: list[str], columns: dict[str, str], origin: str
) -> list[dict]:
    wanted = COLUMNS[kind]
    for column in wanted:
        source_column = columns.get(column, column)
        if source_column not in found:
            mapped = f" (the source column for '{column}')" if source_column != column else ""
            raise DataLoadError(
                f"column '{source_column}'{mapped} not found in {origin}; columns found: {', '.join(found)}. "
                f"Map it with data.{kind}.columns, e.g. {{{column}: <source column>}}"
            )
    renamed_away = {columns[c] for c in wanted if c in columns} - set(wanted)
    out = []
    for index, row in enumerate(rows):
        record: dict[str, Any] = {k: v for k, v in row.items() if k not in renamed_away and k not in wanted}
        for column in wanted:
            value = row.get(columns.get(column, column))
            record[column] = "" if value is None else str(value)
        if kind == "instruction" and record.get("id") in (None, ""):
            record["id"] = f"{kind}-{index:06d}"
        out.append(record)
    return out


def _short_reason(exc: BaseException) -> str:
    # DatasetGenerationError only says "an error occurred"; the parse error that explains it is its cause.
    while isinstance(exc, datasets.exceptions.DatasetGenerationError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split()).rstrip(".") or "no details"
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3] + "..."
    return f"{type(exc).__name__}: {text}"
