"""Teacher soft labels, precomputed once and stored compactly.

For every response token the store keeps the distribution the student is taught (the teacher's logits
× `calibration.logit_scale` ÷ the calibration temperature) reduced to k + 1 outcomes: its top-k
log-probabilities, their token ids, and the tail bucket log(1 − Σ p_topk), computed from the full
log-softmax (not as 1 − Σ, which cancels catastrophically on confident tokens) and stored explicitly.

Encodings:
- `compact` (default): per token, the ids bit-packed at ⌈log2 V⌉ bits each (11 bits at the demo's V = 1,248
  with its whole-entity tokens, 18 at Qwen's 151,936); the top-k log-probs *relative to the top-1* quantised
  to uint8 in 1/16-nat steps (k − 1 bytes: the top-1 itself is implied); the tail log-mass in float16. Every
  small mass thus keeps relative precision (≤ 3.2 % per top-k entry, ≤ 0.4 % for a tail ≥ 1e-4), and the
  top-1 follows from normalisation: p_1 = (1 − tail) / Σ_i exp(r_i). On a confident token the stored target
  keeps the teacher's tail instead of rounding log p_1 to 0, which would make it sharper than the teacher
  (the bug of format 2, where absolute log-probs were quantised). k = 16 costs 2·bits + 17 bytes/token: 39
  at the demo's V = 1,248, 53 at 151,936.
- `exact`: int32 ids and float32 log-probs and tail, for tests against dense references.

With `labels="sampled"` a token's label is instead S draws from the taught distribution, ids only, packed
the same way (`smoothkd.distill.sampled`, the unbiased estimator); everything below applies to both kinds.

Layout of a store directory `<root>/<key>/`: `shard-00000.npz`, ... each written atomically and followed
by its record `shard-00000.json` (sha256, token count, summed top-k mass), so an interrupted precompute
resumes from its complete shards; `manifest.json`, written last, gathers the records (and replaces them),
so it states the captured mass without anyone rereading the shards. The key hashes teacher, tokenizer,
data, k, calibration temperature, logit scale and encoding: the same inputs find the same directory and
no teacher forward pass runs again.

Inside a torch.distributed world (torchrun, `accelerate launch`) rank r computes shards r, r + N, ...;
per-shard records make concurrent writers safe and let a rerun resume with any number of processes.
Rank 0 writes the manifest once every rank's shards exist.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from smoothkd.config import ConfigError
from smoothkd.data.tokenize import IGNORE_INDEX, CausalLMCollator
from smoothkd.distill import sampled
from smoothkd.distill.crosstok import CrossStats, CrossTokenizer, response_pairs, teacher_view
from smoothkd.distill.losses import log1mexp
from smoothkd.distill.runtime import rank_and_world
from smoothkd.errors import CorruptLabelStoreError
from smoothkd.io import atomic_write_bytes, content_hash, read_json, sha256_file, write_json
from smoothkd.modeling.models import response_logits

LOGP_STEP = 1.0 / 16.0
# Part of every store key: bumped whenever the on-disk layout changes, so an older store is never read
# with the wrong layout (2: per-shard records, top-k mass in the manifest; 3: explicit float16 tail,
# values relative to the top-1, bit-packed ids, labels at the calibration temperature).
FORMAT_VERSION = 3


@dataclass(frozen=True)
class LabelSpec:
    """What a store holds: the top-k of softmax(logits · logit_scale / calibration_temperature), the
    distribution the student is taught (the distillation temperature only shapes the loss, at training)."""

    top_k: int = 16
    calibration_temperature: float = 1.0
    logit_scale: float = 1.0
    encoding: str = "compact"
    shard_size: int = 512
    labels: str = "topk"  # or "sampled": `samples` draws per token instead of the top-k
    samples: int = 24


@dataclass
class TopK:
    """Per-token labels on k + 1 outcomes: ids [n, k], log-probs [n, k], tail log-mass [n]."""

    ids: torch.Tensor
    logp: torch.Tensor
    tail: torch.Tensor


def id_bits(vocab_size: int) -> int:
    """Bits per packed token id: enough for ids 0 … vocab_size − 1."""
    return max(1, math.ceil(math.log2(vocab_size)))


def bytes_per_token(spec: LabelSpec, vocab_size: int) -> int:
    """Stored bytes per response token (ids, values and tail; the per-example lengths aside)."""
    if spec.labels == "sampled":  # ids only
        bits = 32 if spec.encoding == "exact" else id_bits(vocab_size)
        return math.ceil(spec.samples * bits / 8)
    k = spec.top_k
    if spec.encoding == "exact":
        return k * 8 + 4
    return math.ceil(k * id_bits(vocab_size) / 8) + (k - 1) + 2


def pack_ids(ids: np.ndarray, bits: int) -> np.ndarray:
    """[n, k] ids < 2**bits → [n, ⌈k·bits / 8⌉] uint8, each token's ids one little-endian bit string."""
    ids = ids.astype(np.uint64)
    shifts = np.arange(bits, dtype=np.uint64)
    flat = ((ids[..., None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(ids.shape[0], -1)
    return np.packbits(flat, axis=-1, bitorder="little")


def unpack_ids(packed: np.ndarray, k: int, bits: int) -> np.ndarray:
    """Inverse of `pack_ids`: [n, k] int64."""
    flat = np.unpackbits(packed, axis=-1, count=k * bits, bitorder="little")
    weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))
    return flat.reshape(packed.shape[0], k, bits).astype(np.int64) @ weights


def encode_labels(labels: TopK, spec: LabelSpec, vocab_size: int) -> dict[str, np.ndarray]:
    """The arrays a shard stores for `labels` (log-probs sorted descending per token, as topk gives);
    sampled labels store their draws' ids only."""
    if spec.labels == "sampled":
        ids = labels.ids.numpy()
        exact = spec.encoding == "exact"
        return {"ids": ids.astype(np.int32) if exact else pack_ids(ids, id_bits(vocab_size))}
    if spec.encoding == "exact":
        return {"ids": labels.ids.numpy().astype(np.int32), "logp": labels.logp.numpy().astype(np.float32),
                "tail": labels.tail.numpy().astype(np.float32)}
    relative = labels.logp[:, 1:] - labels.logp[:, :1]  # ≤ 0: log(p_i / p_1)
    quantised = torch.clamp(torch.round(-relative / LOGP_STEP), 0, 255).to(torch.uint8)
    return {"ids": pack_ids(labels.ids.numpy(), id_bits(vocab_size)), "logp": quantised.numpy(),
            "tail": labels.tail.numpy().astype(np.float16)}


def decode_labels(ids: np.ndarray, logp: np.ndarray, tail: np.ndarray, top_k: int, vocab_size: int
                  ) -> TopK:
    """Labels back from a shard's arrays (either encoding); the k + 1 outcomes sum to 1."""
    tail_t = torch.from_numpy(tail.astype(np.float32))
    if logp.dtype != np.uint8:  # exact
        return TopK(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(logp.astype(np.float32)),
                    tail_t)
    relative = torch.from_numpy(logp.astype(np.float32)) * -LOGP_STEP
    relative = torch.cat([torch.zeros_like(relative[:, :1]), relative], dim=-1)
    # p_i = exp(r_i) · (1 − tail) / Σ_j exp(r_j); log(1 − tail) is 0 for a complete support (tail −inf).
    values = relative - torch.logsumexp(relative, dim=-1, keepdim=True) + log1mexp(tail_t).unsqueeze(-1)
    return TopK(torch.from_numpy(unpack_ids(ids, top_k, id_bits(vocab_size))), values, tail_t)


def examples_hash(examples: list[dict]) -> str:
    """The content hash of encoded examples; paired ones (a teacher with its own tokenizer) hash the
    teacher's encoding too, which shapes their labels."""
    teacher = ("teacher_input_ids", "teacher_labels")
    return content_hash([(e["input_ids"], e["labels"], *(e[k] for k in teacher if k in e)) for e in examples])


def response_count(example: dict) -> int:
    """Number of next-token targets (response tokens) in an encoded example."""
    return sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)


