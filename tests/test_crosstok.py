"""Distillation across tokenizers: alignment by bytes, the projected target, exactness on identical
tokenizers, and cross-tokenizer label stores."""

import json

import pytest
import torch
from conftest import corpus_and_tokenizer

from smoothkd.config import DistillConfig, TinyModelConfig, TrainConfig
from smoothkd.data.corpus import entity_tokens
from smoothkd.data.prompts import build_prompt, response_text
from smoothkd.data.tokenize import encode_instruction_rows, encode_pair
from smoothkd.distill.crosstok import CrossStats, CrossTokenizer, response_ids
from smoothkd.distill.labels import LabelSpec, LabelStore, precompute_labels
from smoothkd.distill.trainer import DistillCollator, DistillTrainer, training_arguments
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm
from smoothkd.modeling.tokenizer import GPT2_SPECIAL_TOKENS, load_tokenizer, train_bpe_tokenizer

SHAPE = TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Student tokenizer (BOS, whole-entity tokens), a GPT-2-style teacher tokenizer (no BOS, another
    vocabulary size), a tiny teacher for each and a tiny student."""
    root = tmp_path_factory.mktemp("xtok")
    rows, same = corpus_and_tokenizer(root, seed=7, n_instruction=40, vocab_size=300)
    texts = [build_prompt(r["instruction"], r["context"], r["category"]) + response_text(r["response"])
             for r in rows] + ["Café crème à 5 € – déjà vu"] * 5
    student_tok = load_tokenizer(str(train_bpe_tokenizer(texts, root / "student_tok", 300, entity_tokens())))
    teacher_tok = load_tokenizer(str(train_bpe_tokenizer(texts, root / "teacher_tok", 420,
                                                         special_tokens=GPT2_SPECIAL_TOKENS)))
    models = {name: build_tiny_llama(tok, SHAPE, root / name, seed=seed) for name, tok, seed in
              (("student", student_tok, 2), ("teacher", teacher_tok, 1), ("same_teacher", student_tok, 1))}
    return {"root": root, "rows": rows[:16], "student_tok": student_tok, "teacher_tok": teacher_tok, **models}


def encode(tokenizer, rows, max_length=128):
    return encode_instruction_rows(tokenizer, rows, max_length=max_length, max_prompt_length=96)


def test_hand_made_tokenizations_give_the_hand_computed_target():
    """Response " café!" + EOS. The student spells it " café" | "!" | EOS; the teacher, GPT-2-style with no
    BOS, " c" | "af" | "\\xc3" | "\\xa9!" | EOS: one student token over four teacher tokens (one holding
    half of "é"), and a student boundary inside a teacher token."""
    student = [None, None, None, b" ", b" c", b"af", " café".encode(), "é".encode(), b"!", b"?", b" ca"]
    teacher = [None, b" c", b"af", b"\xc3", b"\xa9", b" ca", b"f", b"\xa9!", b"\xa9?", " café".encode(), b"!"]
    cross = CrossTokenizer(teacher, student, {"<|endoftext|>": 0, "eos": 0},
                           {"<pad>": 0, "<s>": 1, "</s>": 2, "eos": 2})

    def row(probs):
        out = torch.zeros(len(teacher))
        for idx, p in probs.items():
            out[idx] = p
        return out.log()

    teacher_logp = torch.stack([
        row({1: .5, 5: .2, 9: .2, 0: .1}),  # after the prompt: " c" (observed), " ca", " café", EOS
        row({2: .6, 10: .3, 0: .1}),  # after " c": "af" (observed), "!", EOS
        row({3: .7, 4: .2, 10: .1}),  # after " caf": "\xc3" (observed), "\xa9", "!"
        row({7: .8, 8: .1, 4: .1}),  # after " caf\xc3": "\xa9!" (observed), "\xa9?", "\xa9"
        row({0: .6, 10: .3, 2: .1}),  # after " café!": EOS (observed), "!", "af"
    ])
    stats = CrossStats()
    target = cross.targets(teacher_logp, [6, 8, 2], [1, 2, 3, 7, 0], stats).exp()
    expected = torch.zeros(3, len(student))
    # " café": " ca" 0.2 and " café" 0.2 and EOS 0.1 at once; " c" (0.5) followed along the teacher's path:
    # after " c", "!" and EOS both leave " c" (0.5·0.3 + 0.5·0.1); after " caf", "\xa9" and "!" leave
    # " ca" (0.3·0.2 + 0.3·0.1); after " caf\xc3" all three continuations begin with " café" (0.21).
    expected[0, [6, 10, 2, 4]] = torch.tensor([0.2 + 0.21, 0.2 + 0.06 + 0.03, 0.1, 0.15 + 0.05])
    # "!" starts inside "\xa9!": candidates must begin with "\xa9" and go past it ("\xa9" alone is
    # dropped), renormalised: "!" 0.8 / 0.9, "?" 0.1 / 0.9.
    expected[1, [8, 9]] = torch.tensor([8 / 9, 1 / 9])
    expected[2, [2, 8, 5]] = torch.tensor([0.6, 0.3, 0.1])
    torch.testing.assert_close(target, expected, atol=1e-6, rtol=0)
    # Exactly carried: " ca", " café", EOS; EOS after " c"; "\xa9" after " caf\xc3"; all of EOS's row.
    assert stats.exact_mass == pytest.approx(0.2 + 0.2 + 0.1 + 0.05 + 0.021 + 1.0, abs=1e-6)
    counts = stats.positions, stats.aligned, stats.expanded, stats.exact_targets, stats.fallback
    assert counts == (3, 2, 1, 1, 0)


def test_an_alternative_the_teacher_would_spell_on_follows_the_observed_path():
    """Student whole-number tokens " 24 million", " 37 million"; the teacher spells " 37" " million". Its
    alternative " 24" begins a student token no teacher token spells: it goes on with the distribution
    after the observed " 37" instead of stopping at the bare " 24"."""
    student = [None, b" 24", b" 37", b" 24 million", b" 37 million", b",", b" million"]
    teacher = [None, b" 24", b" 37", b" million", b","]
    cross = CrossTokenizer(teacher, student, {"eos": 0}, {"eos": 0})
    rows = [[0.1, 0.3, 0.6, 0.0, 0.0], [0.0, 0.0, 0.0, 0.9, 0.1], [1.0, 0.0, 0.0, 0.0, 0.0]]
    logp = torch.tensor(rows).log()
    stats = CrossStats()
    target = cross.targets(logp, [4, 0], [2, 3, 0], stats).exp()
    # " 37 million": 0.6·0.9 along the observed path; " 24" + " million" 0.3·0.9; EOS 0.1; the commas
    # leave " 37" (0.6·0.1) and " 24" (0.3·0.1).
    expected = torch.tensor([[0.1, 0.03, 0.06, 0.27, 0.54, 0.0, 0.0], [1.0, 0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(target, expected, atol=1e-6, rtol=0)
    assert stats.exact_mass == pytest.approx(0.1 + 0.54 + 1.0)


def test_bytes_of_both_tokenizers_must_agree():
    cross = CrossTokenizer([None, b"ab"], [None, b"ac"], {"eos": 0}, {"eos": 0})
    with pytest.raises(ValueError, match="spell different bytes from byte 1"):
        cross.plan([1, 0], [1, 0])


def test_real_tokenizers_align_by_bytes_with_bos_on_the_student_side_only(world):
    """A teacher that puts all its mass on the text's own next token is projected onto the student's
    observed tokens, multi-byte characters and whole-entity tokens included."""
    s_tok, t_tok = world["student_tok"], world["teacher_tok"]
    prompt = "Article: Café crème in Paris.\nSummarize the article. Summary:"
    response = "Déjà vu: 5 € for" + max(entity_tokens(), key=len) + " at the café."
    student = encode_pair(s_tok, prompt, response, 256, 200)
    teacher = encode_pair(t_tok, prompt, response, 256, 200)
    assert student["input_ids"][0] == s_tok.bos_token_id and t_tok.bos_token_id is None
    s_ids, t_ids = response_ids(student["labels"]), response_ids(teacher["labels"])
    assert len(s_ids) != len(t_ids)
    cross = CrossTokenizer.from_tokenizers(t_tok, s_tok)
    onehot = torch.full((len(t_ids), len(t_tok)), float("-inf"))
    onehot[torch.arange(len(t_ids)), torch.tensor(t_ids)] = 0.0
    stats = CrossStats()
    target = cross.targets(onehot, s_ids, t_ids, stats)
    assert stats.fallback == 0 and stats.expanded > 0 and 0 < stats.aligned < stats.positions
    assert target.argmax(-1).tolist() == s_ids
    assert torch.allclose(target.exp().max(-1).values, torch.ones(len(s_ids)))


def paired_batch_loss(world, teacher_dir, teacher_tok, cross, store=None, temperature=1.0, scale=1.0,
                      tmp_path=None):
    """(loss, grads) of one batch through DistillTrainer.compute_loss, online unless `store`."""
    s_tok = world["student_tok"]
    student = load_causal_lm(world["student"])
    examples = encode(s_tok, world["rows"][:8])
    if cross is not None and store is None:
        examples = cross.pair(examples, encode(teacher_tok, world["rows"][:8]))
    trainer = DistillTrainer(
        model=student, args=training_arguments(TrainConfig(batch_size=8), tmp_path / "w", "cpu"),
        distill=DistillConfig(temperature=temperature), alpha=0.5, teacher_scale=scale,
        teacher=None if store else load_causal_lm(teacher_dir), cross=None if store else cross,
        data_collator=DistillCollator(s_tok.pad_token_id, store,
                                      teacher_tok.pad_token_id if cross and not store else None))
    batch = trainer.data_collator([{**e, "label_index": i} for i, e in enumerate(examples)])
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in student.parameters()]


@pytest.mark.parametrize(("scale", "temperature"), [(1.0, 1.0), (0.5, 2.0)])
def test_identical_tokenizers_give_exactly_the_same_tokenizer_loss_online(world, tmp_path, scale,
                                                                            temperature):
    tok = world["student_tok"]
    cross = CrossTokenizer.from_tokenizers(tok, tok)
    plain, grads_plain = paired_batch_loss(world, world["same_teacher"], tok, None, temperature=temperature,
                                           scale=scale, tmp_path=tmp_path)
    crossed, grads_cross = paired_batch_loss(world, world["same_teacher"], tok, cross,
                                             temperature=temperature, scale=scale, tmp_path=tmp_path)
    assert crossed == pytest.approx(plain, abs=1e-6, rel=1e-6)
    for a, b in zip(grads_plain, grads_cross, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def cross_store(world, root, teacher_tok, teacher_dir, identity=None, **spec):
    s_tok = world["student_tok"]
    cross = CrossTokenizer.from_tokenizers(teacher_tok, s_tok)
    examples = cross.pair(encode(s_tok, world["rows"]), encode(teacher_tok, world["rows"], 256))
    spec = {"top_k": len(s_tok), "encoding": "exact", "shard_size": 4, **spec}
    return precompute_labels(load_causal_lm(teacher_dir), examples, root, LabelSpec(**spec),
                             identity or {"teacher": "t", "teacher_tokenizer": "a"}, teacher_tok.pad_token_id,
                             batch_size=2, progress=False, cross=cross)


def test_identical_tokenizers_store_exactly_the_same_tokenizer_labels(world, tmp_path):
    tok = world["student_tok"]
    spec = LabelSpec(top_k=len(tok), encoding="exact", shard_size=4)
    plain = precompute_labels(load_causal_lm(world["same_teacher"]), encode(tok, world["rows"]),
                              tmp_path / "plain", spec, {"teacher": "t"}, tok.pad_token_id, batch_size=2,
                              progress=False)
    crossed = cross_store(world, tmp_path / "cross", tok, world["same_teacher"])
    a, b = LabelStore(plain.path).all_tokens(), LabelStore(crossed.path).all_tokens()
    torch.testing.assert_close(b.logp.exp(), a.logp.exp(), atol=1e-6, rtol=1e-6)
    assert crossed.cross_tokenizer["aligned_share"] == 1.0 and crossed.cross_tokenizer["exact_mass_mean"] == (
        pytest.approx(1.0))
    loss_plain, grads_plain = paired_batch_loss(world, None, tok, None, store=LabelStore(plain.path),
                                                tmp_path=tmp_path)
    loss_cross, grads_cross = paired_batch_loss(world, None, tok, None, store=LabelStore(crossed.path),
                                                tmp_path=tmp_path)
    assert loss_cross == pytest.approx(loss_plain, abs=1e-6, rel=1e-6)
    for x, y in zip(grads_plain, grads_cross, strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


def test_cross_tokenizer_store_round_trips_resumes_and_keys_the_teacher_tokenizer(world, tmp_path):
    s_tok, t_tok = world["student_tok"], world["teacher_tok"]
    first = cross_store(world, tmp_path, t_tok, world["teacher"], top_k=8, encoding="compact")
    store = LabelStore(first.path)
    assert list(store.lengths) == [len(response_ids(e["labels"])) for e in encode(s_tok, world["rows"])]
    labels = store.all_tokens()
    assert (labels.ids < len(s_tok)).all() and labels.ids.shape == (first.tokens, 8)
    total = torch.cat([labels.logp, labels.tail.unsqueeze(-1)], -1).exp().sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
    summary = json.loads((tmp_path / first.key / "manifest.json").read_text())["cross_tokenizer"]
    assert summary["positions"] == first.tokens and 0 < summary["aligned_share"] < 1
    assert summary["fallback"] == 0  # the teacher's longer window, trimmed to the student's text, covers it
    # Interrupted during shard 1: shard 0 and its record are kept, the rest is recomputed identically.
    path = tmp_path / first.key
    reference = {p.name: p.read_bytes() for p in path.glob("shard-*.npz")}
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").unlink()
    for name in sorted(reference)[1:]:
        (path / name).unlink()
    (path / "shard-00000.json").write_text(json.dumps(manifest["shards"][0]))
    resumed = cross_store(world, tmp_path, t_tok, world["teacher"], top_k=8, encoding="compact")
    assert resumed.teacher_forward_passes == first.teacher_forward_passes - 2
    assert {p.name: p.read_bytes() for p in path.glob("shard-*.npz")} == reference
    again = cross_store(world, tmp_path, t_tok, world["teacher"], top_k=8, encoding="compact")
    assert again.reused and again.teacher_forward_passes == 0 and again.cross_tokenizer == summary
    other = cross_store(world, tmp_path, t_tok, world["teacher"], {"teacher": "t", "teacher_tokenizer": "b"},
                        top_k=8, encoding="compact")
    assert other.key != first.key


def test_preflight_names_the_cross_tokenizer_method_instead_of_refusing(world):
    from smoothkd.config import EvalConfig, StudentConfig, TeacherConfig
    from smoothkd.errors import TokenizerMismatchError
    from smoothkd.modeling.compat import check_compatibility, cross_tokenizer_ref

    own = str(world["root"] / "teacher_tok")
    run = world["root"] / "student_tok"
    train = TrainConfig(max_length=256, max_prompt_length=128)
    teacher, student = TeacherConfig(tokenizer=own, train=train), StudentConfig(train=train)
    eval_cfg = EvalConfig(max_new_tokens=8)
    compat = check_compatibility(world["student_tok"], "tokenizer", teacher=teacher, student=student,
                                 eval_cfg=eval_cfg, distill=DistillConfig())
    assert compat.cross_tokenizer == ("teacher.tokenizer", len(world["teacher_tok"]))
    assert compat.teacher.embedding_rows == len(world["teacher_tok"])
    assert "teacher tokenizer teacher.tokenizer (420 tokens): distilled across" in compat.describe()
    assert "padding" not in compat.describe()
    assert cross_tokenizer_ref(run, teacher, DistillConfig()) == own
    # The teacher on the run's tokenizer: nothing crosses, unless asked for.
    same = TeacherConfig(tokenizer=str(run), train=train)
    assert cross_tokenizer_ref(run, same, DistillConfig()) is None
    assert cross_tokenizer_ref(run, same, DistillConfig(cross_tokenizer=True)) == str(run)
    refuse = DistillConfig(cross_tokenizer=False)
    with pytest.raises(TokenizerMismatchError, match=r"^teacher\.tokenizer's tokenizer differs .* set "
                                                     r"distill\.cross_tokenizer: auto"):
        check_compatibility(world["student_tok"], "tokenizer", teacher=teacher, student=student,
                            eval_cfg=eval_cfg, distill=refuse)
    with pytest.raises(TokenizerMismatchError, match="distill.cross_tokenizer: auto"):
        cross_tokenizer_ref(run, teacher, refuse)


def test_the_cross_tokenizer_config_distils_through_the_stages_stored_and_online(tmp_path, monkeypatch):
    """configs/test/tiny-xtok.yaml (a GPT-2-style teacher tokenizer): the teacher trains, is gated and labels
    in its own tokens; a KD student trains from the stored labels and from the online teacher, every
    student position with a teacher target (no fallback)."""
    from pathlib import Path

    from smoothkd.config import load_config
    from smoothkd.io import read_json
    from smoothkd.stages import front_half, train_student

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the config names its teacher tokenizer relative to the repository root
    cfg = load_config(root / "configs/test/tiny-xtok.yaml", [f"output_dir={tmp_path}"])
    front = front_half(cfg, tmp_path / "calibration")
    assert front.gate.passed and front.labels is not None
    stats = read_json(Path(front.labels.path) / "manifest.json")["cross_tokenizer"]
    assert stats["positions"] > 0 and stats["fallback"] == 0 and 0 < stats["aligned_share"] <= 1
    stored = train_student(cfg, front.data_dir, front.tokenizer, 0.5, front.labels.path, front.teacher.path,
                           front.gate.temperature)
    online_cfg = load_config(root / "configs/test/tiny-xtok.yaml",
                             [f"output_dir={tmp_path}", "distill.mode=online"])
    online = train_student(online_cfg, front.data_dir, front.tokenizer, 0.5, None, front.teacher.path,
                           front.gate.temperature)
    for student in (stored, online):
        assert (Path(student.path) / "model.safetensors").is_file()
    assert stored.path != online.path
