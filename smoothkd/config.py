"""One pydantic schema for every smoothkd YAML config, plus `--set a.b=c` overrides.

Every section forbids unknown keys so a typo fails loudly with the key path instead of being ignored.
`load_config` turns every problem (missing file, bad YAML, unknown key, wrong type) into a
`ConfigError` whose message is a single line naming the file or key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from smoothkd.data.schema import DOLLY_CATEGORIES
from smoothkd.io import content_hash


class ConfigError(ValueError):
    """A config problem, with a one-line message naming the file or key path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SplitSource(_Section):
    """Where one split comes from.

    `embedded` reads the generated corpus; `hub` calls `datasets.load_dataset(path, name, split=...)`;
    `local` reads a jsonl/json/parquet/csv file (or a directory of them) at `path`. `columns` maps
    the schema's column names to the names used in the source, e.g. `{article: text, highlights: summary}`.
    """

    source: Literal["embedded", "hub", "local"] = "embedded"
    path: str | None = None
    name: str | None = None
    split: str = "train"
    columns: dict[str, str] = Field(default_factory=dict)
    max_examples: int | None = Field(default=None, gt=0)
    revision: str | None = None


class EmbeddedCorpusConfig(_Section):
    """Size of the generated grounded-news corpus."""

    n_instruction: int = Field(default=3000, gt=0)
    n_cnndm: int = Field(default=200, gt=0)
    n_xsum: int = Field(default=200, gt=0)
    trap_rate: float = Field(default=0.25, ge=0, le=1)
    # Chance of each optional article sentence (background, analyst quote) that adds same-type facts.
    distractor_rate: float = Field(default=0.0, ge=0, le=1)


class DataConfig(_Section):
    seed: int = 10
    embedded: EmbeddedCorpusConfig = Field(default_factory=EmbeddedCorpusConfig)
    instruction: SplitSource = Field(default_factory=lambda: SplitSource(split="train"))
    cnndm: SplitSource = Field(default_factory=lambda: SplitSource(split="test"))
    xsum: SplitSource = Field(default_factory=lambda: SplitSource(split="test"))
    validation_fraction: float = Field(default=0.05, ge=0, lt=1)


Severity = Literal["stop", "warn"]


class ValidationSeverity(_Section):
    """What a failed data-validation check does: `stop` the run before anything trains, or `warn`."""

    columns: Severity = "stop"
    not_null: Severity = "stop"
    not_empty: Severity = "stop"
    max_chars: Severity = "stop"
    allowed_values: Severity = "stop"
    unique_id: Severity = "stop"
    # The embedded corpus repeats its context-free questions on purpose (~8% of its rows).
    duplicate_rows: Severity = "warn"
    truncation: Severity = "stop"
    reference_shorter: Severity = "stop"
    leakage_exact: Severity = "stop"
    leakage_near: Severity = "stop"


class ValidationConfig(_Section):
    """Data validation (Great Expectations) run on every split before anything trains.

    `severity` says which failed checks stop the run and which only warn. Rates are fractions of a split's
    rows. Token counts use the run's tokenizer against the strictest of the teacher's and the student's
    `max_length`/`max_prompt_length`.
    """

    max_instruction_chars: int = Field(default=20_000, gt=0)
    max_source_chars: int = Field(default=200_000, gt=0)  # context, article, document
    max_reference_chars: int = Field(default=30_000, gt=0)  # response, highlights, summary
    max_truncation_rate: float = Field(default=0.02, ge=0, le=1)
    max_duplicate_rate: float = Field(default=0.10, ge=0, le=1)
    categories: list[str] = Field(default_factory=lambda: list(DOLLY_CATEGORIES))
    max_reference_ratio: float = Field(default=1.0, gt=0)  # reference chars / source chars, strictly below
    leakage_ngram: int = Field(default=8, gt=0)
    max_leakage_overlap: float = Field(default=0.8, ge=0, le=1)  # share of a source's n-grams in one context
    severity: ValidationSeverity = Field(default_factory=ValidationSeverity)


class TinyModelConfig(_Section):
    """Shape of a Llama-architecture model built from scratch (used when `name_or_path` is unset)."""

    hidden_size: int = Field(default=128, gt=0)
    num_hidden_layers: int = Field(default=4, gt=0)
    num_attention_heads: int = Field(default=4, gt=0)
    num_key_value_heads: int | None = None
    intermediate_size: int = Field(default=352, gt=0)
    max_position_embeddings: int = Field(default=512, gt=0)


