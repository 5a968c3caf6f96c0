"""What an evaluation measured on, as hashes: the rows, each metric's scorer, the generation settings and
the scoring code.

Two models' per-example scores are paired by the gate only when their evaluations agree on all that
bears on the metric compared (`EvalIdentity.differences`); otherwise the promotion flow re-evaluates the
champion on the candidate's rows first. Ids alone say nothing: embedded ids are positional, so another
`data.seed` gives other articles under the same ids.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

from smoothkd.config import EvalConfig
from smoothkd.io import content_hash, read_json, sha256_file

# Logged in each evaluated model's run, beside its per-example scores.
IDENTITY_ARTIFACT = "evaluation/identity.json"
# Per-example columns read from the factual-rate detector: only these depend on which detector scored them.
DETECTOR_METRICS = ("factual_rate", "lookback_ratio")
# Sources of the code that turns a model into scores (prompts, generation, scorers); a change re-evaluates.
_SCORING_CODE = ("smoothkd/evaluation", "smoothkd/data/prompts.py")


@dataclass(frozen=True)
class EvalIdentity:
    """Content hashes of what one evaluation depended on; equal hashes make per-example scores pairable."""

    examples: dict[str, str]  # per-example split (cnndm, xsum, general) -> sha256 of its rows
    scorers: dict[str, str]  # per-example metric -> identity of what scored it (incl. model weights)
    settings: str  # hash of the generation settings every metric depends on
    code: str  # hash of the scoring code
    # Where the rows and the detector lie, to evaluate another model on them: locations, never compared.
    data_dir: str = ""
    detector_path: str = ""

    def differences(self, other: EvalIdentity | None, split: str, metric: str) -> list[str]:
        """What keeps `metric` on `split` from being paired with `other`'s (empty: pairable)."""
        if other is None:
            return ["no recorded evaluation identity"]
        found = []
        mine = self.examples.get(split)
        if mine is None or mine != other.examples.get(split):
            found.append(f"examples ({split})")
        scorer = self.scorers.get(metric)
        if scorer is None or scorer != other.scorers.get(metric):
            found.append(f"scorer ({metric})")
        if self.settings != other.settings:
            found.append("generation settings")
        if self.code != other.code:
            found.append("scoring code")
        return found

    def describe(self) -> str:
        """One line a reader can compare: each split's rows, the consistency scorer, settings and code."""
        rows = ", ".join(f"{split} rows {digest[:12]}" for split, digest in self.examples.items())
        return (f"{rows}; consistency {self.scorers.get('factual_consistency', 'unknown')}; "
                f"generation settings {self.settings[:12]}; scoring code {self.code[:12]}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> EvalIdentity | None:
        return cls(**data) if data else None


def _digest(value: object) -> str:
    return content_hash(value)[:16]


@functools.lru_cache(maxsize=1)
def scoring_code_hash() -> str:
    """sha256 over the scoring code's sources (computed once per process)."""
    root = Path(__file__).resolve().parents[2]
    files = sorted(p for entry in _SCORING_CODE for p in
                   ((root / entry).rglob("*.py") if (root / entry).is_dir() else [root / entry]))
    return _digest([(str(p.relative_to(root)), sha256_file(p)) for p in files])


def _model_hash(ref: str) -> str:
    """A consistency model's weights hash: a local directory, or the hub id's cached snapshot."""
    from smoothkd.modeling.identity import model_identity

    path = Path(ref)
    if not path.is_dir():
        from transformers.utils import cached_file

        try:
            config = cached_file(ref, "config.json")
        except OSError:
            config = None
        if config is None:  # not downloaded: the scorer could not load either, the id is all there is
            return f"hub:{ref} (not cached)"
        path = Path(config).parent
    return model_identity(path)


def _consistency_scorer(eval_cfg: EvalConfig, lexicon: str) -> str:
    from smoothkd.evaluation.consistency import DEFAULT_HHEM_MODEL, DEFAULT_NLI_MODEL

    if eval_cfg.consistency == "fact_precision":
        return f"fact_precision lexicon={lexicon}"
    model = eval_cfg.consistency_model or (DEFAULT_NLI_MODEL if eval_cfg.consistency == "nli"
                                           else DEFAULT_HHEM_MODEL)
    tokenizer = eval_cfg.consistency_tokenizer or model
    tokenizer_id = _digest([(p.name, sha256_file(p)) for p in sorted(Path(tokenizer).glob("*token*"))]
                           ) if Path(tokenizer).is_dir() else tokenizer
    return (f"{eval_cfg.consistency} weights={_model_hash(model)} tokenizer={tokenizer_id} "
            f"max_length={eval_cfg.consistency_max_length}")


def evaluation_identity(eval_cfg: EvalConfig, data_dir: str | Path, max_prompt_length: int,
                        detector_path: str | Path | None = None) -> EvalIdentity:
    """The identity of an evaluation with `eval_cfg` on the dataset `data_dir` (a `prepare_data` output)."""
    data_dir = Path(data_dir)
    files = {split: f"{split}.jsonl" for split in eval_cfg.splits} | {"general": "validation.jsonl"}
    examples = {split: sha256_file(data_dir / name) for split, name in files.items()
                if (data_dir / name).exists()}
    corpus = read_json(data_dir / "manifest.json").get("embedded_corpus")
    lexicon_file = Path(corpus) / "lexicon.json" if corpus else None
    lexicon = sha256_file(lexicon_file)[:16] if lexicon_file and lexicon_file.exists() else "none"
    detector = sha256_file(detector_path)[:16] if detector_path else "none"
    scorers = {"factual_consistency": _consistency_scorer(eval_cfg, lexicon),
               "hallucinated_facts": f"fact_check lexicon={lexicon}",
               "rougeL": f"rouge stemmer={eval_cfg.use_stemmer}",
               "rougeLsum": f"rouge stemmer={eval_cfg.use_stemmer}",
               **{metric: f"detector={detector}" for metric in DETECTOR_METRICS}}
    settings = _digest({"max_new_tokens": eval_cfg.max_new_tokens, "batch_size": eval_cfg.batch_size,
                        "max_prompt_length": max_prompt_length})
    return EvalIdentity(examples, scorers, settings, scoring_code_hash(), str(data_dir),
                        str(detector_path or ""))
