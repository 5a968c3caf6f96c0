"""Soft-label store and KD training: exactness, reuse, integrity, resume, guards."""

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import corpus_and_tokenizer
from transformers import TrainerCallback

from smoothkd.config import DistillConfig, LoraSettings, TinyModelConfig, TrainConfig
from smoothkd.data.tokenize import IGNORE_INDEX, encode_instruction_rows
from smoothkd.distill.labels import FORMAT_VERSION, LabelSpec, LabelStore, precompute_labels
from smoothkd.distill.trainer import (
    DistillCollator,
    DistillTrainer,
    finetune,
    response_nll,
    training_arguments,
)
from smoothkd.errors import CorruptLabelStoreError, NonFiniteLossError, TokenizerMismatchError
from smoothkd.io import read_jsonl
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm
from smoothkd.modeling.tokenizer import load_tokenizer, train_bpe_tokenizer

VOCAB = 300


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    rows, tokenizer = corpus_and_tokenizer(root, seed=5, n_instruction=60, vocab_size=VOCAB)
    teacher = build_tiny_llama(tokenizer, TinyModelConfig(hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=64),
                               root / "teacher", seed=1)
    student = build_tiny_llama(tokenizer, TinyModelConfig(hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32),
                               root / "student", seed=2)
    examples = encode_instruction_rows(tokenizer, rows[:24], max_length=128, max_prompt_length=96)
    return {"root": root, "tokenizer": tokenizer, "teacher": teacher, "student": student,
            "examples": examples}


def store_for(world, tmp_path, **spec):
    spec = {"top_k": VOCAB, "encoding": "exact", "shard_size": 8, **spec}
    model = load_causal_lm(world["teacher"])
    return precompute_labels(model, world["examples"], tmp_path / "labels", LabelSpec(**spec),
                             {"teacher": "t"}, world["tokenizer"].pad_token_id, batch_size=4,
                             progress=False)


def batch_loss(world, alpha, store=None, teacher=None, chunk_tokens=1024, tmp_path=None, temperature=1.0,
               teacher_scale=1.0):
    """(loss, grads) of one batch through DistillTrainer.compute_loss."""
    student = load_causal_lm(world["student"])
    trainer = DistillTrainer(
        model=student, args=training_arguments(TrainConfig(batch_size=8), tmp_path / "w", "cpu"),
        distill=DistillConfig(chunk_tokens=chunk_tokens, temperature=temperature), alpha=alpha,
        teacher=teacher, teacher_scale=teacher_scale,
        data_collator=DistillCollator(world["tokenizer"].pad_token_id, store))
    features = [{**e, "label_index": i} for i, e in enumerate(world["examples"][:8])]
    batch = trainer.data_collator(features)
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in student.parameters()], batch


@pytest.mark.parametrize(("calibration", "distillation"), [(1.0, 1.0), (2.0, 3.0)])
def test_stored_full_vocab_labels_equal_the_online_teacher(world, tmp_path, calibration, distillation):
    """Both paths teach the teacher at the calibration temperature and apply the distillation one."""
    result = store_for(world, tmp_path, calibration_temperature=calibration)
    store = LabelStore(result.path)
    stored, grads_stored, _ = batch_loss(world, 0.5, store=store, tmp_path=tmp_path, temperature=distillation)
    online, grads_online, _ = batch_loss(world, 0.5, teacher=load_causal_lm(world["teacher"]),
                                         tmp_path=tmp_path, temperature=distillation,
                                         teacher_scale=1 / calibration)
    assert stored == pytest.approx(online, abs=1e-5)
    for a, b in zip(grads_stored, grads_online, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_alpha_zero_is_exactly_sft(world, tmp_path):
    loss, _, batch = batch_loss(world, 0.0, tmp_path=tmp_path)
    student = load_causal_lm(world["student"])
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = response_nll(logits, batch["labels"])
    # The fused head (the default) sums the same terms in chunks: equal up to float32 rounding.
    assert loss == pytest.approx((total / count).item(), rel=1e-6)
    # response_nll itself against the plain shifted cross-entropy that ignores prompt and padding.
    reference = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                ignore_index=IGNORE_INDEX)
    assert loss == pytest.approx(reference.item(), rel=1e-6)