class TrainConfig(_Section):
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    learning_rate: float = Field(default=1e-5, gt=0)
    batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    max_length: int = Field(default=1024, gt=0)
    max_prompt_length: int = Field(default=512, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 10
    log_every: int = Field(default=10, gt=0)
    checkpoint_every: int | None = Field(default=None, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # > 1 starts this many processes through `accelerate launch` (one per GPU; gloo on CPU); batch_size is
    # per process. `fsdp` shards parameters, gradients and optimizer state (FSDP2) instead of replicating.
    num_processes: int = Field(default=1, gt=0)
    distributed: Literal["ddp", "fsdp"] = "ddp"
    # The LM head runs inside the chunked loss, so no [B, T, V] logits exist (smoothkd.distill.fused); an
    # architecture it cannot reproduce exactly, and FSDP, train unfused with a warning.
    fused_loss: bool = True
    # Intra-op threads while training: another count changes the rounding of a CPU run, and a tiny model on
    # a learning edge turns that into another model, so it is fixed and, being here, part of the model's
    # content key. Tiny models are bound by per-op overhead: one thread per process, several processes.
    threads: int = Field(default=1, gt=0)


class LoraSettings(_Section):
    """LoRA adapters (peft) for large models: only the adapters train.

    The finished model is saved with the adapters merged into its weights, a plain model that
    `AutoModelForCausalLM` loads with no peft at serving time; checkpoints hold the adapters only.
    """

    enabled: bool = False
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ModelConfig(_Section):
    """A causal LM: a hub id or local path, or (when unset) a tiny Llama built from `tiny`."""

    name_or_path: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)


def _no_lora_under_fsdp(section: ModelConfig) -> ModelConfig:
    # Merging adapters needs whole weights; FSDP holds shards. LoRA models are small enough for DDP.
    if section.lora.enabled and section.train.distributed == "fsdp":
        raise ValueError("lora.enabled needs train.distributed: ddp (FSDP with LoRA is not supported)")
    return section


class TeacherConfig(ModelConfig):
    finetune: bool = True
    # The teacher's own tokenizer (hub id or local directory) when it is not the run's: a teacher of another
    # family. Unset: the tokenizer `name_or_path` ships, else the run's. See `distill.cross_tokenizer`.
    tokenizer: str | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)

    _check_lora = model_validator(mode="after")(_no_lora_under_fsdp)


class StudentConfig(ModelConfig):
    train: TrainConfig = Field(default_factory=TrainConfig)

    _check_lora = model_validator(mode="after")(_no_lora_under_fsdp)


class DistillConfig(_Section):
    """Knowledge distillation: one KD student per α next to the SFT baseline (α = 0).

    Loss = (1 − α)·NLL + α·KD, α the direct weight of the KD term (the paper's code rescales its ratio r to
    r / (1 + r)). The student is taught the teacher's distribution at the *calibration* temperature
    (`calibration.temperature`, or the fitted one): its top-k log-probs plus a tail bucket, precomputed
    once (`mode: stored`), or the full vocabulary from a teacher forward in the training loop
    (`mode: online`). `temperature` is the *distillation* temperature (Hinton): it divides teacher and
    student alike and scales the loss by T², softening the gradients; it does not change what is taught
    (the loss is still minimised by the taught distribution). Stored labels are re-tempered on their own
    top-k + tail support, the tail bucket counting as one outcome (see `smoothkd.distill.losses`).
    """

    alphas: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [0.1, 1.0])
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    jsd_beta: float = Field(default=0.5, gt=0, lt=1)
    temperature: float = Field(default=1.0, gt=0)
    mode: Literal["stored", "online"] = "stored"
    top_k: int = Field(default=16, gt=0)
    encoding: Literal["compact", "exact"] = "compact"
    shard_size: int = Field(default=512, gt=0)
    precompute_batch_size: int = Field(default=16, gt=0)
    chunk_tokens: int = Field(default=1024, gt=0)
    # `sampled`: `samples` draws per token from the teacher instead of its top-k, an unbiased estimate of
    # the full forward-KL gradient (smoothkd.distill.sampled); S draws cost S·⌈log2 V⌉/8 bytes a token
    # (24 draws at V = 1,024: 30 B; compact top-16: 37 B).
    labels: Literal["topk", "sampled"] = "topk"
    samples: int = Field(default=24, gt=0)
    # A teacher with another tokenizer (smoothkd.distill.crosstok): `auto` distils across tokenizers when
    # the teacher's differs from the run's, `true` always takes that path (identical tokenizers give exactly
    # the same-tokenizer loss), `false` refuses a teacher with another vocabulary.
    cross_tokenizer: Literal["auto"] | bool = "auto"

    def student_key(self) -> str:
        """What shapes one KD student, for its content key: every setting but `alphas`, the list of the other
        students a run trains (a sweep's α = 1 student is the one `smoothkd run` trained, whatever else that
        run trained beside it)."""
        return self.model_dump_json(exclude={"alphas"})

    @model_validator(mode="after")
    def _sampled_needs_stored_forward_kl(self) -> DistillConfig:
        if self.labels == "sampled" and (self.divergence != "forward_kl" or self.mode != "stored"):
            raise ValueError("labels: sampled needs divergence: forward_kl and mode: stored (its estimate is "
                             f"unbiased for stored forward KL only; got {self.divergence}, {self.mode})")
        if self.labels == "sampled" and self.temperature != 1.0:
            # Draws from the taught distribution cannot be re-tempered afterwards, as top-k values can.
            raise ValueError("labels: sampled needs distill.temperature: 1 (draws cannot be re-tempered; "
                             "set calibration.temperature to change what is taught)")
        return self


