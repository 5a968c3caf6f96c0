"""The one prompt template shared by training and evaluation.

Evaluation uses the paper's prompts verbatim:
  CNNDM  `Article: {article}\nSummarize the article. Summary:`
  XSum   `Article: {article}\nSummarize the article in one sentence. Summary:`
Instruction data uses the same shape, so a Dolly summarization row with that instruction renders exactly
as the evaluation prompt does. Rows without context drop the `Article:` line; non-summarization rows are
cued with `Answer:`. Responses follow after one space and end at the first newline (generation stops there).
"""

from __future__ import annotations

CNNDM_INSTRUCTION = "Summarize the article."
XSUM_INSTRUCTION = "Summarize the article in one sentence."
EVAL_INSTRUCTION = {"cnndm": CNNDM_INSTRUCTION, "xsum": XSUM_INSTRUCTION}


def build_prompt(instruction: str, context: str = "", category: str = "") -> str:
    """Render an instruction row (Dolly schema) as the text the model continues."""
    cue = "Summary:" if category == "summarization" else "Answer:"
    head = f"Article: {context.strip()}\n" if context and context.strip() else ""
    return f"{head}{instruction.strip()} {cue}"


def eval_prompt(kind: str, source: str) -> str:
    """The paper's summarization prompt for an evaluation split (`cnndm` or `xsum`)."""
    return build_prompt(EVAL_INSTRUCTION[kind], source, "summarization")


def response_text(response: str) -> str:
    """Target continuation for a response: one leading space, single line."""
    return " " + " ".join(response.split())
