"""Wall time of the students of a 4-seed × α ∈ {0.1, 1} sweep, concurrent (`sweep.workers`, default from
the core count) and sequential (one worker), each on its own fresh output directory and in its own process
(its own ZenML store and worker pool).

Usage: python bench/sweep_time.py [CONFIG] [KEY=VALUE ...] — overrides as `--set` takes them. In each
directory the front half's stages (corpus with the sweep's evaluation rows, tokenizer, teacher,
calibration gate, labels) are built first and not timed, as they are the same sequential work in both;
then the sweep pipeline runs, timed: its front-half steps reuse all of it. Prints
`sweep_sequential_seconds=…`, `sweep_concurrent_seconds=…` and, last, `sweep_concurrent_over_sequential=…`
(the goal: ≤ 0.65 on 2 cores). Run it on a quiet machine.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDS, ALPHAS = 4, [0.1, 1.0]
ONE = "--one"  # the child process's mode: one sweep, its seconds and workers on stdout


def one_sweep(config: str, overrides: list[str]) -> None:
    """Build the front half, then time the sweep; print `<seconds> <workers>`."""
    from pipelines.sweep import run_sweep, sweep_arms, sweep_config
    from smoothkd.config import load_config, output_root
    from smoothkd.distill.runtime import parallel_trainings
    from smoothkd.stages import front_half

    cfg = load_config(config, overrides)
    front_half(sweep_config(cfg), output_root(cfg) / "calibration")
    start = time.perf_counter()
    run_sweep(cfg, SEEDS, sweep_arms(ALPHAS), echo=lambda line: print(line, file=sys.stderr))
    print(f"{time.perf_counter() - start} {parallel_trainings(cfg.sweep.workers, cfg.device)}")


def timed(config: str, overrides: list[str], workers: int | None) -> tuple[float, int]:
    """(seconds, workers) of one sweep in a fresh process on a fresh output directory."""
    with tempfile.TemporaryDirectory(prefix="smoothkd-bench-") as out:
        chosen = [] if workers is None else [f"sweep.workers={workers}"]
        shown = subprocess.run([sys.executable, __file__, ONE, config, *overrides, f"output_dir={out}",
                                *chosen], stdout=subprocess.PIPE, text=True, check=True)
    seconds, used = shown.stdout.split()[-2:]
    return float(seconds), int(used)


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == ONE:
        one_sweep(args[1], args[2:])
        return
    config = args.pop(0) if args and "=" not in args[0] else str(ROOT / "configs/demo.yaml")
    sequential, _ = timed(config, args, 1)
    concurrent, workers = timed(config, args, None)
    print(f"sweep_workers={workers}")
    print(f"sweep_sequential_seconds={sequential:.1f}")
    print(f"sweep_concurrent_seconds={concurrent:.1f}")
    print(f"sweep_concurrent_over_sequential={concurrent / sequential:.3f}")


if __name__ == "__main__":
    main()
