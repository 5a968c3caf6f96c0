"""Wall time of the demo pipeline on a fresh output directory, then of a second run that reuses it.

Usage: python bench/demo_time.py [CONFIG] — prints `demo_pipeline_seconds=…` (the fresh run: fresh ZenML
store, corpus, tokenizer, teacher, labels, students) and, last, `cached_rerun_ratio=…` (second run ÷
first, same output directory: cached corpus, teacher, labels, students and evaluations). Both figures are
the pipeline's own wall time as `smoothkd run` reports it (install excluded), measured in one process.
"""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from pipelines.runner import run_distill
    from smoothkd.config import load_config

    config = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "configs/demo.yaml")
    with tempfile.TemporaryDirectory(prefix="smoothkd-bench-") as out:
        cfg = load_config(config, [f"output_dir={out}"])
        first = run_distill(cfg)
        second = run_distill(cfg)
    for model in first.models:
        shown = {k: v for k, v in model.metrics.items() if "_ci_" not in k}
        print(f"{model.role}: " + ", ".join(f"{k}={v:.2f}" for k, v in shown.items()))
    for decision in first.decisions:
        print(f"gate {decision.candidate} v{decision.version}: {decision.outcome}")
    print(f"second_run_seconds={second.pipeline_seconds:.1f}")
    print(f"demo_pipeline_seconds={first.pipeline_seconds:.1f}")
    print(f"cached_rerun_ratio={second.pipeline_seconds / first.pipeline_seconds:.3f}")


if __name__ == "__main__":
    main()
