"""Byte-level BPE tokenizer trained on the corpus, saved as a fast HF tokenizer.

Byte-level BPE round-trips any text (names, digits, punctuation) so generated summaries decode exactly,
which the fact-level evaluation depends on. `whole_tokens` (e.g. the embedded corpus's entities) become
tokens of their own, matched before BPE (leftmost, longest first), so a tiny model copies an entity as
one token instead of spelling it piece by piece.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from smoothkd.config import ModelConfig
from smoothkd.errors import TokenizerMismatchError
from smoothkd.io import atomic_dir

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
# GPT-2's convention: one end-of-text token, no BOS, no pad (`load_tokenizer` pads with it).
GPT2_SPECIAL_TOKENS = {"eos_token": "<|endoftext|>"}


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2048,
                        whole_tokens: Sequence[str] = (), special_tokens: dict[str, str] | None = None
                        ) -> Path:
    """Train a byte-level BPE tokenizer on `texts` and save it with `save_pretrained` (atomically).

    `whole_tokens` are added as tokens on top of the `vocab_size` BPE ones; they are cut out of the
    training texts first, so BPE spends its merges on the rest of the text. `special_tokens` (default
    `SPECIAL_TOKENS`; `GPT2_SPECIAL_TOKENS` for a GPT-2-style one) name the roles of the special tokens.
    """
    special_tokens = special_tokens or SPECIAL_TOKENS
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(dict.fromkeys(special_tokens.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if whole_tokens:
        pattern = re.compile("|".join(map(re.escape, sorted(whole_tokens, key=len, reverse=True))))
        texts = (pattern.sub(" ", text) for text in texts)
    core.train_from_iterator(texts, trainer=trainer)
    # Not normalised and not byte-level mapped: each is matched and decoded as its literal string.
    core.add_tokens([AddedToken(token, normalized=False) for token in whole_tokens])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **special_tokens)
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False
                   ) -> PreTrainedTokenizerBase:
    """Load a tokenizer by hub id or local path; add a pad token when the model has none."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                              trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Causal LMs like Llama ship without a pad token; eos is safe because padded positions are masked.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_run_tokenizer(tokenizer_ref: str | Path, model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The run's tokenizer, loaded with a model section's revision and remote-code setting.

    The revision applies only to a configured model (a hub tokenizer of that model); a tokenizer built
    from the data has none.
    """
    return load_tokenizer(str(tokenizer_ref), revision=model_cfg.revision if model_cfg.name_or_path else None,
                          trust_remote_code=model_cfg.trust_remote_code)


def vocab_difference(a, b) -> str | None:
    """None when two tokenizers map the same tokens to the same ids; else their sizes and a few of the
    (token, id) pairs only one of them has."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va == vb:
        return None
    differing = sorted(set(va.items()) ^ set(vb.items()))[:3]
    return f"{len(va)} vs {len(vb)} tokens, e.g. {differing}"


def check_tokenizers_agree(teacher_tokenizer, student_tokenizer) -> None:
    """Soft labels index the teacher's vocabulary: the student's must be the same token for token."""
    differs = vocab_difference(teacher_tokenizer, student_tokenizer)
    if differs:
        raise TokenizerMismatchError(f"teacher and student tokenizers differ ({differs}); KD needs one "
                                     "shared vocabulary: pick a student of the teacher's family")


def newline_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of every token whose text contains a newline: generation stops at any of them."""
    ids = []
    for token, idx in tokenizer.get_vocab().items():
        if "\n" in tokenizer.convert_tokens_to_string([token]):
            ids.append(idx)
    return sorted(ids)


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character for each byte, inverted (GPT-2's table, as
    transformers ships it)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes | None]:
    """The exact bytes each id spells in a text (None for special tokens), indexed by id.

    Byte-level BPE (GPT-2, Llama 3, Qwen, this project's) maps its printable stand-ins back to bytes, so a
    token holding half of a multi-byte character is half of its bytes; SentencePiece-style tokens map `▁`
    to a space and `<0xNN>` to that byte; added (non-special) tokens are their literal text. Whether the
    result spells a tokenizer's texts byte for byte is checked where it is used (`spells_text`).
    """
    decoder = json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder"))
    byte_level = "ByteLevel" in decoder
    to_byte = _byte_decoder()
    special = set(tokenizer.all_special_ids)
    added = {idx: tok.content for idx, tok in tokenizer.added_tokens_decoder.items() if not tok.special}
    out: list[bytes | None] = []
    for idx, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if idx in special or token is None:
            out.append(None)
        elif idx in added:
            out.append(added[idx].encode("utf-8"))
        elif byte_level and all(ch in to_byte for ch in token):
            out.append(bytes(to_byte[ch] for ch in token))
        elif match := _BYTE_PIECE.match(token):
            out.append(bytes([int(match.group(1), 16)]))
        else:
            out.append(token.replace("▁", " ").encode("utf-8"))
    return out


def spells_text(tokenizer: PreTrainedTokenizerBase, table: list[bytes | None], text: str) -> bool:
    """Whether `tokenizer`'s tokens of `text` (no special tokens) concatenate to its UTF-8 bytes."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return b"".join(table[i] or b"" for i in ids) == text.encode("utf-8")
