"""The pipeline's stages as plain functions: ZenML steps wrap these, the CLI and tests call them directly.

Each stage is one function that owns caching and dispatch only: it keys its artifact, reuses it when
present, and otherwise calls the domain code (or launches it on N processes). Expensive artifacts
(dataset, tokenizer, teacher, labels, students, detectors, evaluations) are content-addressed under
`output_dir`: the key hashes everything that determines them, so a rerun with unchanged inputs reuses them
and a changed input builds anew. Every artifact directory is written atomically, so a present directory is
a complete one.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from smoothkd.artifacts import TRAIN_RECORD, Evaluation, ModelArtifact, student_role
from smoothkd.config import RunConfig, apply_overrides, output_root
from smoothkd.data.dataset import (
    EVAL_KINDS,
    dataset_key,
    dataset_lexicon,
    detector_rows,
    read_split,
    training_key,
    uses_embedded,
)
from smoothkd.data.loaders import load_split
from smoothkd.data.prompts import build_prompt, response_text
from smoothkd.io import atomic_dir, content_hash, jsonl_text, read_json, sha256_file, write_json

if TYPE_CHECKING:
    from smoothkd.calibration.gate import CalibrationReport
    from smoothkd.distill.labels import PrecomputeResult
    from smoothkd.modeling.compat import Compatibility
    from smoothkd.validation.features import TokenCounter
    from smoothkd.validation.report import ValidationReport

# The domain packages (torch, transformers, Great Expectations) load inside the stage that needs them, so
# a command that runs one stage does not pay for the others.


def _key(*parts: object) -> str:
    return content_hash(*parts)[:16]


# ---- data ----


def embedded_corpus_dir(cfg: RunConfig) -> Path:
    """Generate (once per seed and size) the embedded corpus and return its directory."""
    from smoothkd.data.corpus import corpus_is_complete, generate_corpus

    key = cfg.fingerprint("data.seed", "data.embedded")
    out = output_root(cfg) / "corpus" / key
    if not corpus_is_complete(out):
        e = cfg.data.embedded
        generate_corpus(out, seed=cfg.data.seed, n_instruction=e.n_instruction, n_cnndm=e.n_cnndm,
                        n_xsum=e.n_xsum, trap_rate=e.trap_rate, distractor_rate=e.distractor_rate)
    return out


def prepare_data(cfg: RunConfig) -> Path:
    """Load every split, hold out an instruction validation split, write them as one dataset directory.

    Returns `<output_dir>/datasets/<hash>` holding train/validation/cnndm/xsum jsonl and a manifest.
    """
    embedded = embedded_corpus_dir(cfg) if uses_embedded(cfg.data) else None
    splits = {"instruction": load_split("instruction", cfg.data.instruction, embedded)}
    for kind in EVAL_KINDS:
        splits[kind] = load_split(kind, getattr(cfg.data, kind), embedded)
        if cfg.eval.max_examples:
            splits[kind] = splits[kind][: cfg.eval.max_examples]
    rows = splits.pop("instruction")
    order = list(range(len(rows)))
    random.Random(cfg.data.seed).shuffle(order)
    n_val = int(round(len(rows) * cfg.data.validation_fraction))
    splits["validation"] = [rows[i] for i in sorted(order[:n_val])]
    splits["train"] = [rows[i] for i in sorted(order[n_val:])]

    texts = {name: jsonl_text(split) for name, split in sorted(splits.items())}
    key = _key(*(f"{name}:{_key(text)}" for name, text in texts.items()))
    out = output_root(cfg) / "datasets" / key
    if not (out / "manifest.json").exists():
        with atomic_dir(out) as tmp:
            for name, text in texts.items():
                (tmp / f"{name}.jsonl").write_text(text, encoding="utf-8")
            write_json(tmp / "manifest.json", {
                "key": key,
                "counts": {name: len(split) for name, split in splits.items()},
                "files": {f"{name}.jsonl": sha256_file(tmp / f"{name}.jsonl") for name in texts},
                "embedded_corpus": str(embedded) if embedded else None,
            })
    return out


def prepare_tokenizer(cfg: RunConfig, data_dir: str | Path) -> Path | str:
    """The tokenizer shared by teacher and student: configured, the teacher's, or BPE trained on the data."""
    from smoothkd.data.corpus import entity_tokens
    from smoothkd.modeling.tokenizer import train_bpe_tokenizer

    configured = cfg.tokenizer.name_or_path or cfg.teacher.name_or_path
    if configured:
        return configured
    manifest = read_json(Path(data_dir) / "manifest.json")
    whole = entity_tokens() if cfg.tokenizer.entity_tokens and manifest.get("embedded_corpus") else []
    key = _key(training_key(data_dir), str(cfg.tokenizer.vocab_size), *whole)
    out = output_root(cfg) / "tokenizers" / key
    if not out.exists():
        rows = read_split(data_dir, "train")
        texts = (build_prompt(r["instruction"], r["context"], r["category"]) + response_text(r["response"])
                 for r in rows)
        train_bpe_tokenizer(texts, out, cfg.tokenizer.vocab_size, whole)
    return out


