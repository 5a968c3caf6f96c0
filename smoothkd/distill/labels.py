"""Teacher soft labels, precomputed once and stored compactly.

For every response token the store keeps the teacher's top-k log-probabilities (at the distillation
temperature), their token ids and nothing else: the tail bucket log(1 − Σ p_topk) is implied by the
stored values and recomputed on load, after the values are decoded, so the k + 1 outcomes always form
a proper distribution.

Encodings:
- `compact` (default): ids in the fewest bytes the vocabulary allows (uint8/uint16/uint32), log-probs
  quantised to uint8 in steps of 1/16 nat (down to −15.9 nats). k = 16 with a 32k–64k vocabulary costs
  48 bytes/token.
- `exact`: int32 ids and float32 log-probs, for tests against dense references.

Layout of a store directory `<root>/<key>/`: `shard-00000.npz`, ... each written atomically and followed
by its record `shard-00000.json` (sha256, token count, summed top-k mass), so an interrupted precompute
resumes from its complete shards; `manifest.json`, written last, gathers the records (and replaces them),
so it states the captured mass without anyone rereading the shards. The key hashes teacher, tokenizer,
data, k, temperature and encoding: the same inputs find the same directory and no teacher forward pass
runs again.

Inside a torch.distributed world (torchrun, `accelerate launch`) rank r computes shards r, r + N, ...;
per-shard records make concurrent writers safe and let a rerun resume with any number of processes.
Rank 0 writes the manifest once every rank's shards exist.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from smoothkd.data.tokenize import IGNORE_INDEX, CausalLMCollator
from smoothkd.distill.losses import log1mexp
from smoothkd.errors import CorruptLabelStoreError
from smoothkd.io import read_json, sha256_file, write_json
from smoothkd.modeling.models import response_logits

LOGP_STEP = 1.0 / 16.0
# Part of every store key: bumped whenever the on-disk layout changes, so an older store is never read
# with the wrong layout (2: per-shard records, top-k mass in the manifest).
FORMAT_VERSION = 2


@dataclass(frozen=True)
class LabelSpec:
    top_k: int = 16
    temperature: float = 1.0
    encoding: str = "compact"
    shard_size: int = 512


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every token id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocab of {vocab_size} does not fit uint32")


def bytes_per_token(spec: LabelSpec, vocab_size: int) -> int:
    if spec.encoding == "exact":
        return spec.top_k * 8
    return spec.top_k * (id_dtype(vocab_size).itemsize + 1)


def _encode(ids: torch.Tensor, logp: torch.Tensor, spec: LabelSpec, vocab_size: int
            ) -> dict[str, np.ndarray]:
    if spec.encoding == "exact":
        return {"ids": ids.numpy().astype(np.int32), "logp": logp.numpy().astype(np.float32)}
    quantised = torch.clamp(torch.round(-logp / LOGP_STEP), 0, 255).to(torch.uint8)
    return {"ids": ids.numpy().astype(id_dtype(vocab_size)), "logp": quantised.numpy()}


def _decode(ids: np.ndarray, logp: np.ndarray, complete: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(ids.astype(np.int64))
    values = torch.from_numpy(logp.astype(np.float32))
    if logp.dtype == np.uint8:
        values = -values * LOGP_STEP
    if complete:  # top-k spans the whole vocabulary: there is no tail
        return ids, values, torch.full(values.shape[:-1], float("-inf"))
    mass = torch.logsumexp(values, dim=-1)
    tail = log1mexp(mass)
    # Quantisation can push Σp above 1 by a hair: renormalise the k + 1 outcomes jointly.
    norm = torch.logaddexp(mass, tail).clamp(min=0.0)
    return ids, values - norm.unsqueeze(-1), tail - norm


def content_hash(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def directory_identity(path: str | Path, patterns: tuple[str, ...]) -> str:
    """sha256 over the matching files of a local model/tokenizer dir; the id itself for a hub name."""
    path = Path(path)
    if not path.is_dir():
        return f"hub:{path}"
    files = sorted(p for pattern in patterns for p in path.glob(pattern))
    return content_hash([(p.name, sha256_file(p)) for p in files])


def examples_hash(examples: list[dict]) -> str:
    return content_hash([(e["input_ids"], e["labels"]) for e in examples])


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
        ids, logp, lengths = [], [], []
        for shard in self.manifest["shards"]:
            # Checked and loaded from one read of the file.
            with np.load(BytesIO(_shard_bytes(self.path, shard))) as data:
                ids.append(data["ids"])
                logp.append(data["logp"])
                lengths.append(data["lengths"])
        self.lengths = np.concatenate(lengths)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self._ids, self._logp = np.concatenate(ids), np.concatenate(logp)
        self.complete = self.manifest["top_k"] >= self.manifest["vocab_size"]

    def __len__(self) -> int:
        return len(self.lengths)

    def example(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [n, k], teacher log-probs [n, k], tail log-prob [n]) for example `index`."""
        lo, hi = self.offsets[index], self.offsets[index + 1]
        return _decode(self._ids[lo:hi], self._logp[lo:hi], self.complete)

    def all_tokens(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _decode(self._ids, self._logp, self.complete)


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

    def to_dict(self) -> dict:
        return asdict(self)


def _world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process belongs to; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.inference_mode()
def _teacher_topk(model, batch: dict[str, torch.Tensor], spec: LabelSpec, vocab_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    selected, _ = response_logits(model, batch)
    # Embedding rows past the tokenizer are padding: no stored id may be one the student cannot index.
    selected = selected[..., :vocab_size]
    logp = torch.log_softmax(selected.float() / spec.temperature, dim=-1)
    values, ids = logp.topk(spec.top_k, dim=-1)
    return ids.cpu(), values.cpu()


def precompute_labels(model, examples: list[dict], root: str | Path, spec: LabelSpec, identity: dict,
                      pad_token_id: int, batch_size: int = 16, progress: bool = True,
                      vocab_size: int | None = None) -> PrecomputeResult:
    """Run the teacher once over `examples` and store its top-k labels (reused when already stored).

    `identity` names what determines the labels (teacher, tokenizer); the examples' own hash is added.
    In a distributed world every rank calls this and computes its share of the shards; the result's
    `teacher_forward_passes` counts all ranks' passes. `vocab_size` (the shared tokenizer's length) cuts
    the teacher's logits to the ids the student can index; None keeps all of the teacher's.
    """
    vocab_size = vocab_size or model.config.vocab_size
    if spec.top_k > vocab_size:
        raise ValueError(f"distill.top_k={spec.top_k} exceeds the teacher vocabulary ({vocab_size})")
    data_hash = examples_hash(examples)
    key = content_hash(FORMAT_VERSION, identity, data_hash, spec.__dict__)[:20]
    out = Path(root) / key
    total_tokens = sum(response_count(e) for e in examples)
    per_token = bytes_per_token(spec, vocab_size)
    if (out / "manifest.json").exists():
        manifest = verified_manifest(out)  # a corrupted shard is named, never silently used
        return PrecomputeResult(str(out), key, 0, 0.0, total_tokens, per_token, manifest["topk_mass"],
                                reused=True)

    rank, world = _world()
    out.mkdir(parents=True, exist_ok=True)
    collate = CausalLMCollator(pad_token_id)
    model.eval()
    passes, start = 0, time.perf_counter()
    n_shards = (len(examples) + spec.shard_size - 1) // spec.shard_size
    mine = range(rank, n_shards, world)
    for s in tqdm(mine, desc="teacher labels", unit="shard", disable=not progress or rank != 0):
        name = f"shard-{s:05d}.npz"
        file, record = out / name, out / f"shard-{s:05d}.json"
        if record.exists() and file.exists() and sha256_file(file) == read_json(record)["sha256"]:
            continue
        chunk = examples[s * spec.shard_size:(s + 1) * spec.shard_size]
        ids, logp = [], []
        for b in range(0, len(chunk), batch_size):
            batch_ids, batch_logp = _teacher_topk(model, collate(chunk[b:b + batch_size]), spec,
                                                  vocab_size)
            passes += 1
            ids.append(batch_ids)
            logp.append(batch_logp)
        top_logp = torch.cat(logp)
        arrays = _encode(torch.cat(ids), top_logp, spec, vocab_size)
        arrays["lengths"] = np.array([response_count(e) for e in chunk], dtype=np.int32)
        buffer = BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()  # hashed here, not read back from disk
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(file)
        write_json(record, {"file": name, "sha256": hashlib.sha256(data).hexdigest(),
                            "tokens": int(arrays["lengths"].sum()),
                            "topk_mass_sum": float(top_logp.exp().sum())})
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
            "top_k": spec.top_k, "temperature": spec.temperature, "encoding": spec.encoding,
            "logp_step": LOGP_STEP if spec.encoding == "compact" else None, "vocab_size": vocab_size,
            "examples": len(examples), "tokens": total_tokens, "bytes_per_token": per_token,
            "precompute_seconds": seconds,
            "topk_mass": sum(s["topk_mass_sum"] for s in shards) / max(total_tokens, 1), "shards": shards,
        }
        write_json(out / "manifest.json", manifest)
        for record in records:
            record.unlink()
    if world > 1:
        dist.barrier()  # the manifest exists before any rank returns
    topk_mass = read_json(out / "manifest.json")["topk_mass"]
    return PrecomputeResult(str(out), key, passes, seconds, total_tokens, per_token, topk_mass, reused=False)
