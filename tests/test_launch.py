"""Multi-process stages through `accelerate launch` (gloo on CPU), the path a GPU run takes with NCCL."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoothkd import stages
from smoothkd.config import load_config
from smoothkd.errors import CorruptLabelStoreError

ROOT = Path(__file__).resolve().parents[1]
# 72 training rows: global batches of 8 tile every epoch, so no rank ever pads a short last batch.
BASE = ["device=cpu", "data.embedded.n_instruction=80", "student.train.max_steps=20",
        "student.train.log_every=1"]


def config(out, *overrides):
    return load_config(ROOT / "configs/test/tiny.yaml", [f"output_dir={out}", *BASE, *overrides])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Data, tokenizer, a 6-step teacher and its stored labels, all built in this process."""
    out = tmp_path_factory.mktemp("launch")
    cfg = config(out)
    data = stages.prepare_data(cfg)
    tokenizer = stages.prepare_tokenizer(cfg, data)
    teacher = stages.prepare_teacher(cfg, data, tokenizer)
    labels = stages.precompute_labels(cfg, data, tokenizer, teacher.path, progress=False)
    return {"out": out, "cfg": cfg, "data": data, "tokenizer": tokenizer, "teacher": teacher.path,
            "labels": labels}


def assert_same_run(one, two):
    assert [s for s, _ in one.loss_history] == [s for s, _ in two.loss_history] == list(range(1, 21))
    for (_, a), (_, b) in zip(one.loss_history, two.loss_history, strict=True):
        assert abs(a - b) < 1e-4, (one.loss_history, two.loss_history)
    wa, wb = (load_file(Path(m.path) / "model.safetensors") for m in (one, two))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_processes_through_accelerate_match_one_process(run, distributed):
    """2 processes × batch 4 reproduce 1 process × batch 8 for 20 steps; one process × 4 could not."""
    one = stages.train_student(run["cfg"], run["data"], run["tokenizer"], alpha=0.5,
                               labels_dir=run["labels"].path)  # trained once, then reused
    cfg = config(run["out"], "student.train.num_processes=2", "student.train.batch_size=4",
                 f"student.train.distributed={distributed}")
    two = stages.train_student(cfg, run["data"], run["tokenizer"], alpha=0.5, labels_dir=run["labels"].path)
    assert not two.cached and two.train_steps == 20
    assert_same_run(one, two)
    assert not list((run["out"] / "launch").iterdir())  # the job directory goes once the run succeeded


def test_label_precompute_split_over_two_processes_writes_the_same_store(run, tmp_path):
    cfg = config(tmp_path, "student.train.num_processes=2")
    split = stages.precompute_labels(cfg, run["data"], run["tokenizer"], run["teacher"], progress=False)
    single = run["labels"]
    assert split.key == single.key and not split.reused
    assert split.teacher_forward_passes == single.teacher_forward_passes
    shards = sorted(Path(single.path).glob("shard-*.npz"))
    assert len(shards) == 2  # shard_size 64 over 72 rows: one shard per rank
    assert [p.read_bytes() for p in shards] == [(Path(split.path) / p.name).read_bytes() for p in shards]
    assert not list(Path(split.path).glob("shard-*.json"))  # per-shard records folded into the manifest


def test_a_failing_worker_raises_its_own_error_once(run, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(run["labels"].path, labels)
    shard = labels / "shard-00001.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    cfg = config(run["out"], "student.train.num_processes=2", "student.train.batch_size=4")
    with pytest.raises(CorruptLabelStoreError, match="shard-00001.npz"):
        stages.train_student(cfg, run["data"], run["tokenizer"], alpha=0.5, labels_dir=str(labels))


def test_the_first_failure_is_reported_and_a_user_error_keeps_its_type(tmp_path):
    from smoothkd.distill.launch import _worker_error
    from smoothkd.errors import LaunchError

    log = tmp_path / "launch.log"
    echo = {"rank": 0, "type": "RuntimeError", "message": "Connection closed by peer\n(trace)", "time": 2.0}
    cause = {"rank": 1, "type": "ValueError", "message": "shapes differ", "time": 1.0}
    error = _worker_error([echo, cause], "student_sft", log)
    assert isinstance(error, LaunchError)
    assert str(error) == f"student_sft: rank 1 failed: ValueError: shapes differ; log: {log}"
    user = {"rank": 1, "type": "NonFiniteLossError", "message": "non-finite loss nan at step 3", "time": 3.0}
    error = _worker_error([echo, cause, user], "student_sft", log)
    assert type(error).__name__ == "NonFiniteLossError" and str(error) == user["message"]