# ---- validation ----


def run_tokens(cfg: RunConfig, dataset_dir: str | Path) -> TokenCounter:
    """The validation's token counter: the run's tokenizer (built here if needed; content-addressed, so the
    tokenizer stage reuses it)."""
    from smoothkd.validation.validate import token_counter

    return token_counter(prepare_tokenizer(cfg, dataset_dir), cfg.teacher)


def validate_dataset(cfg: RunConfig, dataset_dir: str | Path, docs_dir: str | Path | None = None
                     ) -> ValidationReport:
    """Validate every split of a prepared dataset directory (train + validation form the instruction split).

    Data Docs go to `docs_dir`, by default `<output_dir>/data_docs/<dataset key>-<time>`.
    """
    from smoothkd.validation.validate import dataset_splits, validate_splits

    if docs_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        docs_dir = output_root(cfg) / "data_docs" / f"{Path(dataset_dir).name}-{stamp}"
    return validate_splits(cfg.validation, (cfg.teacher.train, cfg.student.train),
                           dataset_splits(dataset_dir), run_tokens(cfg, dataset_dir), docs_dir)


# ---- teacher, calibration, labels, students ----


def teacher_tokenizer(cfg: RunConfig, tokenizer_ref: str | Path) -> str | None:
    """The teacher's own tokenizer when the run distils across tokenizers (`distill.cross_tokenizer`),
    None when teacher and student share the run's `tokenizer_ref`."""
    from smoothkd.modeling.compat import cross_tokenizer_ref

    return cross_tokenizer_ref(tokenizer_ref, cfg.teacher, cfg.distill)


def _train(cfg: RunConfig, section: str, role: str, tokenizer_ref, data_dir, out: Path, **job
           ) -> ModelArtifact:
    """Train `cfg.<section>` into `out`: in this process, or with `train.num_processes > 1` on that many
    processes started through `accelerate launch` (each running the same job), returning rank 0's record."""
    from smoothkd.distill.jobs import train_model
    from smoothkd.distill.runtime import mixed_precision, world_size

    model_cfg = getattr(cfg, section)
    sections = {"model_cfg": model_cfg, "teacher_cfg": cfg.teacher, "distill": cfg.distill,
                "calibration": cfg.calibration}
    args = {"role": role, "tokenizer_ref": str(tokenizer_ref), "data_dir": str(data_dir), "out": str(out),
            "root": str(output_root(cfg)), "device": cfg.device, **job}
    train_cfg = model_cfg.train
    if train_cfg.num_processes > 1 and world_size() == 1:
        from smoothkd.distill.launch import launch

        return ModelArtifact(**launch("finetune", args, sections, train_cfg.num_processes,
                                      output_root(cfg) / "launch" / _key(role, str(out)),
                                      mixed_precision(train_cfg, cfg.device), label=role))
    return train_model(**sections, **args)


