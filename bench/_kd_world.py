"""Shared set-up for the KD benches: demo-shaped tokenizer, teacher and student on the embedded corpus."""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smoothkd.config import load_config  # noqa: E402
from smoothkd.data.dataset import train_examples  # noqa: E402
from smoothkd.stages import prepare_data, prepare_tokenizer  # noqa: E402


def demo_world(n_instruction: int = 600):
    """(cfg, tokenizer, teacher_dir, student_dir, examples) built in a temp dir from configs/demo.yaml."""
    from smoothkd.modeling.models import build_tiny_llama
    from smoothkd.modeling.tokenizer import load_tokenizer

    out = Path(tempfile.mkdtemp(prefix="smoothkd-bench-"))
    cfg = load_config(ROOT / "configs/demo.yaml", [f"output_dir={out}",
                                                   f"data.embedded.n_instruction={n_instruction}"])
    data = prepare_data(cfg)
    tokenizer = load_tokenizer(str(prepare_tokenizer(cfg, data)))
    teacher = build_tiny_llama(tokenizer, cfg.teacher.tiny, out / "teacher", seed=1)
    student = build_tiny_llama(tokenizer, cfg.student.tiny, out / "student", seed=2)
    return cfg, tokenizer, teacher, student, train_examples(tokenizer, data, cfg.student.train), out