def _manifest(path: Path) -> dict:
    manifest_file = path / "manifest.json"
    if not manifest_file.exists():
        raise CorruptLabelStoreError(f"label store {path} has no manifest (incomplete precompute)")
    return read_json(manifest_file)


def _shard_bytes(path: Path, shard: dict) -> bytes:
    """A shard's bytes, read once and checked against its manifest record.

    Raises CorruptLabelStoreError naming the shard when it is missing or altered.
    """
    file = path / shard["file"]
    if not file.exists():
        raise CorruptLabelStoreError(f"label shard missing: {file}")
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise CorruptLabelStoreError(
            f"label shard corrupted (sha256 mismatch): {file}; delete it and rerun to recompute it")
    return data


def verified_manifest(path: str | Path) -> dict:
    """The store's manifest, after checking every shard against it (CorruptLabelStoreError otherwise)."""
    path = Path(path)
    manifest = _manifest(path)
    for shard in manifest["shards"]:
        _shard_bytes(path, shard)
    return manifest


class LabelStore:
    """Read side: verifies every shard's checksum, then serves per-example label tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = _manifest(self.path)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CorruptLabelStoreError(
                f"label store {self.path} has format {self.manifest.get('format_version')}, this version "
                f"reads {FORMAT_VERSION}; delete it and rerun to recompute it")
        arrays: dict[str, list[np.ndarray]] = {"ids": [], "logp": [], "tail": [], "lengths": []}
        for shard in self.manifest["shards"]:
            # Checked and loaded from one read of the file.
            with np.load(BytesIO(_shard_bytes(self.path, shard))) as data:
                for name, parts in arrays.items():
                    if name in data:  # sampled labels store ids (and lengths) only
                        parts.append(data[name])
        self.lengths = np.concatenate(arrays["lengths"])
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.sampled = self.manifest.get("labels") == "sampled"
        # Kept encoded in memory (the compact form is what makes a large store fit); decoded per request.
        self._ids, self._logp, self._tail = (np.concatenate(arrays[n]) if arrays[n] else None
                                             for n in ("ids", "logp", "tail"))

    def __len__(self) -> int:
        return len(self.lengths)

    def _decode(self, lo: int, hi: int) -> TopK:
        m = self.manifest
        if self.sampled:
            ids = self._ids[lo:hi]
            if m["encoding"] == "compact":
                ids = unpack_ids(ids, m["samples"], id_bits(m["vocab_size"]))
            return TopK(*sampled.decode(ids))
        return decode_labels(self._ids[lo:hi], self._logp[lo:hi], self._tail[lo:hi], m["top_k"],
                             m["vocab_size"])

    def example(self, index: int) -> TopK:
        """The labels of example `index`'s response tokens."""
        return self._decode(self.offsets[index], self.offsets[index + 1])

    def all_tokens(self) -> TopK:
        return self._decode(0, self.offsets[-1])


