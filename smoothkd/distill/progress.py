"""The training progress bar: one tqdm bar per run with the latest loss, in place of the Trainer's own.

The Trainer's progress callback prints each raw log dict (`{'loss': ..., 'grad_norm': ...}`) on its own
line; here the loss rides on the bar and the dicts go to the log (the file, under `smoothkd.logs`).
"""

from __future__ import annotations

import logging

from tqdm.auto import tqdm
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class TrainProgress(TrainerCallback):
    """A bar over optimizer steps, steps/s and the last logged loss, on the main process only."""

    def __init__(self, desc: str = "train"):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            # disable=None: no bar when stderr is not a terminal (a log file gets no carriage-return frames).
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                            disable=None)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        logger.info("%s step %d: %s", self.desc, state.global_step, logs)
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4g}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
