"""Generation throughput of the factual-rate path (greedy + lookback ratios): batch 16 ÷ batch 1.

Demo student shape (random init is enough for timing) with the demo's trained tokenizer, 64 evaluation
prompts (32 CNNDM-like, 32 XSum-like), 48 new tokens each. The stop tokens' output embeddings are zeroed
(their logit is then 0, below the maximum of the other ~1k random logits), so every prompt generates
exactly 48 tokens and both sides do the same work. Times are medians over interleaved repeats so machine
noise hits both sides alike; plain generation (no attentions) is timed too, for the lookback overhead.
Prints `batched_over_sequential_generation=…` last.
"""

import statistics

import torch
from _kd_world import demo_world
from _timing import interleaved_times

from smoothkd.data.dataset import read_split
from smoothkd.data.prompts import eval_prompt
from smoothkd.data.schema import SOURCE_COLUMN
from smoothkd.evaluation.generation import generate, generate_with_lookback
from smoothkd.modeling.models import load_causal_lm, resolve_device
from smoothkd.modeling.tokenizer import newline_token_ids
from smoothkd.stages import prepare_data

N_PER_SPLIT = 32
MAX_NEW_TOKENS = 48
REPEATS = 3


def main() -> None:
    cfg, tokenizer, _, student_dir, _, _ = demo_world()
    data_dir = prepare_data(cfg)
    prompts = [eval_prompt(kind, row[SOURCE_COLUMN[kind]])
               for kind in ("cnndm", "xsum") for row in read_split(data_dir, kind)[:N_PER_SPLIT]]
    device = resolve_device("auto")
    model = load_causal_lm(student_dir).to(device)
    with torch.no_grad():
        stop_ids = [tokenizer.eos_token_id, *newline_token_ids(tokenizer)]
        model.get_output_embeddings().weight[stop_ids] = 0.0
    max_prompt_length = cfg.student.train.max_prompt_length

    def run(batch_size: int, lookback: bool = True):
        fn = generate_with_lookback if lookback else generate
        return fn(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS,
                  max_prompt_length=max_prompt_length, progress=False)

    generations = run(16)
    n_tokens = sum(len(g.token_ids) for g in generations)
    assert n_tokens == len(prompts) * MAX_NEW_TOKENS, "a prompt stopped early: the comparison is not fair"
    assert [g.text for g in run(1)] == [g.text for g in generations]

    variants = {"batch16": lambda: run(16), "batch1": lambda: run(1), "plain_batch16": lambda: run(16, False)}
    times = interleaved_times(variants, REPEATS, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"device={device.type} prompts={len(prompts)} new_tokens={MAX_NEW_TOKENS} repeats={REPEATS} "
          f"threads={torch.get_num_threads()}")
    print("tokens/s: " + ", ".join(f"{k}={n_tokens / v:.0f}" for k, v in median.items()))
    print(f"lookback_over_plain_time={median['batch16'] / median['plain_batch16']:.3f}")
    print(f"batched_over_sequential_generation={median['batch1'] / median['batch16']:.2f}")


if __name__ == "__main__":
    main()
