"""The regime check from teacher and SFT figures alone (no KD student is trained or read).

Usage: python bench/regime.py [CONFIG] [--seeds N] [--set key=value ...]

Trains (or reuses, content-addressed under the config's output_dir) the teacher and N SFT students
(`student.train.seed` and the next N − 1) through the stages, evaluates each, and prints per model its
factual consistency, prior-trap rate and held-out overconfidence, then the SFT spread over seeds and its
overconfidence interval (`smoothkd.evaluation.sweep.baseline`). This is how the demo's regime was chosen
(docs/evidence.md). Prints `teacher_minus_sft_consistency=…` last: the teacher's consistency minus the
SFT students' mean, averaged over the splits.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHOWN = ("factual_consistency", "prior_trap_rate")


def main() -> None:
    from smoothkd.config import load_config
    from smoothkd.evaluation.sweep import baseline, baseline_lines
    from smoothkd.stages import (
        evaluate_model,
        prepare_data,
        prepare_teacher,
        prepare_tokenizer,
        train_student,
        with_student_seed,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/demo.yaml"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    data = prepare_data(cfg)
    tokenizer = prepare_tokenizer(cfg, data)

    def show(name: str, metrics: dict[str, float]) -> None:
        parts = [f"{split}/{m}={metrics[f'{split}/{m}']:.1f}" for split in cfg.eval.splits for m in SHOWN]
        print(f"{name}: " + ", ".join(parts) + f", overconfidence={metrics['general/overconfidence']:+.4f}",
              flush=True)

    teacher = prepare_teacher(cfg, data, tokenizer)
    teacher_eval = evaluate_model(cfg, teacher.path, data, progress=False, label="teacher")
    show("teacher", teacher_eval.metrics)
    sft = {}
    for seed in range(cfg.student.train.seed, cfg.student.train.seed + args.seeds):
        seeded = with_student_seed(cfg, seed)
        student = train_student(seeded, data, tokenizer, 0.0)
        sft[seed] = evaluate_model(seeded, student.path, data, progress=False, label=f"sft_s{seed}")
        show(f"sft_s{seed}", sft[seed].metrics)
    check = baseline(sft, teacher_eval, cfg.eval.confidence)
    for line in baseline_lines(check, cfg.eval.confidence):
        print(line)
    gaps = [check.teacher_consistency[s] - mean for s, (mean, _) in check.consistency.items()]
    print(f"teacher_minus_sft_consistency={sum(gaps) / len(gaps):.2f}")


if __name__ == "__main__":
    main()