def prepare_teacher(cfg: RunConfig, data_dir: str | Path, tokenizer_ref: str | Path) -> ModelArtifact:
    """The teacher: loaded as is, or finetuned on the instruction split in its own tokenizer (cached by its
    inputs)."""
    from smoothkd.modeling.models import count_parameters, load_causal_lm

    t = cfg.teacher
    if t.name_or_path and not t.finetune:
        return ModelArtifact(path=t.name_or_path, role="teacher",
                             parameters=count_parameters(load_causal_lm(t.name_or_path, t)))
    tokenizer_ref = teacher_tokenizer(cfg, tokenizer_ref) or tokenizer_ref
    key = _key(training_key(data_dir), str(tokenizer_ref), t.model_dump_json(), cfg.device)
    out = output_root(cfg) / "teachers" / key
    record = out / TRAIN_RECORD
    if record.exists():
        return ModelArtifact(**{**read_json(record), "cached": True})
    return _train(cfg, "teacher", "teacher", tokenizer_ref, data_dir, out)


def check_teacher_calibration(cfg: RunConfig, data_dir: str | Path, teacher_dir: str | Path,
                              out_dir: str | Path) -> CalibrationReport:
    """The calibration gate on the held-out split, judging the distribution the student is taught
    (`calibrate_teacher`)."""
    from smoothkd.calibration.gate import calibrate_teacher
    from smoothkd.modeling.tokenizer import load_run_tokenizer

    # The run's tokenizer (a trained teacher saved the one it trained with beside it), or the teacher's own.
    ref = cfg.tokenizer.name_or_path or teacher_dir
    tokenizer = load_run_tokenizer(teacher_tokenizer(cfg, ref) or ref, cfg.teacher)
    return calibrate_teacher(cfg.calibration, cfg.teacher, read_split(data_dir, "validation"), tokenizer,
                             teacher_dir, out_dir, cfg.device)


def precompute_labels(cfg: RunConfig, data_dir: str | Path, tokenizer_ref: str | Path, teacher_path: str,
                      calibration_temperature: float | None = None, progress: bool = True
                      ) -> PrecomputeResult:
    """Precompute (or reuse) the teacher's top-k labels on the training split.

    The labels are the taught distribution: the teacher at `calibration_temperature` (the gate's;
    `calibration.temperature` when None) with `calibration.logit_scale` applied.

    With `student.train.num_processes > 1` the shards are split over that many processes (one teacher per
    device), started through `accelerate launch` like the students' training.
    """
    from smoothkd.distill.jobs import precompute_teacher_labels, shared_tokenizer
    from smoothkd.distill.labels import PrecomputeResult
    from smoothkd.distill.runtime import world_size

    sections = {"teacher": cfg.teacher, "student": cfg.student, "distill": cfg.distill,
                "calibration": cfg.calibration}
    args = {"data_dir": str(data_dir), "tokenizer_ref": str(tokenizer_ref), "teacher_path": str(teacher_path),
            "root": str(output_root(cfg)), "device": cfg.device,
            "calibration_temperature": calibration_temperature, "progress": progress,
            "teacher_tokenizer_ref": teacher_tokenizer(cfg, tokenizer_ref)}
    n = cfg.student.train.num_processes
    if n > 1 and world_size() == 1:
        from smoothkd.distill.launch import launch

        if args["teacher_tokenizer_ref"] is None:  # a mismatch fails before processes start
            shared_tokenizer(tokenizer_ref, cfg.teacher, cfg.student)
        job_dir = output_root(cfg) / "launch" / _key("labels", str(data_dir), str(teacher_path))
        return PrecomputeResult(**launch("labels", args, sections, n, job_dir, label="precompute_labels"))
    return precompute_teacher_labels(**sections, **args)


# ---- the front half: every run's way from a config to a gated teacher and its labels ----


def preflight_models(cfg: RunConfig) -> Compatibility | None:
    """Every model reference and, when the tokenizer is known up front, every compatibility check: seconds,
    before any data is made or model trained (None: the tokenizer is trained on the data, see
    `check_models`)."""
    from smoothkd.modeling.compat import preflight

    return preflight(tokenizer_cfg=cfg.tokenizer, teacher=cfg.teacher, student=cfg.student, eval_cfg=cfg.eval,
                     distill=cfg.distill)


