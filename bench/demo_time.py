"""Wall time of the demo pipeline on a fresh output directory (fresh ZenML store, corpus, models).

Usage: python bench/demo_time.py [CONFIG] — prints `demo_pipeline_seconds=…` last.
The figure is the pipeline's own wall time as `smoothkd run` reports it (install excluded).
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
        results = run_distill(cfg)
    for model in results["models"]:
        print(f"{model['role']}: " + ", ".join(f"{k}={v:.2f}" for k, v in model["metrics"].items()))
    print(f"demo_pipeline_seconds={results['pipeline_seconds']:.1f}")


if __name__ == "__main__":
    main()
