"""What a model or tokenizer is, as a hash: the key that label stores, detectors, evaluations and the
registry share, so the same weights are recognised wherever they turn up."""

from __future__ import annotations

import functools
from pathlib import Path

from smoothkd.io import content_hash, sha256_file

MODEL_FILES = ("*.safetensors", "config.json")


def _matching_files(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted(p for pattern in patterns for p in path.glob(pattern)) if path.is_dir() else []


def directory_identity(path: str | Path, patterns: tuple[str, ...]) -> str:
    """sha256 over the matching files of a local model/tokenizer dir; the id itself for a hub name."""
    path = Path(path)
    if not path.is_dir():
        return f"hub:{path}"
    return content_hash([(p.name, sha256_file(p)) for p in _matching_files(path, patterns)])


def files_stamp(path: str | Path, patterns: tuple[str, ...]) -> tuple:
    """(path, size, mtime) of each matching file of a local directory (nothing for a hub name): a cache key
    that changes when one of them is rewritten, at the cost of a stat each."""
    files = _matching_files(Path(path), patterns)
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def model_identity(model_path: str | Path) -> str:
    """sha256 over a model directory's weights and config (the id itself for a hub name).

    Within one process (the local orchestrator runs every step in one) the hash is computed once per
    unchanged set of files.
    """
    return _identity(str(model_path), files_stamp(model_path, MODEL_FILES))


@functools.lru_cache(maxsize=64)
def _identity(model_path: str, file_stats: tuple) -> str:
    # `file_stats` (path, size, mtime) is only the cache key: a rewritten file gets hashed again.
    return directory_identity(model_path, MODEL_FILES)