def check_models(cfg: RunConfig, tokenizer_ref: str | Path) -> Compatibility:
    """The compatibility checks against the run's tokenizer once it exists, before the teacher trains."""
    from smoothkd.modeling.compat import check_run_models

    return check_run_models(tokenizer_ref, tokenizer_cfg=cfg.tokenizer, teacher=cfg.teacher,
                            student=cfg.student, eval_cfg=cfg.eval, distill=cfg.distill)


@dataclass
class FrontHalf:
    """What the front half hands the students: the validated dataset, the tokenizer, the teacher, the
    calibration gate's report and, when the gate passed and they were asked for, the labels."""

    data_dir: Path
    tokenizer: Path | str
    teacher: ModelArtifact
    gate: CalibrationReport
    labels: PrecomputeResult | None = None


def front_half(cfg: RunConfig, calibration_dir: str | Path, docs_dir: str | Path | None = None,
               labels: bool = True, on_teacher: Callable[[ModelArtifact], None] | None = None) -> FrontHalf:
    """preflight → data → validation → tokenizer → model checks → teacher → calibration gate → labels, in
    this process, each stage reused when cached (the `distill` pipeline runs the same stages as steps).

    Raises on a bad model reference (in seconds) or a failed data gate; a rejected teacher is returned with
    no labels, for the caller to report. `on_teacher` hears of the teacher before the gate judges it.
    """
    checked = preflight_models(cfg)
    data_dir = prepare_data(cfg)
    validate_dataset(cfg, data_dir, docs_dir).raise_for_failures()
    tokenizer = prepare_tokenizer(cfg, data_dir)
    if checked is None:  # a tokenizer trained on the data: checked once built
        check_models(cfg, tokenizer)
    teacher = prepare_teacher(cfg, data_dir, tokenizer)
    if on_teacher is not None:
        on_teacher(teacher)
    gate = check_teacher_calibration(cfg, data_dir, teacher.path, calibration_dir)
    front = FrontHalf(data_dir, tokenizer, teacher, gate)
    if labels and gate.passed:
        front.labels = precompute_labels(cfg, data_dir, tokenizer, teacher.path, gate.temperature,
                                         progress=False)
    return front


def with_student_seed(cfg: RunConfig, seed: int) -> RunConfig:
    """`cfg` with the student's training seed (its initialisation and data order) set to `seed`."""
    raw = apply_overrides(cfg.model_dump(mode="json"), [f"student.train.seed={seed}"])
    return RunConfig.model_validate(raw)


def student_name(alpha: float) -> str:
    """`sft` for the baseline, `kd_a<α>` for a KD student: the name in roles, step ids and the registry."""
    return "sft" if alpha == 0 else f"kd_a{alpha:g}"


def train_student(cfg: RunConfig, data_dir: str | Path, tokenizer_ref: str | Path, alpha: float = 0.0,
                  labels_dir: str | None = None, teacher_path: str | None = None,
                  calibration_temperature: float | None = None, isolated: bool = False) -> ModelArtifact:
    """Finetune one student: the SFT baseline (α = 0) or a KD student on stored or online teacher labels.

    Cached like the teacher: the same data, tokenizer, student config, α, distillation settings and label
    store (or online teacher) give the same student directory, and a rerun reuses it. `isolated`: a
    student not cached trains in one of the run's worker processes (`in_worker`), so students asked for
    from several threads train side by side, as many at once as `sweep.workers`; its weights are the
    ones this process would give (the training's own fixed threads), so the key is the same.
    """
    name = student_name(alpha)
    # What the student is taught: the label store (keyed by its calibration temperature), or the online
    # teacher with its calibration.
    calibration = (cfg.calibration.taught_temperature(calibration_temperature), cfg.calibration.logit_scale)
    online = cfg.distill.mode == "online"
    cross = teacher_tokenizer(cfg, tokenizer_ref) if alpha and online else None
    teacher_ref = (f"{teacher_path}@{calibration}" if online else str(labels_dir)) if alpha else ""
    if cross:
        from smoothkd.distill.crosstok import METHOD_VERSION

        teacher_ref += f"@{cross}@cross-v{METHOD_VERSION}"
    key = _key(name, training_key(data_dir), str(tokenizer_ref), cfg.student.model_dump_json(), cfg.device,
               cfg.distill.student_key() if alpha else "", teacher_ref)
    out = output_root(cfg) / "students" / key
    record = out / TRAIN_RECORD
    if record.exists():
        return ModelArtifact(**{**read_json(record), "cached": True})
    train = functools.partial(_train, alpha=alpha, labels_dir=labels_dir, teacher_path=teacher_path,
                              calibration_temperature=calibration_temperature, work_key=teacher_ref,
                              teacher_tokenizer_ref=cross)
    args = (cfg, "student", student_role(name), tokenizer_ref, data_dir, out)
    return in_worker(cfg, train, *args)[0] if isolated else train(*args)


