"""Every round's scalars as TensorBoard events, so that runs compare in the tool users already have.

``logging.tensorboard = DIR`` writes them while a run goes (one TensorBoard run per run
directory, ``DIR/<run name>``); ``fedmi tensorboard RUN_DIR... --logdir DIR`` writes
them for finished runs. Through ``torch.utils.tensorboard``; ``tensorboard --logdir DIR``
shows them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedmi_flower.records.round_record import RoundRecord, summary_group


def round_scalars(record: RoundRecord) -> dict[str, float]:
    """One round's scalars by TensorBoard tag: every summary field and every timing.

    The summary holds accuracy, each IoU view with its noise floor, chance level and
    pairs, sufficiency, specificity, faithfulness and the degenerate counts. Undefined
    values (NaN) are left out, and so is the whole summary of a round whose analysis
    did not run (its counts would read as zeros, which ``summary.csv`` leaves out too).
    """
    tags: dict[str, float] = {}
    for name, value in record.summary.scalars().items() if record.analysed else ():
        tags[f"{summary_group(name)}/{name}"] = float(value)
    for name, value in record.timings.to_json().items():
        if isinstance(value, (int, float)):
            tags[f"time/{name}_s"] = float(value)
    return {tag: v for tag, v in tags.items() if not math.isnan(v)}


class TensorBoardScalars:
    """Writes :func:`round_scalars` of every round it is given to ``log_dir/run_name``, step = the round."""

    def __init__(self, log_dir: str | Path, run_name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # loads TensorBoard only where it is used

        self.path = Path(log_dir) / run_name
        self.writer: Any = SummaryWriter(log_dir=str(self.path))

    def __call__(self, record: RoundRecord) -> None:
        for tag, value in round_scalars(record).items():
            self.writer.add_scalar(tag, value, record.round)
        self.writer.flush()  # a run may be killed at any round: what is written is readable

    def close(self) -> None:
        """Flush and close the event file (a run's last round does it)."""
        self.writer.close()
