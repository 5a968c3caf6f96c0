"""Wall time of data validation on a Dolly-sized (15,000-row) instruction split.

Usage: python bench/validation_time.py — prints `validate_15k_seconds=…` last.
The corpus comes from `generate_corpus(n_instruction=15000)` (plus 200 CNNDM-like and 200 XSum-like rows),
read as local files with the demo config's model limits. The figure is `validate_dataset` as the pipeline's
validation step calls it on a fresh output directory: it includes training the run's BPE tokenizer (which
validation builds first and the tokenizer step then reuses), all helper columns, the GX run and Data Docs.
The GX import (~4 s, once per process) is timed separately.
"""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_INSTRUCTION = 15_000


def main() -> None:
    from smoothkd.config import load_config
    from smoothkd.data.corpus import generate_corpus
    from smoothkd.stages import prepare_data

    start = time.perf_counter()
    from smoothkd.stages import validate_dataset

    import_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="smoothkd-bench-") as out:
        corpus = Path(out) / "corpus"
        generate_corpus(corpus, n_instruction=N_INSTRUCTION)
        overrides = [f"output_dir={out}"] + [
            f"data.{kind}={{source: local, path: {corpus / f'{kind}.jsonl'}}}"
            for kind in ("instruction", "cnndm", "xsum")
        ]
        cfg = load_config(ROOT / "configs/demo.yaml", overrides)
        dataset_dir = prepare_data(cfg)
        start = time.perf_counter()
        report = validate_dataset(cfg, dataset_dir)
        seconds = time.perf_counter() - start
    print(f"rows={report.rows} verdict={report.verdict} expectations={len(report.outcomes)} "
          f"tokens: {report.tokens}")
    print(f"gx_import_seconds={import_seconds:.1f} suites_and_docs_seconds={report.seconds:.1f}")
    print(f"validate_15k_seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
