"""Wall time of the students of a 4-seed × α ∈ {0.1, 1} sweep, concurrent (`sweep.workers`, default from
the core count) and sequential (one worker), each on its own fresh output directory.

Usage: python bench/sweep_time.py [CONFIG] [KEY=VALUE ...] — overrides as `--set` takes them. In each
directory the front half (corpus, tokenizer, teacher, calibration gate, labels) is built first and not
timed, as it is the same sequential work in both; then the sweep runs, its students and evaluations timed.
Prints `sweep_sequential_seconds=…`, `sweep_concurrent_seconds=…` and, last,
`sweep_concurrent_over_sequential=…` (the goal: ≤ 0.65 on 2 cores). Run it on a quiet machine.
"""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDS, ALPHAS = 4, [0.1, 1.0]


def students_seconds(config: str, overrides: list[str], workers: int | None) -> tuple[float, int]:
    """(seconds of the sweep after its front half, workers used) on a fresh output directory."""
    from pipelines.sweep import run_sweep, sweep_arms
    from smoothkd.config import load_config
    from smoothkd.stages import front_half

    with tempfile.TemporaryDirectory(prefix="smoothkd-bench-") as out:
        chosen = [] if workers is None else [f"sweep.workers={workers}"]
        cfg = load_config(config, [*overrides, f"output_dir={out}", *chosen])
        front_half(cfg, Path(out) / "calibration")  # cached for the sweep: its time is not the students'
        start = time.perf_counter()
        run_sweep(cfg, SEEDS, sweep_arms(ALPHAS), echo=lambda line: print(line, file=sys.stderr))
        return time.perf_counter() - start, cfg.sweep.workers


def main() -> None:
    args = sys.argv[1:]
    config = args.pop(0) if args and "=" not in args[0] else str(ROOT / "configs/demo.yaml")
    sequential, _ = students_seconds(config, args, 1)
    concurrent, workers = students_seconds(config, args, None)
    print(f"sweep_workers={workers}")
    print(f"sweep_sequential_seconds={sequential:.1f}")
    print(f"sweep_concurrent_seconds={concurrent:.1f}")
    print(f"sweep_concurrent_over_sequential={concurrent / sequential:.3f}")


if __name__ == "__main__":
    main()