def test_chunking_changes_neither_loss_nor_gradients(world, tmp_path):
    store = LabelStore(store_for(world, tmp_path, top_k=8, encoding="compact").path)
    whole, grads_whole, _ = batch_loss(world, 0.1, store=store, chunk_tokens=100_000, tmp_path=tmp_path)
    chunked, grads_chunked, _ = batch_loss(world, 0.1, store=store, chunk_tokens=7, tmp_path=tmp_path)
    assert chunked == pytest.approx(whole, rel=1e-6)
    for a, b in zip(grads_whole, grads_chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_compact_store_is_small_and_reconstructs_a_distribution(world, tmp_path):
    result = store_for(world, tmp_path, top_k=8, encoding="compact")
    assert result.bytes_per_token == 9 + 7 + 2  # 8 ids × 9 bits (vocab 300), 7 relative values, tail
    labels = LabelStore(result.path).all_tokens()
    assert labels.ids.shape == (result.tokens, 8) and (labels.ids < VOCAB).all()
    total = torch.cat([labels.logp, labels.tail.unsqueeze(-1)], -1).exp().sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)


def test_unchanged_inputs_reuse_labels_without_teacher_passes(world, tmp_path):
    first = store_for(world, tmp_path)
    again = store_for(world, tmp_path)
    assert first.teacher_forward_passes == 6 and not first.reused  # 24 examples, batches of 4
    assert again.teacher_forward_passes == 0 and again.reused and again.path == first.path
    other = store_for(world, tmp_path, calibration_temperature=2.0)
    assert other.path != first.path and other.teacher_forward_passes == 6