class TokenizerConfig(_Section):
    """Tokenizer for tiny models built from scratch; hub models bring their own."""

    name_or_path: str | None = None
    vocab_size: int = Field(default=2048, gt=256)
    # With the embedded corpus: every entity and number it can state is one token on top of `vocab_size`
    # (see `corpus.entity_tokens`), so copying a fact is copying one token.
    entity_tokens: bool = True


# A factual rate measured by a detector below `eval.detector_min_auroc` is reported under its name plus
# this suffix (`cnndm/factual_rate_unreliable`), where no gate looks for it.
UNRELIABLE_SUFFIX = "_unreliable"


class EvalConfig(_Section):
    """Summarisation evaluation: ROUGE, factual consistency with bootstrap CIs, general capability.

    `consistency` picks the factual-consistency scorer (see `smoothkd.evaluation.consistency`):
    `fact_precision` (deterministic, no model), `nli` (any sequence-classification NLI model; default
    FacebookAI/roberta-large-mnli) or `hhem` (Vectara HHEM-2.1-open, loaded without remote code).
    `consistency_model`/`consistency_tokenizer` take a hub id or local path (default per scorer). Model
    scorers judge each summary sentence against the source (in chunks of `consistency_max_length` tokens,
    best chunk wins) and average over the sentences.
    """

    splits: list[Literal["cnndm", "xsum"]] = Field(default_factory=lambda: ["cnndm", "xsum"])
    max_examples: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=16, gt=0)
    max_new_tokens: int = Field(default=64, gt=0)
    use_stemmer: bool = False
    consistency: Literal["fact_precision", "nli", "hhem"] = "fact_precision"
    consistency_model: str | None = None
    consistency_tokenizer: str | None = None
    consistency_max_length: int = Field(default=512, gt=16)
    consistency_batch_size: int = Field(default=8, gt=0)
    # Held-out rows with a context to fit the factual-rate detector on: the validation split's, and on the
    # embedded corpus fresh rows (corpus seed data.seed + 1, no context shared with any split) up to this.
    detector_rows: int = Field(default=1000, gt=0)
    # Below this held-out AUROC (or with an AUROC CI reaching 0.5) the factual rate is reported as
    # unreliable (`{split}/factual_rate_unreliable`) and left out of every gate.
    detector_min_auroc: float = Field(default=0.7, ge=0.5, le=1)
    bootstrap_samples: int = Field(default=1000, gt=0)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    bootstrap_seed: int = 10
    lm_eval_tasks: list[str] = Field(default_factory=list)
    # The sweep's one pre-declared arm × split cell (e.g. "kd_a0.1/cnndm"): tested alone, the rest marked
    # exploratory. None: every cell is concluded with Holm-adjusted p-values.
    primary: str | None = Field(default=None, pattern=r"^[^/\s]+/(cnndm|xsum)$")