# ---- detectors and evaluation ----


def prepare_detector(cfg: RunConfig, data_dir: str | Path, model_paths: list[str], progress: bool = True
                     ) -> tuple[Path, bool]:
    """Fit (or reuse) a factual-rate detector on the pooled generations of `model_paths` for held-out rows.

    Lookback features are per (layer, head), so a detector only reads models of the shape it was fitted
    on: the pipeline fits one on the teacher, and one on all students together, so that every student is
    scored by a detector that has seen its kind of attention. Returns (detector.json, cached). Raises
    DetectorError when the generations hold only one class.
    """
    from smoothkd.evaluation.detector import FORMAT
    from smoothkd.evaluation.pooled import fit_pooled_detector
    from smoothkd.modeling.identity import model_identity

    e, train = cfg.eval, cfg.student.train
    key = _key(*map(model_identity, model_paths), dataset_key(data_dir), str(e.max_new_tokens),
               str(train.max_prompt_length), str(cfg.data.seed), str(e.detector_rows), cfg.device,
               FORMAT, str(e.bootstrap_samples), str(e.confidence))
    path = output_root(cfg) / "detectors" / key / "detector.json"
    if path.exists():
        return path, True
    rows = detector_rows(cfg.data, e.detector_rows, data_dir, output_root(cfg))
    fit_pooled_detector(model_paths, rows, dataset_lexicon(data_dir), e, train.max_prompt_length,
                        cfg.data.seed, cfg.device, progress).save(path)
    return path, False


def evaluate_model(cfg: RunConfig, model_path: str | Path, data_dir: str | Path,
                   detector_path: str | Path | None = None, progress: bool = True, label: str | None = None
                   ) -> Evaluation:
    """Evaluate a model (see `smoothkd.evaluation.evaluate`), cached by model, data, eval config, detector.

    The result's `dir` holds `result.json` and the per-split localization tables, titled by `label` (the
    model's name; default its directory's) and split when first evaluated; its `identity` is what the
    scores depend on (`smoothkd.registry.identity`), as a dict.
    """
    from smoothkd.evaluation.evaluate import VERSION, run_evaluation
    from smoothkd.modeling.identity import model_identity
    from smoothkd.registry.identity import evaluation_identity

    key = _key(model_identity(model_path), dataset_key(data_dir), cfg.eval.model_dump_json(),
               str(cfg.student.train.max_prompt_length), cfg.device,
               sha256_file(detector_path) if detector_path else "", f"evaluation-v{VERSION}")
    out = output_root(cfg) / "evaluations" / key
    if not (out / "result.json").exists():
        with atomic_dir(out) as tmp:
            result = run_evaluation(cfg.eval, cfg.student.train, model_path, data_dir, tmp, detector_path,
                                    device=cfg.device, progress=progress, label=label)
            write_json(tmp / "result.json", result)
    identity = evaluation_identity(cfg.eval, data_dir, cfg.student.train.max_prompt_length, detector_path)
    return Evaluation(**read_json(out / "result.json"), dir=str(out), identity=identity.to_dict())


