"""Multi-process stages through `accelerate launch`: the parent writes a job, N workers run it.

`launch` writes `job.json` (the job function's name, its config sections and its plain arguments) and an
accelerate config into a job directory, starts `python -m accelerate.commands.launch --config_file … -m
smoothkd.distill.launch job.json` and waits, copying the workers' output to its own stderr (prefixed) and
to `launch.log`. Each worker validates the sections back into their config types and calls the same job
function (`smoothkd.distill.jobs`) with the same arguments a single process would. Rank 0 writes
`result.json`; a failing rank writes `error-<rank>.json`, which the parent turns into one exception (the
worker's own user-error type when it is one, otherwise `LaunchError`).

The accelerate config names `MULTI_GPU`: that is accelerate's torch.distributed.run launcher, the one
that starts N local processes. Without CUDA the workers come up as `MULTI_CPU` with gloo, because the
Trainer (and the label worker) run with `use_cpu`. accelerate's `--cpu` flag is no way to get there: it
hands process creation to mpirun and, without an MPI hostfile, starts a single process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import torch
import yaml
from pydantic import BaseModel

from smoothkd import config
from smoothkd.distill.jobs import precompute_teacher_labels, train_model
from smoothkd.distill.runtime import on_cpu
from smoothkd.errors import USER_ERRORS, LaunchError, one_line
from smoothkd.io import atomic_write_text, read_json, write_json


def accelerate_config(num_processes: int, mixed_precision: str) -> dict:
    """The whole accelerate config for one launch, so a user's default config cannot leak into it."""
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_machines": 1,
        "num_processes": num_processes,
        "mixed_precision": mixed_precision,
        "main_process_port": 0,  # a free port, so concurrent launches do not collide
        "dynamo_backend": "NO",
    }


# The job functions a launched world can run, by the `kind` its job names.
JOBS = {"finetune": train_model, "labels": precompute_teacher_labels}


def launch(kind: str, args: dict, sections: dict[str, BaseModel], num_processes: int, job_dir: str | Path,
           mixed_precision: str = "no", label: str = "launch") -> dict:
    """Run job `kind` (a key of `JOBS`) on `num_processes` processes and return what rank 0 reported.

    Every worker calls the job function with `sections` (config sections, by the parameter that takes
    each) and `args` (JSON values: paths as text; `device` among them, which every job takes). `job_dir`
    keeps the job, the accelerate config and `launch.log`; it is removed after a success and kept after a
    failure.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in (*job_dir.glob("error-*.json"), job_dir / "result.json"):
        stale.unlink(missing_ok=True)
    # Each section goes with its class name: a worker validates it back into the same type, so a teacher
    # section stays a TeacherConfig (its dump, which keys the caches, stays the same).
    typed = {name: [type(s).__name__, s.model_dump(mode="json")] for name, s in sections.items()}
    write_json(job_dir / "job.json", {"kind": kind, "args": args, "sections": typed})
    config_file = atomic_write_text(job_dir / "accelerate.yaml",
                                    yaml.safe_dump(accelerate_config(num_processes, mixed_precision)))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
               "-m", "smoothkd.distill.launch", str(job_dir / "job.json")]
    # Progress bars redraw with carriage returns, which would arrive here as a line per redraw.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    if on_cpu(args["device"]):  # the same rule that sets the workers' Trainer `use_cpu`
        env["ACCELERATE_USE_CPU"] = "true"
    log_file, tail = job_dir / "launch.log", deque(maxlen=20)
    with open(log_file, "w", encoding="utf-8") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            env=env) as process:
        for line in process.stdout:
            log.write(line)
            tail.append(line.rstrip())
            print(f"[{label} x{num_processes}] {line}", end="", file=sys.stderr)
    errors = [read_json(p) for p in job_dir.glob("error-*.json")]
    if errors:
        raise _worker_error(errors, label, log_file)
    if process.returncode != 0 or not (job_dir / "result.json").exists():
        last = next((line for line in reversed(tail) if line.strip()), "")
        raise LaunchError(f"{label}: {num_processes} processes exited with code {process.returncode} "
                          f"({last.strip()[:200]}); log: {log_file}")
    result = read_json(job_dir / "result.json")
    shutil.rmtree(job_dir)
    return result


def _worker_error(errors: list[dict], label: str, log_file: Path) -> Exception:
    """The one exception the parent raises for its failed workers.

    A user error keeps its type and one-line message. Otherwise the first failure wins: a rank that fails
    first leaves its peers failing in their collectives, and those later errors only echo it.
    """
    user_errors = {cls.__name__: cls for cls in USER_ERRORS}
    error = min(errors, key=lambda e: (e["type"] not in user_errors, e["time"]))
    if error["type"] in user_errors:
        return user_errors[error["type"]](error["message"])
    return LaunchError(f"{label}: rank {error['rank']} failed: {error['type']}: "
                       f"{one_line(error['message'])}; log: {log_file}")


def _section(type_name: str, dump: dict) -> BaseModel:
    cls = getattr(config, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise ValueError(f"job section of unknown type {type_name!r}")
    return cls.model_validate(dump)


def run_job(job: dict) -> dict:
    """One worker's share of a job: the job function a single process would call, run in place."""
    if job["kind"] not in JOBS:
        raise ValueError(f"unknown job kind {job['kind']!r}")
    sections = {name: _section(*typed) for name, typed in job["sections"].items()}
    return JOBS[job["kind"]](**sections, **job["args"]).to_dict()


def main(job_file: str) -> None:
    from accelerate import PartialState

    job_dir = Path(job_file).parent
    job = read_json(job_file)
    rank = int(os.environ.get("RANK", "0"))
    # The process group comes up here: the label worker needs it for its shard split and barrier.
    PartialState(cpu=on_cpu(job["args"]["device"]))
    try:
        result = run_job(job)
    except BaseException as exc:
        write_json(job_dir / f"error-{rank}.json",
                   {"rank": rank, "type": type(exc).__name__, "message": str(exc), "time": time.time()})
        raise
    if rank == 0:
        write_json(job_dir / "result.json", result)
    # gloo can abort the interpreter at exit while its group is alive ("terminate called without an active
    # exception"): all ranks tear it down together first.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