class CalibrationConfig(_Section):
    """Teacher calibration gate, judged on the held-out instruction split before any soft label is made.

    The calibration temperature T_cal acts on the teacher alone and defines the distribution the student
    is taught: softmax(teacher logits × logit_scale / T_cal), the distribution stored as soft labels (or
    used online). The gate judges exactly that distribution and rejects the teacher when a metric exceeds
    its maximum; `distill.temperature` plays no part here (it only shapes the KD loss). T_cal is
    `temperature` (a given remedy; 1 = the teacher as it is), or, with `fit_temperature: true`, fitted by
    NLL on half the split, the gate judging the other half at the fitted T (set one or the other).
    `logit_scale` multiplies the teacher's logits wherever they become labels (gate, label precompute,
    online KD): a test and diagnostic knob (e.g. 3.0 makes a calibrated teacher overconfident); leave it
    at 1.0 for real runs.
    """

    max_ece: float = Field(default=0.1, ge=0)
    max_nll: float | None = Field(default=None, gt=0)
    max_overconfidence: float | None = None
    n_bins: int = Field(default=15, gt=0)
    max_examples: int | None = Field(default=1000, gt=0)
    max_tokens: int | None = Field(default=100_000, gt=0)
    batch_size: int = Field(default=16, gt=0)
    temperature: float = Field(default=1.0, gt=0)
    fit_temperature: bool = False
    fit_max_tokens: int = Field(default=8192, gt=0)  # full logits are cached for the fit: tokens × vocab
    logit_scale: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _one_calibration_temperature(self) -> CalibrationConfig:
        if self.fit_temperature and self.temperature != 1.0:
            raise ValueError("calibration.temperature is given and fit_temperature is on: set one of them")
        return self

    def taught_temperature(self, gate_temperature: float | None = None) -> float:
        """T_cal the student is taught at: the one the gate passed (`gate_temperature`, the fitted T with
        `fit_temperature`), or `temperature` when none is given."""
        return gate_temperature or self.temperature


class SplitGate(_Section):
    """Absolute floors for one evaluation split (values in %, as the metrics are reported)."""

    min_factual_consistency: float | None = Field(default=None, ge=0, le=100)
    min_rougeLsum: float | None = Field(default=None, ge=0, le=100)


class PromotionConfig(_Section):
    """Registration and the promotion gate that moves the alias `champion`.

    Every evaluated student (the SFT baseline and each α) is registered as a version of
    `registered_model_name`. A candidate passes when it clears every split's floors, does not regress
    against the current champion on any `regression_metrics` (judged on the paired bootstrap CI of
    candidate − champion over the same examples: refused when the mean difference is below
    −max_regression points and the CI lies entirely below zero), and meets the optional KD-vs-SFT and
    general-capability criteria. Among the passing candidates of a run, the best by `primary_metric` (a
    full name such as `cnndm/factual_consistency`, or a bare name averaged over the evaluation splits)
    becomes champion. Comparisons with the champion pair only evaluations of the same rows, scorers and
    settings; otherwise the champion is re-evaluated on the candidate's rows first. `max_ece` and
    `max_overconfidence` bound the candidate's own held-out calibration (`general/ece`,
    `general/overconfidence`, which every evaluation records): distillation can make a student
    overconfident, and an overconfident student is not shipped.

    Promoters sharing an MLflow store serialise on a lock that lives with the store (see
    `smoothkd.registry.store.promotion_lock`); `lock_uri` names it for a tracking server (`http(s)://`),
    whose database the client cannot see: the server's Postgres (`postgresql://user@host/db`, password in
    PGPASSWORD) or a sqlite/file path every promoter reaches.
    """

    enabled: bool = True
    registered_model_name: str = "smoothkd-student"
    lock_uri: str | None = None
    primary_metric: str = "factual_consistency"
    splits: dict[str, SplitGate] = Field(default_factory=dict)
    max_regression: float = Field(default=2.0, ge=0)
    regression_metrics: list[str] = Field(default_factory=lambda: ["factual_consistency", "rougeLsum"])
    kd_not_worse_than_sft: bool = False
    min_general_rougeL: float | None = Field(default=None, ge=0, le=100)
    max_general_nll: float | None = Field(default=None, gt=0)
    max_ece: float | None = Field(default=None, ge=0, le=1)
    max_overconfidence: float | None = Field(default=None, ge=-1, le=1)


class TrackingConfig(_Section):
    """MLflow store and experiment. A relative sqlite path is resolved against `output_dir`."""

    tracking_uri: str | None = None
    experiment_name: str = "smoothkd"