@dataclass
class PrecomputeResult:
    path: str
    key: str
    teacher_forward_passes: int
    seconds: float
    tokens: int
    bytes_per_token: float
    topk_mass: float
    reused: bool
    cross_tokenizer: dict | None = None  # alignment counts (`CrossStats.summary`) when tokenizers differ

    def to_dict(self) -> dict:
        return asdict(self)


def taught_logp(logits: torch.Tensor, spec: LabelSpec) -> torch.Tensor:
    """The taught distribution's log-probs for the teacher's raw next-token `logits` [n, V]."""
    return torch.log_softmax(logits.float() * (spec.logit_scale / spec.calibration_temperature), dim=-1)


def teacher_topk(logits: torch.Tensor, spec: LabelSpec, seed: int = 0) -> TopK:
    """The taught distribution's top-k and tail for next-token `logits` [n, V] (the teacher's raw ones)."""
    return labels_of(taught_logp(logits, spec), spec, seed)


def labels_of(logp: torch.Tensor, spec: LabelSpec, seed: int = 0) -> TopK:
    """Top-k and tail of the taught log-probs `logp` [n, V]; for sampled labels, `spec.samples` draws
    seeded by `seed`, each distinct id with the mass it covers."""
    if spec.labels == "sampled":
        ids, covered = sampled.draw(logp, spec.samples, seed)
        return TopK(ids, covered, torch.full(ids.shape[:-1], float("-inf")))
    values, ids = logp.topk(spec.top_k, dim=-1)
    # The tail summed from the remaining log-probs, not 1 − Σ p_topk: on a confident token Σ p_topk rounds
    # to 1 in float32 and the tail would be lost.
    tail = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)
    return TopK(ids, values, tail)