def champion_reevaluator(cfg: RunConfig, store_uri: str, name: str | None = None):
    """Evaluate a champion of `name` (default: the configured one), fetched from the store `store_uri`, on
    a candidate's rows (its dataset directory and detector) with `cfg`'s evaluation settings; cached like
    any evaluation. The `reevaluate` callable `smoothkd.registry.promote` takes."""
    from mlflow.exceptions import MlflowException

    from smoothkd.errors import EvaluationModelError, one_line
    from smoothkd.registry.download import resolve_model_ref
    from smoothkd.registry.gate import Candidate
    from smoothkd.registry.identity import DETECTOR_METRICS, EvalIdentity
    from smoothkd.registry.promote import ReevaluationError

    local = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"tracking_uri": store_uri})})
    name = name or cfg.promotion.registered_model_name
    needs_detector = any(m in DETECTOR_METRICS for m in cfg.promotion.regression_metrics)

    def reevaluate(champion: Candidate, like: EvalIdentity) -> Candidate:
        if not (Path(like.data_dir) / "manifest.json").exists():
            raise ReevaluationError(f"the candidate's dataset {like.data_dir or '(unrecorded)'} is not here")
        detector = like.detector_path if needs_detector and like.detector_path else None
        try:
            model_dir = resolve_model_ref(f"models:/{name}/{champion.version}", store_uri,
                                          output_root(cfg) / "registry_models")
            result = evaluate_model(local, model_dir, like.data_dir, detector, progress=False,
                                    label=f"{name} v{champion.version}")
        except (EvaluationModelError, MlflowException, OSError, ValueError, RuntimeError) as err:
            raise ReevaluationError(f"v{champion.version}: {one_line(err)}") from None
        return Candidate(champion.name, champion.alpha, result.metrics, result.per_example,
                         champion.version, EvalIdentity.from_dict(result.identity))

    return reevaluate


# ---- worker processes ----


def start_worker(threads: int) -> None:
    """A worker's fixed intra-op thread count (training sets its own section's again)."""
    import torch

    torch.set_num_threads(threads)


@functools.cache
def worker_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """This process's pool of `workers` spawned processes (started fresh: no torch thread pool forked) with
    `threads` intra-op threads each. One pool for every caller: the sweep's steps run concurrently in threads
    of one process, and the pool, not their number, bounds how many models train at once."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=start_worker, initargs=(threads,))


@contextlib.contextmanager
def quiet_workers() -> Iterator[None]:
    """While workers start: no progress bars (several processes' bars would interleave on one console) and
    no library chatter below errors. Set in this process's environment, which a spawned worker inherits."""
    quiet = {"TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    previous = {key: os.environ.get(key) for key in quiet}
    os.environ.update(quiet)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


class _Slots:
    """As many slots as the pool has workers, granted lowest priority first, then in order of asking. Jobs
    go to the pool only with a slot, so the pool never queues: an evaluation asked for while every
    training is waiting runs next, instead of behind all of them."""

    def __init__(self, n: int):
        self._free, self._waiting, self._asked = n, [], 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def held(self, priority: int) -> Iterator[None]:
        with self._changed:
            ticket = (priority, self._asked)
            self._asked += 1
            heapq.heappush(self._waiting, ticket)
            self._changed.wait_for(lambda: self._free > 0 and self._waiting[0] == ticket)
            heapq.heappop(self._waiting)
            self._free -= 1
            self._changed.notify_all()  # the next waiter may take another free slot
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()


@functools.cache
def _worker_slots(workers: int) -> _Slots:
    return _Slots(workers)


def _timed(fn: Callable, *args) -> tuple[object, float]:
    began = time.perf_counter()
    return fn(*args), time.perf_counter() - began


def in_worker(cfg: RunConfig, fn: Callable, *args, priority: int = 1) -> tuple[object, float]:
    """`fn(*args)` in one of the run's worker processes (`sweep.workers` of them, `student.train.threads`
    intra-op threads each), waiting for it: (its result, the seconds it ran, not counting the wait for a
    worker). A lower `priority` runs first (the sweep evaluates before it trains more, so its progress and
    time left follow finished models). Its exception is raised here."""
    from smoothkd.distill.runtime import parallel_trainings, release_gpu_cache

    workers = parallel_trainings(cfg.sweep.workers, cfg.device)
    pool = worker_pool(workers, cfg.student.train.threads)
    release_gpu_cache()  # what a teacher run here left cached would crowd the worker's models
    with _worker_slots(workers).held(priority):
        with quiet_workers():
            future = pool.submit(_timed, fn, *args)
        return future.result()