class DockerConfig(_Section):
    """The image remote steps run in (ZenML `DockerSettings`); the local stack runs in this process.

    Paths are relative to the working directory `smoothkd run` starts in (the repository root).
    """

    dockerfile: str | None = None  # e.g. infra/docker/Dockerfile; built with build_context_root as context
    build_context_root: str = "."
    parent_image: str | None = None  # a prebuilt image instead of a Dockerfile (ignored when one is set)
    skip_build: bool = False  # run parent_image as it is (it must hold the project and the stack's needs)
    user: str | None = None  # e.g. smoothkd for infra/docker: ZenML installs as root, then switches
    requirements: list[str] = Field(default_factory=list)
    apt_packages: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)


class StepResources(_Section):
    """What one step asks the orchestrator for (ZenML `ResourceSettings`)."""

    gpu_count: int | None = Field(default=None, ge=0)
    cpu_count: float | None = Field(default=None, gt=0)
    memory: str | None = Field(default=None, pattern=r"^[0-9]+(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB|PB|PiB)$")


class StepOperatorConfig(_Section):
    """Run the named steps through a registered ZenML step operator (e.g. GPU steps on a cluster)."""

    name: str
    steps: list[str] = Field(min_length=1)


class OrchestrationConfig(_Section):
    """Where the pipeline runs: a stack defined in infra/stacks (`smoothkd stack up NAME` registers it).

    `local` keeps ZenML's state under output_dir and registers itself; any other stack must be registered
    first, and its steps get `docker` and the per-step `resources` (keys are step names such as `teacher`,
    `precompute_labels`, `student`; `student` covers every student, `student_sft` just one). `secrets`
    names ZenML secrets whose keys become environment variables in every step (e.g. HF_TOKEN).
    """

    stack: str = "local"
    docker: DockerConfig = Field(default_factory=DockerConfig)
    resources: dict[str, StepResources] = Field(default_factory=dict)
    step_operator: StepOperatorConfig | None = None
    secrets: list[str] = Field(default_factory=list)


class SweepConfig(_Section):
    # Models trained and evaluated at once by `smoothkd sweep`, each in its own process with its training
    # section's fixed `threads`: which worker trains a model does not change its weights. Unset: two on a
    # CPU with two or more cores (more add little on the tiny models), one where models train on a GPU
    # (two trainings would share its memory); `smoothkd.distill.runtime.parallel_trainings`.
    workers: int | None = Field(default=None, gt=0)
    # Rows per evaluation split the sweep scores on the embedded corpus (more rows, less example noise in
    # every difference); a run of the same config may score fewer. Hub and local splits are scored whole.
    eval_rows: int = Field(default=500, gt=0)


class RunConfig(_Section):
    """The whole run: data, tokenizer, teacher, student, evaluation, tracking."""

    name: str = "smoothkd"
    output_dir: str = ".smoothkd"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    def fingerprint(self, *sections: str) -> str:
        """Stable short hash of the named sections (all when none), for content-addressed caches."""
        dump = self.model_dump(mode="json")
        picked = {s: _dig(dump, s.split(".")) for s in sections} if sections else dump
        return content_hash(picked)[:16]


def output_root(cfg: RunConfig) -> Path:
    """The run's output directory, absolute: every cache and local store lives below it."""
    return Path(cfg.output_dir).resolve()


def tracking_uri(cfg: RunConfig) -> str:
    """The MLflow store: the configured URI, or a sqlite file under output_dir."""
    return cfg.tracking.tracking_uri or f"sqlite:///{output_root(cfg) / 'mlflow.db'}"


def _dig(tree: dict[str, Any], keys: list[str]) -> Any:
    for key in keys:
        tree = tree[key]
    return tree


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (`3` → int, `true` → bool, `[0.1, 1]` → list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides to a raw config mapping (before validation, so errors name the key)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY.PATH=VALUE")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"override '{item}': {where} is not a section")
            node = child
        node[keys[-1]] = _parse_scalar(value)
    return raw


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line for a pydantic error: source, the first offending key, the problem, how many more."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    kind = first["type"]
    if kind == "extra_forbidden":
        problem = "unknown key"
    else:
        problem = first["msg"]
        if "input" in first and not isinstance(first["input"], dict):
            problem += f" (got {first['input']!r})"
    more = len(err.errors()) - 1
    suffix = f" (+{more} more)" if more else ""
    return f"{source}: {key}: {problem}{suffix}"


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults when `path` is None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{file}:{where} invalid YAML") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