def precompute_labels(model, examples: list[dict], root: str | Path, spec: LabelSpec, identity: dict,
                      pad_token_id: int, batch_size: int = 16, progress: bool = True,
                      vocab_size: int | None = None, cross: CrossTokenizer | None = None
                      ) -> PrecomputeResult:
    """Run the teacher once over `examples` and store its top-k labels (reused when already stored).

    `identity` names what determines the labels (teacher, tokenizer); the examples' own hash is added.
    In a distributed world every rank calls this and computes its share of the shards; the result's
    `teacher_forward_passes` counts all ranks' passes. `vocab_size` (the shared tokenizer's length) cuts
    the teacher's logits to the ids the student can index; None keeps all of the teacher's.

    With `cross` (a teacher with another tokenizer) the examples are paired (`CrossTokenizer.pair`),
    the teacher reads its own encoding, and the store holds its targets projected onto the student's ids,
    one per student response token, exactly as a same-tokenizer store is laid out; `pad_token_id` is then
    the teacher's and `vocab_size` the student's.
    """
    vocab_size = vocab_size or model.config.vocab_size
    if spec.top_k > vocab_size:
        raise ConfigError(f"distill.top_k={spec.top_k} exceeds the teacher vocabulary ({vocab_size})")
    data_hash = examples_hash(examples)
    key = content_hash(FORMAT_VERSION, identity, data_hash, spec.__dict__)[:20]
    out = Path(root) / key
    total_tokens = sum(response_count(e) for e in examples)
    per_token = bytes_per_token(spec, vocab_size)
    if (out / "manifest.json").exists():
        manifest = verified_manifest(out)  # a corrupted shard is named, never silently used
        return PrecomputeResult(str(out), key, 0, 0.0, total_tokens, per_token, manifest["topk_mass"],
                                reused=True, cross_tokenizer=manifest.get("cross_tokenizer"))

    rank, world = rank_and_world()
    out.mkdir(parents=True, exist_ok=True)
    collate = CausalLMCollator(pad_token_id)
    model.eval()
    passes, start = 0, time.perf_counter()
    n_shards = (len(examples) + spec.shard_size - 1) // spec.shard_size
    mine = range(rank, n_shards, world)
    # disable=None: no bar when stderr is not a terminal (a log file gets no carriage-return frames).
    bars = None if progress and rank == 0 else True
    for s in tqdm(mine, desc="teacher labels", unit="shard", disable=bars):
        name = f"shard-{s:05d}.npz"
        file, record = out / name, out / f"shard-{s:05d}.json"
        if record.exists() and file.exists() and sha256_file(file) == read_json(record)["sha256"]:
            continue
        chunk = examples[s * spec.shard_size:(s + 1) * spec.shard_size]
        parts, stats = [], CrossStats()
        for b in range(0, len(chunk), batch_size):
            seed = int(content_hash(key, s, b)[:15], 16)  # sampled labels: the same draws when recomputed
            batch = chunk[b:b + batch_size]
            with torch.inference_mode():
                if cross is None:
                    logits, _ = response_logits(model, collate(batch))
                    # Embedding rows past the tokenizer are padding: no stored id may be one the student
                    # cannot index.
                    parts.append(teacher_topk(logits[..., :vocab_size], spec, seed))
                else:
                    logits, _ = response_logits(model, collate(teacher_view(batch)))
                    logp = taught_logp(logits[..., :cross.teacher_vocab], spec).cpu()
                    targets = cross.batch_targets(logp, response_pairs(batch), stats)
                    parts.append(labels_of(targets, spec, seed))
            passes += 1
        labels = TopK(*(torch.cat([getattr(p, f) for p in parts]).cpu() for f in ("ids", "logp", "tail")))
        arrays = encode_labels(labels, spec, vocab_size)
        arrays["lengths"] = np.array([response_count(e) for e in chunk], dtype=np.int32)
        buffer = BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()  # hashed here, not read back from disk
        atomic_write_bytes(file, data)
        write_json(record, {"file": name, "sha256": hashlib.sha256(data).hexdigest(),
                            "tokens": int(arrays["lengths"].sum()),
                            "topk_mass_sum": float(labels.logp.double().exp().sum()),
                            **({"cross_tokenizer": asdict(stats)} if cross is not None else {})})
    seconds = time.perf_counter() - start
    if world > 1:
        counts = [None] * world
        dist.all_gather_object(counts, passes)  # also the barrier: every rank's shards are on disk now
        passes = sum(counts)
    if rank == 0:
        records = [out / f"shard-{s:05d}.json" for s in range(n_shards)]
        shards = [read_json(r) for r in records]
        manifest = {
            "format_version": FORMAT_VERSION, "key": key, "identity": identity, "data_hash": data_hash,
            "top_k": spec.top_k, "calibration_temperature": spec.calibration_temperature,
            "logit_scale": spec.logit_scale, "encoding": spec.encoding, "vocab_size": vocab_size,
            "labels": spec.labels, "samples": spec.samples if spec.labels == "sampled" else None,
            "logp_step": LOGP_STEP if spec.encoding == "compact" else None,
            "id_bits": id_bits(vocab_size) if spec.encoding == "compact" else None,
            "examples": len(examples), "tokens": total_tokens, "bytes_per_token": per_token,
            "precompute_seconds": seconds,
            "topk_mass": sum(s["topk_mass_sum"] for s in shards) / max(total_tokens, 1), "shards": shards,
        }
        if cross is not None:
            total = CrossStats()
            for shard in shards:
                total.add(CrossStats(**shard["cross_tokenizer"]))
            manifest["cross_tokenizer"] = total.summary()
        write_json(out / "manifest.json", manifest)
        for record in records:
            record.unlink()
    if world > 1:
        dist.barrier()  # the manifest exists before any rank returns
    # Rank 0 holds the manifest it wrote; the other ranks read it once it exists.
    if rank != 0:
        manifest = read_json(out / "manifest.json")
    return PrecomputeResult(str(out), key, passes, seconds, total_tokens, per_token, manifest["topk_mass"],
                            reused=False, cross_tokenizer=manifest.get("cross_tokenizer"))