def test_flipped_byte_is_reported_by_shard_name(world, tmp_path):
    result = store_for(world, tmp_path)
    shard = sorted((tmp_path / "labels").rglob("shard-00001.npz"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptLabelStoreError, match="shard-00001.npz"):
        LabelStore(result.path)
    with pytest.raises(CorruptLabelStoreError, match="shard-00001.npz"):
        store_for(world, tmp_path)


def test_interrupted_precompute_resumes_from_last_complete_shard(world, tmp_path):
    result = store_for(world, tmp_path)
    path = tmp_path / "labels" / result.key
    reference = {p.name: p.read_bytes() for p in path.glob("shard-*.npz")}
    # What an interruption during shard 2 leaves: shards 0-1 and their records, no manifest.
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").unlink()
    (path / "shard-00002.npz").unlink()
    for record in manifest["shards"][:2]:
        (path / record["file"].replace(".npz", ".json")).write_text(json.dumps(record))
    resumed = store_for(world, tmp_path)
    assert resumed.teacher_forward_passes == 2  # only shard 2: 8 examples, batches of 4
    assert {p.name: p.read_bytes() for p in path.glob("shard-*.npz")} == reference


def _one_line(err) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def test_unusable_label_stores_are_named_in_one_line(world, tmp_path):
    """What a reader meets: an interrupted precompute (no manifest), a lost shard, a store of another
    format, and labels asked for beyond the vocabulary; each a one-line error the CLI reports (exit 2)."""
    from smoothkd.config import ConfigError
    from smoothkd.errors import USER_ERRORS

    result = store_for(world, tmp_path, top_k=8, encoding="compact")
    path = tmp_path / "labels" / result.key
    manifest = (path / "manifest.json").read_text()
    (path / "manifest.json").unlink()
    with pytest.raises(CorruptLabelStoreError) as err:
        LabelStore(path)
    assert _one_line(err) == f"label store {path} has no manifest (incomplete precompute)"

    (path / "manifest.json").write_text(manifest)
    shard = (path / "shard-00001.npz").read_bytes()
    (path / "shard-00001.npz").unlink()
    for read in (lambda: LabelStore(path), lambda: store_for(world, tmp_path, top_k=8, encoding="compact")):
        with pytest.raises(CorruptLabelStoreError) as err:
            read()
        assert _one_line(err) == f"label shard missing: {path / 'shard-00001.npz'}"

    (path / "shard-00001.npz").write_bytes(shard)
    assert len(LabelStore(path)) == len(world["examples"])  # whole again: it reads
    older = FORMAT_VERSION - 1
    (path / "manifest.json").write_text(json.dumps({**json.loads(manifest), "format_version": older}))
    with pytest.raises(CorruptLabelStoreError) as err:
        LabelStore(path)
    assert _one_line(err).startswith(
        f"label store {path} has format {older}, this version reads {FORMAT_VERSION}; delete it")

    for top_k in (VOCAB + 1, 10**6):
        with pytest.raises(ConfigError) as err:
            store_for(world, tmp_path / "too-many", top_k=top_k)
        assert _one_line(err) == f"distill.top_k={top_k} exceeds the teacher vocabulary ({VOCAB})"
    assert not (tmp_path / "too-many").exists()  # refused before anything is written
    assert isinstance(err.value, USER_ERRORS)
    # Cut to a shared tokenizer's length, the vocabulary is that length.
    with pytest.raises(ConfigError, match=r"top_k=8 exceeds the teacher vocabulary \(5\)"):
        precompute_labels(load_causal_lm(world["teacher"]), world["examples"], tmp_path / "cut",
                          LabelSpec(top_k=8), {"teacher": "t"}, world["tokenizer"].pad_token_id,
                          progress=False, vocab_size=5)


def test_mismatched_tokenizers_fail_before_any_compute(world, tmp_path):
    from smoothkd.modeling.tokenizer import check_tokenizers_agree

    rows = read_jsonl(world["root"] / "corpus/instruction.jsonl")
    other = load_tokenizer(str(train_bpe_tokenizer((r["response"] for r in rows), tmp_path / "t2", 280)))
    with pytest.raises(TokenizerMismatchError, match="300 vs 280 tokens"):
        check_tokenizers_agree(world["tokenizer"], other)
    check_tokenizers_agree(world["tokenizer"], load_tokenizer(str(world["teacher"])))


def test_non_finite_loss_stops_training_with_the_step(world, tmp_path):
    model = load_causal_lm(world["student"])
    with torch.no_grad():
        model.get_input_embeddings().weight[5] = float("nan")  # poison one token so step 1 sees it
    cfg = TrainConfig(max_steps=3, batch_size=24, learning_rate=1e-3)
    examples = [{**e, "input_ids": [5, *e["input_ids"][1:]]} for e in world["examples"]]
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        finetune(model, world["tokenizer"], examples, cfg, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from smoothkd.config import DistillConfig, TrainConfig
    from smoothkd.io import read_jsonl
    from smoothkd.data.tokenize import IGNORE_INDEX, encode_instruction_rows
    from smoothkd.distill.labels import LabelStore
    from smoothkd.distill.trainer import finetune
    from smoothkd.modeling.models import load_causal_lm
    from smoothkd.modeling.tokenizer import load_tokenizer

    root, store, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    tok = load_tokenizer(root + "/tok")
    rows = read_jsonl(root + "/corpus/instruction.jsonl")[:24]
    examples = encode_instruction_rows(tok, rows, max_length=128, max_prompt_length=96)
    cfg = TrainConfig(max_steps=12, batch_size=4, learning_rate=3e-3, checkpoint_every=4, log_every=1)
    finetune(load_causal_lm(root + "/student"), tok, examples, cfg, out, device="cpu", alpha=0.5,
             distill=DistillConfig(), label_store=LabelStore(store), work_dir=out + ".work",
             callbacks=[KillAfterCheckpoint()] if kill_at else None)
""")


def test_sigkill_after_checkpoint_then_rerun_equals_uninterrupted_run(world, tmp_path):
    from safetensors.torch import load_file

    store = store_for(world, tmp_path, top_k=16, encoding="compact").path
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)

    def run(out, kill_at):
        argv = [sys.executable, str(script), str(world["root"]), store, str(out), str(kill_at)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    killed = run(tmp_path / "a", 8)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "a").exists() and (tmp_path / "a.work/checkpoint-8").exists()
    resumed = run(tmp_path / "a", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run(tmp_path / "b", 0).returncode == 0
    wa, wb = load_file(tmp_path / "a/model.safetensors"), load_file(tmp_path / "b/model.safetensors")
    for name in wa:
        assert np.allclose(wa[name].numpy(), wb[name].numpy(), atol=1e-6, rtol=0), name


class Watch(TrainerCallback):
    """Records which parameters had gradients and, at the end of training, the weights before the merge."""

    def __init__(self):
        self.with_grad, self.final = set(), {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.with_grad |= {n for n, p in model.named_parameters() if p.grad is not None}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.final = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lora_trains_only_adapters_and_saves_a_plain_merged_model(world, tmp_path):
    model = load_causal_lm(world["student"])
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    store = LabelStore(store_for(world, tmp_path, top_k=16, encoding="compact").path)
    watch = Watch()
    cfg = TrainConfig(max_steps=4, batch_size=8, learning_rate=1e-2)
    finetune(model, world["tokenizer"], world["examples"], cfg, tmp_path / "out", device="cpu", alpha=0.5,
             distill=DistillConfig(), label_store=store, callbacks=[watch], lora=LoraSettings(enabled=True))
    adapters = {n for n in watch.final if "lora_" in n}
    assert adapters and watch.with_grad == adapters
    for name, value in watch.final.items():  # base weights untouched until the merge
        if name not in adapters:
            base = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(value, initial[base]), name

    saved = load_causal_lm(tmp_path / "out")
    assert type(saved) is type(model) and not any("lora" in n for n, _ in saved.named_parameters())
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved.state_dict()[q_proj], initial[q_proj])  # the adapters were merged in
    batch = DistillCollator(world["tokenizer"].pad_token_id)(world["examples"][:4])
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        torch.testing.assert_close(saved(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)


class StopAtCheckpoint(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class StepsSeen(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)


def test_interrupted_lora_run_resumes_to_the_same_weights(world, tmp_path):
    from safetensors.torch import load_file

    store = LabelStore(store_for(world, tmp_path, top_k=16, encoding="compact").path)
    cfg = TrainConfig(max_steps=6, batch_size=4, learning_rate=1e-2, checkpoint_every=2)

    def train(out, callbacks=None):
        finetune(load_causal_lm(world["student"]), world["tokenizer"], world["examples"], cfg, out,
                 device="cpu", alpha=0.5, distill=DistillConfig(), label_store=store, callbacks=callbacks,
                 lora=LoraSettings(enabled=True))

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "a", [StopAtCheckpoint(4)])
    assert (tmp_path / ".a.work/checkpoint-4/adapter_model.safetensors").exists()
    steps = StepsSeen()
    train(tmp_path / "a", [steps])
    assert steps.seen == [5, 6]  # resumed from the adapters' checkpoint, not retrained
    train(tmp_path / "b")
    wa, wb = load_file(tmp_path / "a/model.safetensors"), load_file(tmp_path / "b/model.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-6, rtol=0)


def test_bf16_autocast_kd_step_computes_the_loss_in_fp32(world, tmp_path):
    store = LabelStore(store_for(world, tmp_path, top_k=16, encoding="compact").path)
    full, _, _ = batch_loss(world, 0.5, store=store, tmp_path=tmp_path)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, _, _ = batch_loss(world, 0.5, store=store, tmp_path=tmp_path)
    assert half != full and half == pytest.approx(full, rel=1e-2)

    def curve(precision):
        cfg = TrainConfig(max_steps=3, batch_size=8, learning_rate=3e-3, log_every=1,
                          mixed_precision=precision)
        result = finetune(load_causal_lm(world["student"]), world["tokenizer"], world["examples"], cfg,
                          tmp_path / precision, device="cpu", alpha=0.5, distill=DistillConfig(),
                          label_store=store)
        return [loss for _, loss in result.loss_history]

    bf16, fp32 = curve("bf16"), curve("no")
    assert all(np.isfinite(bf16)) and bf16 != fp32  # autocast was on, and
    assert bf16 == pytest.approx(fp32, rel=1e-2)  # the KD loss stayed close to full precision


def _equal_count_examples(examples: list[dict], prompt: int = 8, total: int = 40) -> list[dict]:
    """Examples cut to one length with the same number of response tokens each.

    Without `num_items_in_batch` the loss is a mean of per-micro-batch means, which equals the token
    mean over the accumulated batch only when every micro-batch holds as many response tokens.
    """
    long = [e for e in examples if len(e["input_ids"]) >= total]
    return [{"input_ids": e["input_ids"][:total], "attention_mask": [1] * total,
             "labels": [IGNORE_INDEX] * prompt + e["input_ids"][prompt:total]} for e in long]


@pytest.mark.parametrize("accepts_loss_kwargs", [True, False], ids=["num_items_in_batch", "no_loss_kwargs"])
@pytest.mark.parametrize("alpha", [0.0, 0.5], ids=["sft", "kd_online"])
def test_gradient_accumulation_equals_the_larger_batch(world, tmp_path, accepts_loss_kwargs, alpha):
    from safetensors.torch import load_file

    examples = world["examples"] if accepts_loss_kwargs else _equal_count_examples(world["examples"])
    assert len(examples) >= 8
    runs = {}
    for batch, steps in ((4, 2), (8, 1)):
        model = load_causal_lm(world["student"])
        # The Trainer passes `num_items_in_batch` only to models whose forward takes loss kwargs.
        model.accepts_loss_kwargs = accepts_loss_kwargs
        teacher = load_causal_lm(world["teacher"]) if alpha else None
        cfg = TrainConfig(max_steps=2, batch_size=batch, gradient_accumulation_steps=steps,
                          learning_rate=3e-3, log_every=1, lr_scheduler="constant")
        out = tmp_path / f"b{batch}"
        result = finetune(model, world["tokenizer"], examples, cfg, out, device="cpu", alpha=alpha,
                          distill=DistillConfig(mode="online"), teacher=teacher)
        runs[batch] = (result.loss_history, load_file(out / "model.safetensors"))
    (history_ga, weights_ga), (history, weights) = runs[4], runs[8]
    assert [s for s, _ in history_ga] == [s for s, _ in history] == [1, 2]
    assert [v for _, v in history_ga] == pytest.approx([v for _, v in history], rel=1e-4)
    for name, tensor in weights.items():
        torch.testing.assert_close(weights_ga[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
