"""The read side of a prepared dataset directory (`<output_dir>/datasets/<key>`), written by the data
stage: its splits, key and lexicon, the training split encoded for a tokenizer, and the detector's rows."""

from __future__ import annotations

from pathlib import Path

from smoothkd.config import DataConfig, TrainConfig
from smoothkd.data.corpus import corpus_is_complete, generate_corpus, load_lexicon
from smoothkd.data.tokenize import encode_instruction_rows
from smoothkd.io import content_hash, read_json, read_jsonl

EVAL_KINDS = ("cnndm", "xsum")


def read_split(data_dir: str | Path, name: str) -> list[dict]:
    """The rows of split `name` (train, validation, cnndm, xsum) of a dataset directory."""
    return read_jsonl(Path(data_dir) / f"{name}.jsonl")


def dataset_key(data_dir: str | Path) -> str:
    """The content hash the data stage named the directory by."""
    return read_json(Path(data_dir) / "manifest.json")["key"]


TRAINING_SPLITS = ("train.jsonl", "validation.jsonl")


def training_key(data_dir: str | Path) -> str:
    """The content hash of the splits training reads (train, and validation for the calibration gate):
    what the tokenizer, teacher, labels and students depend on. Evaluation rows are not in it, so a run
    that evaluates on more rows (the sweep) reuses the models another run trained."""
    files = read_json(Path(data_dir) / "manifest.json")["files"]
    return content_hash(*(f"{name}:{files[name]}" for name in TRAINING_SPLITS))[:16]


def dataset_lexicon(data_dir: str | Path) -> dict[str, list[str]] | None:
    """The embedded corpus's entity lexicon for fact matching; None for datasets from elsewhere."""
    corpus = read_json(Path(data_dir) / "manifest.json").get("embedded_corpus")
    return load_lexicon(corpus) if corpus and (Path(corpus) / "lexicon.json").exists() else None


def train_examples(tokenizer, data_dir: str | Path, train_cfg: TrainConfig) -> list[dict]:
    """The training split encoded for `tokenizer` within the section's length limits."""
    return encode_instruction_rows(tokenizer, read_split(data_dir, "train"), train_cfg.max_length,
                                   train_cfg.max_prompt_length)


def uses_embedded(data_cfg: DataConfig) -> bool:
    """Whether any split comes from the generated corpus."""
    return any(getattr(data_cfg, k).source == "embedded" for k in ("instruction", *EVAL_KINDS))


def detector_rows(data_cfg: DataConfig, n_rows: int, data_dir: str | Path, root: Path) -> list[dict]:
    """Held-out instruction rows with a context for the detector: the validation split's, topped up to
    `n_rows` from a second embedded corpus (another seed, under `root/corpus`) when the data is embedded."""
    rows = [r for r in read_split(data_dir, "validation") if r.get("context")]
    need = n_rows - len(rows)
    if need <= 0 or not uses_embedded(data_cfg):
        return rows[:n_rows]
    seen = {r.get("context") or r.get("article") or r.get("document")
            for split in ("train", "validation", *EVAL_KINDS) for r in read_split(data_dir, split)}
    extra = root / "corpus" / f"detector-{data_cfg.seed + 1}-{need}"
    if not corpus_is_complete(extra):
        # About 60% of instruction rows carry a context; twice the need leaves room for the filter.
        generate_corpus(extra, seed=data_cfg.seed + 1, n_instruction=2 * need, n_cnndm=1, n_xsum=1)
    fresh = [r for r in read_jsonl(extra / "instruction.jsonl") if r["context"] and r["context"] not in seen]
    return rows + fresh[:need]
